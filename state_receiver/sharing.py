"""One receiver's share of the districts: which event queues it consumes, and how a district changes hands.

A thread of its own beats (``Membership.beat``) every second, whatever the receiver's main loop is doing
(applying a large batch, waiting out a broker alarm, answering what it holds while it stops): so the others
never count it gone while it still holds a queue. The main loop follows the latest assignment between
delivery batches (``follow``): for a district it should no longer consume it stops taking messages
(``Connection.cancel``) and, once it has answered all that queue sent it (``released``), closes the queue's
channel and gives its claim up; a district it should consume it claims, and subscribes once it holds the claim.

If the heartbeats fail for half the lease (the state database cannot be reached from here), ``check`` raises: the
receiver drops its broker connection before the others may count it gone and take its districts.
"""

from __future__ import annotations

import threading
import time

import structlog

from core.brokers import Connection, Topology
from core.metrics import Health
from core.retry import reason
from messages.errors import StoreUnavailable
from messages.validate import MAX_PARSED
from state_receiver.membership import BEAT, LEASE, Membership

log = structlog.get_logger()
MIN_PREFETCH = 500
"""Deliveries each district's queue may have in hand at least, however many districts a receiver consumes."""


class Share:
    def __init__(self, membership: Membership, health: Health, prefetch: int, max_body: int) -> None:
        self.membership, self.health = membership, health
        self.prefetch, self.max_body = prefetch, max(max_body, MAX_PARSED)
        self.consuming: set[str] = set()
        """Districts whose event queue this receiver consumes now (``draining`` included)."""
        self.draining: set[str] = set()
        """Districts it has stopped taking messages of, until it has answered those it was sent."""
        self.view: frozenset[str] = frozenset()
        """``consuming``, for other threads (the heartbeat, the metrics)."""
        self._wanted: set[str] | None = None
        self._beaten = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)

    # the heartbeat thread ---------------------------------------------------------------------

    def start(self) -> None:
        self._beaten = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # started: the connection may have failed before it was
            self._thread.join()

    def _beat(self) -> None:
        while True:
            try:
                wanted = self.membership.beat(self.view)
            except Exception as e:
                log.warning("heartbeat failed", error=reason(e))
                self.health.failed(e)
            else:
                with self._lock:
                    self._wanted, self._beaten = wanted, time.monotonic()
                self.health.up("database")
            if self._stop.wait(BEAT):
                return

    def check(self) -> None:
        """Raise when the last heartbeat is too old: the others will soon count this receiver gone."""
        with self._lock:
            silent = time.monotonic() - self._beaten
        if silent > LEASE / 2:
            raise StoreUnavailable(f"no heartbeat reached the state database for {silent:.0f} s: letting the "
                                   "districts go before the other receivers take them")

    # the main loop ----------------------------------------------------------------------------

    def follow(self, conn: Connection) -> None:
        """Move towards the latest assignment: let go of what is no longer this receiver's, take what is."""
        with self._lock:
            wanted, self._wanted = self._wanted, None
        if wanted is None:
            return
        for d in sorted(self.consuming - wanted - self.draining):
            self.let_go(conn, d)
        taking = wanted - self.consuming
        held = self.membership.claim(taking) if taking else set()
        # each queue has its own credit: a district that floods takes only its own share of what is held
        prefetch = max(MIN_PREFETCH, self.prefetch // max(1, len(wanted)))
        for d in sorted(held):
            conn.consume(Topology.events(d), prefetch=prefetch, max_body=self.max_body)
            self.consuming.add(d)
            log.info("district taken", district=d, receiver=self.membership.name)
        self.view = frozenset(self.consuming)

    def let_go(self, conn: Connection, district: str) -> None:
        """Stop taking ``district``'s messages; it is released once those it was sent are answered."""
        if district in self.draining:
            return
        conn.cancel(Topology.events(district))
        self.draining.add(district)

    def released(self, conn: Connection, in_hand: set[str]) -> None:
        """Release the queues let go whose messages are all answered (none ``in_hand``), and their claims."""
        done = {d for d in self.draining - in_hand if conn.settled(Topology.events(d))}
        for d in sorted(done):
            conn.release(Topology.events(d))
        if done:
            self.membership.unclaim(done)  # only now may another receiver take them
            self.draining -= done
            self.consuming -= done
            self.view = frozenset(self.consuming)
            log.info("districts handed over", districts=sorted(done), receiver=self.membership.name)

    def gone(self, stopping: bool) -> None:
        """After the broker connection closed (what it held is back on the queues): give every claim up, and
        with ``stopping`` the row too, so the others take the districts at their next beat."""
        self.consuming, self.draining, self.view = set(), set(), frozenset()
        self.stop()
        try:
            self.membership.leave() if stopping else self.membership.unclaim()
        except Exception as e:  # the database is away: the claims lapse with the lease
            log.warning("could not give the districts up; they go to the others when the lease lapses",
                        error=reason(e))
