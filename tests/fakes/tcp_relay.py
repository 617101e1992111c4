"""A TCP relay in front of a real server that a test can cut and restore, like a network outage."""

from __future__ import annotations

import socket
import threading


class TcpRelay:
    """Forward connections from ``127.0.0.1:port`` to ``(host, target_port)``.

    ``cut()`` drops every relayed connection and closes the listening port, so new connections
    are refused; ``restore()`` listens on the same port again. ``blackhole()`` is a partition
    instead: nothing is closed (no FIN, no RST) but no byte moves either way, and new
    connections are accepted and then get no answer; ``restore()`` lets the held bytes through
    again, as TCP retransmission does when a partition heals. The relay runs in daemon threads
    of the test process, so it also serves a server started as a subprocess.
    """

    def __init__(self, host: str, target_port: int) -> None:
        self._target = (host, target_port)
        self._flowing = threading.Event()  # cleared while blackholed
        self._flowing.set()
        self._lock = threading.Lock()
        self._relayed: list[socket.socket] = []
        self._listener: socket.socket | None = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._serve(self._listener)

    def _serve(self, listener: socket.socket) -> None:
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # the listener was cut
                return
            threading.Thread(target=self._connect, args=(listener, client), daemon=True).start()

    def _connect(self, listener: socket.socket, client: socket.socket) -> None:
        self._flowing.wait()  # blackholed: the client connected, and hears nothing
        try:
            upstream = socket.create_connection(self._target, timeout=5)
            upstream.settimeout(None)
        except OSError:
            client.close()
            return
        with self._lock:
            if listener is not self._listener:  # cut while this one was connecting
                _close(client, upstream)
                return
            self._relayed += [client, upstream]
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pump, args=(source, sink, self._flowing),
                             daemon=True).start()

    def cut(self) -> None:
        """Drop every relayed connection and refuse new ones."""
        with self._lock:
            listener, self._listener = self._listener, None
            relayed, self._relayed = self._relayed, []
        _close(*relayed, *([listener] if listener is not None else []))

    def blackhole(self) -> None:
        """Stop every byte both ways without closing anything (a network partition)."""
        self._flowing.clear()

    def restore(self) -> None:
        """Accept and relay connections again, on the same port; end a blackhole."""
        self._flowing.set()
        with self._lock:
            if self._listener is not None:
                return
            self._listener = socket.create_server(("127.0.0.1", self.port))
            self._serve(self._listener)


def _pump(source: socket.socket, sink: socket.socket, flowing: threading.Event) -> None:
    try:
        while flowing.wait() and (data := source.recv(65536)):
            flowing.wait()  # blackholed while this thread waited in recv: hold the bytes
            sink.sendall(data)
    except OSError:
        pass
    _close(source, sink)


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        try:
            # shutdown first: it wakes a thread blocked in accept() or recv() on this socket
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
