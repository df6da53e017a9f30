"""A fault-injecting TCP proxy on loopback: the flaky 4G link of a truck, in the lab.

    proxy = FaultProxy(("127.0.0.1", orthanc.http_port), reset_probability=1/3).start()
    ... send to 127.0.0.1:proxy.port ...
    proxy.stop()

Faults (all optional, changeable while running):

* ``latency``: seconds added before each forwarded chunk, both directions;
* ``bandwidth``: bytes/second cap on the uplink (client -> server), shared by all
  connections, like a radio link;
* ``reset_probability``: each new connection is, with this probability, reset (TCP RST) at a
  random uplink byte offset in ``[0, reset_window)``;
* ``reset_every``: the link resets the connection in flight every this many uplink bytes
  (counted over all connections), at a random point of each interval;
* :meth:`link_down` / :meth:`link_up`: a refusal period: new connections are reset at once
  and open ones are cut; ``down_after_bytes`` takes the link down by itself once that many
  uplink bytes have crossed (a tunnel on the road, mid-upload).

``bytes_up`` / ``bytes_down`` count what really crossed the link (the wire bytes).
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

CHUNK = 16 * 1024


@dataclass
class FaultProxy:
    target: tuple[str, int]
    latency: float = 0.0
    bandwidth: float | None = None
    reset_probability: float = 0.0
    reset_window: int = 512 * 1024
    reset_every: int | None = None
    down_after_bytes: int | None = None
    seed: int | None = None
    port: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    connections: int = 0
    resets: int = 0
    _down: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _open: set = field(default_factory=set)
    _stopping: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._bucket_time = time.monotonic()
        self._next_reset_at = self._draw_reset_point(0)

    # --- control ------------------------------------------------------------------------------
    def start(self) -> "FaultProxy":
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", self.port))
        self._listener.listen(64)
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept_loop, daemon=True, name="faultproxy-accept").start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._listener.close()
        self._cut_all()

    def link_down(self) -> None:
        """Refuse new connections and cut the open ones until :meth:`link_up`."""
        self._down = True
        self._cut_all()

    def link_up(self) -> None:
        self._down = False

    def url(self, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}"

    # --- internals ----------------------------------------------------------------------------
    def _draw_reset_point(self, after: int) -> int | None:
        if not self.reset_every:
            return None
        return after + self._rng.randint(1, self.reset_every)

    @staticmethod
    def _rst(sock: socket.socket, abort: bool = True) -> None:
        """Close ``sock``: with a TCP RST when ``abort``, else with an orderly FIN."""
        # shutdown() first: it wakes the other pump's blocked recv(); close() alone would not,
        # and the far end would never see the connection end.
        steps = [lambda: sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)),
                 lambda: sock.shutdown(socket.SHUT_RD)] if abort else [lambda: sock.shutdown(socket.SHUT_RDWR)]
        for step in steps + [sock.close]:
            try:
                step()
            except OSError:
                pass

    def _cut_all(self) -> None:
        with self._lock:
            pairs = list(self._open)
            self._open.clear()
        for client, upstream in pairs:
            self._rst(client)
            self._rst(upstream)

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            if self._down:
                self._rst(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                self._rst(client)
                continue
            with self._lock:
                self.connections += 1
                reset_at = None
                if self.reset_probability and self._rng.random() < self.reset_probability:
                    reset_at = self._rng.randint(0, self.reset_window)
                pair = (client, upstream)
                self._open.add(pair)
            threading.Thread(target=self._pump_up, args=(pair, reset_at), daemon=True).start()
            threading.Thread(target=self._pump_down, args=(pair,), daemon=True).start()

    def _throttle(self, size: int) -> None:
        if not self.bandwidth:
            return
        with self._lock:
            # A shared schedule: each chunk may leave only when the link has had time for it.
            now = time.monotonic()
            start = max(now, self._bucket_time)
            self._bucket_time = start + size / self.bandwidth
            wait = self._bucket_time - now
        if wait > 0:
            time.sleep(wait)

    def _close_pair(self, pair, reset: bool) -> None:
        with self._lock:
            present = pair in self._open
            self._open.discard(pair)
            if reset and present:
                self.resets += 1
        for sock in pair:
            self._rst(sock, abort=reset)

    def _pump_up(self, pair, reset_at: int | None) -> None:
        client, upstream = pair
        sent = 0
        try:
            while True:
                data = client.recv(CHUNK)
                if not data:
                    upstream.shutdown(socket.SHUT_WR)
                    return
                if self.latency:
                    time.sleep(self.latency)
                self._throttle(len(data))
                with self._lock:
                    cut_here = None
                    if reset_at is not None and sent + len(data) > reset_at:
                        cut_here = reset_at - sent
                    if self._next_reset_at is not None and self.bytes_up + len(data) > self._next_reset_at:
                        offset = self._next_reset_at - self.bytes_up
                        cut_here = offset if cut_here is None else min(cut_here, offset)
                        self._next_reset_at = self._draw_reset_point(self._next_reset_at)
                    if cut_here is not None:
                        data = data[:max(0, cut_here)]
                    self.bytes_up += len(data)
                    going_down = self.down_after_bytes is not None and self.bytes_up >= self.down_after_bytes
                    if going_down:
                        self.down_after_bytes = None
                if data:
                    upstream.sendall(data)
                sent += len(data)
                if going_down:
                    self.link_down()
                    return
                if cut_here is not None:
                    self._close_pair(pair, reset=True)
                    return
        except OSError:
            self._close_pair(pair, reset=True)

    def _pump_down(self, pair) -> None:
        client, upstream = pair
        try:
            while True:
                data = upstream.recv(CHUNK)
                if not data:
                    self._close_pair(pair, reset=False)
                    return
                if self.latency:
                    time.sleep(self.latency)
                with self._lock:
                    self.bytes_down += len(data)
                client.sendall(data)
        except OSError:
            self._close_pair(pair, reset=True)
