"""The delivery loop: take due rows from the outbox, hand them to the destination's
transport, record each outcome as one transaction.

* Success -> ``sent`` (the spooled file is deleted after the commit).
* The peer refused the object -> ``failed`` with the reason; the others go on.
* Anything else (link down, reset, timeout, server error, a bug in a codec) -> back to
  ``queued`` with full-jitter exponential backoff, capped, forever.

``run_once`` is one pass over everything due now; ``drain`` passes until the outbox is
empty (batch jobs, benchmarks); ``run_forever`` keeps passing until its stop event is set,
sleeping until the next row is due or :meth:`Deliverer.wake` is called.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from medsendx.config import Settings
from medsendx.outbox import Outbox, OutboxItem, backoff_delay
from medsendx.transport.base import DeliveryResult, Transport, TransientBatchError, open_transport, redact_url

log = logging.getLogger(__name__)

# Called after each outcome is committed: (item as claimed, its result).
OutcomeHook = Callable[[OutboxItem, DeliveryResult], None]


@dataclass
class PassStats:
    """What one :meth:`Deliverer.run_once` did."""

    sent: int = 0
    failed: int = 0
    retried: int = 0
    wire_bytes: int = 0
    raw_bytes: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def handled(self) -> int:
        return self.sent + self.failed + self.retried

    def add(self, other: "PassStats") -> None:
        self.sent += other.sent
        self.failed += other.failed
        self.retried += other.retried
        self.wire_bytes += other.wire_bytes
        self.raw_bytes += other.raw_bytes
        self.errors += other.errors


@dataclass
class DrainStats(PassStats):
    """What :meth:`Deliverer.drain` did over all its passes."""

    passes: int = 0
    finished: bool = False  # True: nothing was left queued or sending


class Deliverer:
    """Delivers the outbox's due rows through the transports named by their destinations."""

    def __init__(
        self,
        outbox: Outbox,
        settings: Settings,
        *,
        on_outcome: OutcomeHook | None = None,
        transport_factory: Callable[[str, Settings], Transport] = open_transport,
        rng: random.Random | None = None,
    ) -> None:
        self.outbox = outbox
        self.settings = settings
        self.on_outcome = on_outcome
        self._factory = transport_factory
        self._transports: dict[str, Transport] = {}
        self._wake = threading.Event()
        self._held: dict[str, float] = {}  # destination -> time its link may be tried again
        self._link_faults: dict[str, int] = {}  # destination -> consecutive failed requests
        self._rng = rng or random.Random()
        self.last_pass = PassStats()
        # A previous process may have died between committing 'sent' and deleting the file.
        outbox.remove_sent_leftovers()

    def transport(self, destination: str) -> Transport:
        if destination not in self._transports:
            self._transports[destination] = self._factory(destination, self.settings)
        return self._transports[destination]

    def wake(self) -> None:
        """Tell a sleeping :meth:`run_forever` that new work was queued."""
        self._wake.set()

    def close(self) -> None:
        for transport in self._transports.values():
            try:
                transport.close()
            except Exception:  # closing a dead connection must not stop the shutdown
                pass
        self._transports.clear()

    # --- one pass -------------------------------------------------------------------------------
    def run_once(self, *, stop: threading.Event | None = None) -> int:
        """Deliver every row that is due now; returns how many rows it handled (sent,
        failed or rescheduled). A destination whose link fails is left alone (its own
        backoff) for the rest of the pass and until its hold expires."""
        stats = PassStats()
        # Only rows due when the pass began: a transient failure rescheduled with a tiny
        # jittered delay must not turn the pass into a busy loop.
        started = time.time()
        for destination in self.outbox.due_by_destination(started):
            if self._held.get(destination, 0.0) > time.time():
                continue
            while not (stop is not None and stop.is_set()):
                items = self.outbox.claim(limit=self._batch_size(destination), destination=destination, now=started)
                if not items:
                    break
                results = self._send(destination, items)
                for item in items:
                    self._record(item, results[item.id], stats)
                if any(not r.ok and not r.permanent for r in results.values()):
                    self._hold(destination)
                    break
                self._link_faults.pop(destination, None)
        self.last_pass = stats
        return stats.handled

    def _batch_size(self, destination: str) -> int:
        try:
            return max(1, int(self.transport(destination).max_batch_objects))
        except Exception:  # a destination that cannot even be opened: _send reports it
            return 1

    def _hold(self, destination: str) -> None:
        """The link to ``destination`` failed: pause it with full-jitter backoff."""
        faults = self._link_faults.get(destination, 0) + 1
        self._link_faults[destination] = faults
        self._held[destination] = time.time() + backoff_delay(faults, *self._backoff(), self._rng)

    def _backoff(self) -> tuple[float, float]:
        box = self.settings.outbox
        return box.backoff_base_seconds, box.backoff_cap_seconds

    def _send(self, destination: str, items: list[OutboxItem]) -> dict[int, DeliveryResult]:
        try:
            transport = self.transport(destination)
            results = transport.send(items, self.outbox.save_transfer_state)
        except TransientBatchError as exc:
            results = [DeliveryResult(i.id, False, False, exc.reason) for i in items]
        except Exception as exc:  # a transport bug or an unreachable peer: retry later, never lose
            log.warning("delivery to %s failed: %s", redact_url(destination), type(exc).__name__)
            self._transports.pop(destination, None)  # reopen next time (fresh connection)
            results = [DeliveryResult(i.id, False, False, f"delivery error ({type(exc).__name__})") for i in items]
        by_id = {r.item_id: r for r in results}
        for item in items:  # a transport that forgot an item: treat as transient
            by_id.setdefault(item.id, DeliveryResult(item.id, False, False, "transport gave no result"))
        return by_id

    def _record(self, item: OutboxItem, result: DeliveryResult, stats: PassStats) -> None:
        stats.wire_bytes += result.wire_bytes
        if result.ok:
            self.outbox.mark_sent(item.id, wire_bytes=result.wire_bytes)
            stats.sent += 1
            stats.raw_bytes += item.size
        elif result.permanent:
            self.outbox.mark_failed(item.id, result.reason, wire_bytes=result.wire_bytes)
            stats.failed += 1
            stats.errors.append(result.reason)
        else:
            # The row's own failed transfers (this one included), not its claims: a claim
            # lost to a kill or a stop is no attempt, and must not stretch the backoff.
            delay = backoff_delay(item.transient_faults + 1, *self._backoff(), self._rng)
            self.outbox.mark_retry(item.id, result.reason, delay=delay, wire_bytes=result.wire_bytes)
            stats.retried += 1
        if self.on_outcome is not None:
            self.on_outcome(item, result)

    # --- loops over passes ------------------------------------------------------------------------
    def _seconds_to_next_due(self, longest: float) -> float:
        """How long until a queued row is due and its destination is not on hold."""
        wakes = [max(due, self._held.get(dest, 0.0)) for dest, due in self.outbox.due_by_destination(None).items()]
        return longest if not wakes else min(longest, max(0.01, min(wakes) - time.time()))

    def drain(self, *, timeout: float | None = None, stop: threading.Event | None = None) -> DrainStats:
        """Deliver until no row is left queued or sending (retries included, however long
        their backoff), ``timeout`` seconds have passed, or ``stop`` is set. For batch
        jobs; ``.finished`` says whether the outbox really emptied."""
        total = DrainStats()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.run_once(stop=stop)
            total.add(self.last_pass)
            total.passes += 1
            counts = self.outbox.counts()
            if counts["queued"] == 0 and counts["sending"] == 0:
                total.finished = True
                return total
            left = None if deadline is None else deadline - time.monotonic()
            if (stop is not None and stop.is_set()) or (left is not None and left <= 0):
                return total
            wait = self._seconds_to_next_due(1.0 if left is None else min(1.0, left))
            if stop is not None:
                stop.wait(wait)
            else:
                time.sleep(wait)

    def run_forever(self, stop: threading.Event) -> None:
        """Deliver until ``stop`` is set; idle waits end early on :meth:`wake`."""
        try:
            while not stop.is_set():
                self._wake.clear()
                handled = self.run_once(stop=stop)
                if stop.is_set():
                    break
                if handled:
                    continue
                self._wake.wait(max(0.05, self._seconds_to_next_due(5.0)))
                if stop.is_set():
                    break
        finally:
            self.outbox.release_own_claims()
            self.close()
