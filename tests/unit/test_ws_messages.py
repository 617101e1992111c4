import pytest

from trade_canvas.http.ws import BadRequest, SubscribeCommand, UnsubscribeCommand, parse_client_message

S = "binance:futures:BTC/USDT:1m"


def test_subscribe() -> None:
    command = parse_client_message(
        '{"type":"subscribe","series_id":"%s","since":120,"supports_batch":true}' % S
    )
    assert isinstance(command, SubscribeCommand)
    assert (command.series.text, command.since, command.supports_batch) == (S, 120, True)


def test_subscribe_defaults() -> None:
    command = parse_client_message('{"type":"subscribe","series_id":"%s"}' % S)
    assert isinstance(command, SubscribeCommand)
    assert command.since is None and command.supports_batch is False


@pytest.mark.parametrize(
    "frame,message",
    [
        ("not json", "invalid json"),
        (b"\x00\x01", "binary"),
        ("[1,2]", "invalid message envelope"),
        ("{}", "missing message type"),
        ('{"type":""}', "missing message type"),
        ('{"type":"dance"}', "unknown message type: dance"),
        ('{"type":"subscribe"}', "missing series_id"),
        ('{"type":"subscribe","series_id":"nope"}', "invalid series_id"),
        ('{"type":"subscribe","series_id":"%s","since":1.5}' % S, "invalid since"),
        ('{"type":"subscribe","series_id":"%s","since":true}' % S, "invalid since"),
        ('{"type":"subscribe","series_id":"%s","since":-1}' % S, "invalid since"),
        ('{"type":"subscribe","series_id":"%s","since":9223372036854775808}' % S, "invalid since"),
        ('{"type":"subscribe","series_id":"%s","since":253402300800}' % S, "invalid since"),
        ('{"type":"subscribe","series_id":"binance:spot:BTC\\u0000:1m"}', "invalid series_id"),
        ('{"type":"subscribe","series_id":"%s","supports_batch":1}' % S, "invalid supports_batch"),
    ],
)
def test_bad_messages(frame: str, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_client_message(frame)


def test_unsubscribe_is_lenient() -> None:
    assert parse_client_message('{"type":"unsubscribe","series_id":"%s"}' % S) == UnsubscribeCommand(S)
    assert parse_client_message('{"type":"unsubscribe"}') is None
    assert parse_client_message('{"type":"unsubscribe","series_id":"bad"}') is None
