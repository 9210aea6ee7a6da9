"""Which Ray worker gets which episode: issue order, in-flight cap, staleness bound, broadcast interval.

Episodes are a pure function of (train.seed, episode index) — `episode_plan` draws the category, the
episode seed and the Langevin seed — so a retried episode (worker killed) or a resumed run reproduces
exactly what the lost attempt would have produced. In `sync` mode (one request in flight, staleness 0,
broadcast every update) a run is therefore deterministic.

Accounting (exact, also across worker deaths):
    issued    = completed + failed + abandoned (in flight when the run ended or the checkpoint was taken)
    completed = applied + dropped_stale
    failed    = retried + failed episodes not needed any more
"""
from __future__ import annotations

from collections import Counter, deque
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from orchestrator.config import Config
from workers.pool import ActorPool


def episode_plan(seed: int, index: int, categories: list[str]) -> tuple[str, int, int]:
    """Episode `index` of a run seeded `seed` -> (category, episode seed, Langevin seed). Pure."""
    a, b, c = np.random.SeedSequence([int(seed), int(index)]).generate_state(3, dtype=np.uint32)
    return categories[int(a) % len(categories)], int(b), int(c)


@dataclass
class Counters:
    issued: int = 0
    completed: int = 0
    applied: int = 0
    dropped_stale: int = 0
    failed: int = 0
    retried: int = 0
    abandoned: int = 0
    restarts: int = 0  # worker processes seen to be replaced (new pid after a failure)


@dataclass
class Ticket:
    worker: int
    index: int
    version: int
    episode_ref: Any


class Scheduler:
    """Keeps each live worker busy up to its cap, retries lost episodes first, tracks worker health."""

    def __init__(self, cfg: Config, categories: list[str], pool: ActorPool, pids: dict[int, int]):
        d = cfg.distributed
        self.sync = d.mode == "sync"
        self.max_staleness = 0 if self.sync else d.max_staleness
        self.cap = 1 if self.sync else d.max_in_flight
        self.interval = 1 if self.sync else d.broadcast_interval
        self.seed, self.categories, self.total = cfg.train.seed, categories, cfg.train.episodes
        self.pool, self.workers, self.pids = pool, d.workers, dict(pids)
        self.counters = Counters()
        self.next_index = 0
        self.staleness_hist: Counter[int] = Counter()
        self.in_flight: dict[Any, Ticket] = {}
        self.load = [0] * self.workers
        self.pings: dict[Any, int] = {}
        self.recovering: set[int] = set()
        self.dead: set[int] = set()
        self.retry: deque[int] = deque()
        self.prefetched: dict[int, Any] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"next_index": self.next_index, "counters": asdict(self.counters), "in_flight": len(self.in_flight),
                "staleness_hist": {str(k): v for k, v in self.staleness_hist.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A Ray run's state, or an in-process one (`episode` updates, each issued, applied at staleness 0)."""
        if "counters" not in state:
            done = int(state["episode"])
            state = {"counters": asdict(Counters(issued=done, completed=done, applied=done)), "in_flight": 0,
                     "next_index": done, "staleness_hist": {"0": done} if done else {}}
        self.counters = Counters(**state["counters"])
        self.counters.abandoned += int(state["in_flight"])  # requests that died with the previous driver
        self.next_index = int(state["next_index"])
        self.staleness_hist.update({int(k): int(v) for k, v in state["staleness_hist"].items()})

    def live(self) -> list[int]:
        return [w for w in range(self.workers) if w not in self.dead and w not in self.recovering]

    def _episode_ref(self, index: int):
        if index in self.prefetched:
            return self.prefetched.pop(index)
        category, episode_seed, _ = episode_plan(self.seed, index, self.categories)
        return self.pool.episode(category, episode_seed)

    def issue(self, w: int) -> None:
        c = self.counters
        if self.retry:
            index = self.retry.popleft()
            c.retried += 1
        else:
            index, self.next_index = self.next_index, self.next_index + 1
        ref_e = self._episode_ref(index)
        ref = self.pool.submit(w, ref_e, index, episode_plan(self.seed, index, self.categories)[2])
        self.in_flight[ref] = Ticket(w, index, self.pool.version, ref_e)
        self.load[w] += 1
        c.issued += 1
        if self.sync and index + 1 < self.total and index + 1 not in self.prefetched:
            self.prefetched[index + 1] = self._episode_ref(index + 1)  # assemble the next episode meanwhile

    def fill(self, w: int) -> None:
        """Re-issue to worker w (which just reported) up to its in-flight cap."""
        c = self.counters
        if self.sync:
            if not self.in_flight and c.applied < self.total and self.live():
                self.issue(w if w in self.live() else self.live()[0])
            return
        while w in self.live() and self.load[w] < self.cap and c.applied + len(self.in_flight) < self.total:
            self.issue(w)

    def take(self, ref) -> Ticket:
        """The ticket of a finished request (no longer in flight)."""
        ticket = self.in_flight.pop(ref)
        self.load[ticket.worker] -= 1
        return ticket

    def seen_pid(self, w: int, pid: int) -> None:
        if pid != self.pids[w]:  # a new process serves worker w: Ray restarted it
            self.counters.restarts += 1
            self.pids[w] = pid

    def failed(self, ticket: Ticket) -> None:
        """A request lost with its worker: retry its episode first, and ping the worker until it is back."""
        self.counters.failed += 1
        self.retry.appendleft(ticket.index)
        self.prefetched.pop(ticket.index, None)
        w = ticket.worker
        if w not in self.recovering and w not in self.dead:
            self.recovering.add(w)
            self.pings[self.pool.ping(w)] = w
        if self.sync:
            self.fill(w)

    def fresh(self, staleness: int) -> bool:
        """Whether a completed result is applied (True) or dropped as too stale (counted)."""
        if staleness > self.max_staleness:
            self.counters.dropped_stale += 1
            return False
        return True

    def applied(self, staleness: int, version: int) -> bool:
        """Count an applied update; -> whether the new weights are due for a broadcast."""
        self.counters.applied += 1
        self.staleness_hist[staleness] += 1
        return version % self.interval == 0
