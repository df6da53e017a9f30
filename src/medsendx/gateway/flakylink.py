"""A simulated unstable 4G link for the demo: a loopback TCP proxy that really breaks.

Connections through it are forwarded to the real peer, but a chosen fraction of them is
reset (TCP RST) at a random byte offset of the upload, and the link can be taken down
(connections refused) for a while. The sender sees exactly what a dropped mobile link
does to it; nothing is faked above the socket.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
from dataclasses import dataclass


@dataclass
class LinkStats:
    connections: int = 0
    resets: int = 0
    refused: int = 0
    bytes_up: int = 0


class FlakyLink:
    """``127.0.0.1:port`` -> ``target``; resets ``reset_fraction`` of the connections."""

    def __init__(
        self, target: tuple[str, int], *, reset_fraction: float = 0.3, max_reset_offset: int = 400_000,
        seed: int | None = None,
    ) -> None:
        self.target = target
        self.reset_fraction = reset_fraction
        self.max_reset_offset = max_reset_offset
        self.stats = LinkStats()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._up = threading.Event()
        self._up.set()
        self._closed = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, name="flaky-link", daemon=True)

    def start(self) -> "FlakyLink":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._closed.set()
        self._listener.close()

    def down(self) -> None:
        """Link lost: new connections are reset at once."""
        self._up.clear()

    def up(self) -> None:
        self._up.set()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.stats.connections += 1
                if not self._up.is_set():
                    self.stats.refused += 1
                    _reset(client)
                    continue
                cut_at = (
                    self._rng.randint(1, self.max_reset_offset)
                    if self._rng.random() < self.reset_fraction
                    else None
                )
            threading.Thread(target=self._serve, args=(client, cut_at), daemon=True).start()

    def _serve(self, client: socket.socket, cut_at: int | None) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            _reset(client)
            return
        upstream.settimeout(None)
        done = threading.Event()

        def pump(src: socket.socket, dst: socket.socket, limit: int | None, upload: bool) -> None:
            sent = 0
            try:
                while True:
                    data = src.recv(65536)
                    if not data:
                        break
                    if limit is not None and sent + len(data) >= limit:
                        dst.sendall(data[: max(0, limit - sent)])
                        with self._lock:
                            self.stats.resets += 1
                        break
                    dst.sendall(data)
                    sent += len(data)
                    if upload:
                        with self._lock:
                            self.stats.bytes_up += len(data)
            except OSError:
                pass
            finally:
                done.set()

        threading.Thread(target=pump, args=(upstream, client, None, False), daemon=True).start()
        pump(client, upstream, cut_at, True)
        done.wait()
        if cut_at is not None:
            _reset(client)
            _reset(upstream)
        else:
            for sock in (client, upstream):
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # wakes the other pump; FIN to both ends
                except OSError:
                    pass
                _close_quietly(sock)


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), as a dropped link looks to the sender."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # Wake a pump blocked in recv() on this socket first: close() alone does not, and
        # the peer would never see the reset (a pynetdicom reader then blocks exit).
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        pass
    _close_quietly(sock)


def _close_quietly(sock: socket.socket) -> None:
    """Close a socket the peer may already have torn down."""
    try:
        sock.close()
    except OSError:
        pass


def flaky_transport_factory(fail_fraction: float, seed: int | None = None, stats=None):  # noqa: ANN001
    """A transport factory whose transports drop the link before a share of the requests.

    For destinations a TCP proxy cannot sit in front of (a local folder): the failure is
    raised where a reset would surface, so the deliverer's retry path runs for real.
    ``stats.link_resets`` (when given) counts the drops.
    """
    from medsendx.transport import open_transport

    rng = random.Random(seed)

    class FlakyTransport:
        def __init__(self, url: str, settings) -> None:  # noqa: ANN001 (Settings, imported lazily)
            self.inner = open_transport(url, settings)
            self.url = url
            self.max_batch_objects = getattr(self.inner, "max_batch_objects", 16)

        def send(self, items, checkpoint):  # noqa: ANN001 (the Transport protocol)
            if rng.random() < fail_fraction:
                if stats is not None:
                    stats.link_resets += 1
                raise ConnectionResetError("simulated link drop")
            return self.inner.send(items, checkpoint)

        def close(self) -> None:
            self.inner.close()

    return FlakyTransport
