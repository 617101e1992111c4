"""Errors raised below the HTTP layer, named by meaning (the HTTP layer maps them to statuses)."""


class TradeCanvasError(Exception):
    """Base of every error this package raises on purpose."""


class InvalidInput(TradeCanvasError):
    """The caller sent something malformed or out of range; nothing was changed."""


class NotFound(TradeCanvasError):
    """The thing asked for does not exist."""


class RequestTimeout(TradeCanvasError):
    """The client did not send its whole request (headers and body) in time."""


class Conflict(TradeCanvasError):
    """The request is valid but clashes with the current state."""


class CapacityExceeded(TradeCanvasError):
    """A bounded resource (queue, job slots) is full; retry later."""


class Unavailable(TradeCanvasError):
    """A dependency (store, actor, upstream) cannot serve right now."""


class Fenced(TradeCanvasError):
    """This process no longer holds the series' lease (cluster mode); the write was refused."""


class UpstreamError(TradeCanvasError):
    """An upstream service (exchange REST) failed and no cached answer exists."""


class ConfigError(TradeCanvasError):
    """Settings or configuration files are invalid; the process must not start."""
