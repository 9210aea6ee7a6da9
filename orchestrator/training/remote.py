"""The Ray worker set: cfg.distributed.workers Langevin workers and episode shards feed the learner.

IMPALA-style: `updates` takes whichever result is ready, applies it if it is fresh enough (staleness =
learner version − version that made it ≤ max_staleness, else dropped and counted), and re-issues work
only to the worker that reported (orchestrator/training/scheduler.py). New weights are broadcast every
broadcast_interval updates. In `sync` mode a run is deterministic, and a run resumed after the driver was
killed ends with the same weights as an uninterrupted one. Per-update records go to metrics.jsonl with
each checkpoint.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

import ray

from orchestrator.config import Config
from orchestrator.tracking.artifacts import Writer
from orchestrator.training.checkpoint import METRICS
from orchestrator.training.cluster import actor_pool, connect
from orchestrator.training.inputs import RunInputs
from orchestrator.training.learner import Learner, Update
from orchestrator.training.scheduler import Scheduler, Ticket
from workers.langevin_worker import WorkResult
from workers.pool import ActorDiedError, ActorUnavailableError, input_error_of, worker_failure


class RayWorkers:
    distributed = True
    description = "train ours (ray)"

    def __init__(self, cfg: Config, inputs: RunInputs, address: str | None):
        self.cfg, self.inputs, self.address = cfg, inputs, address
        self.started_ray = False
        self.pool = None
        self.scheduler: Scheduler | None = None
        self.infos: list[dict[str, Any]] = []
        self.metrics: list[dict[str, Any]] = []
        self.done_by = [0] * cfg.distributed.workers
        self.bytes_in = self.bytes_out = 0
        self.idle = self.idle_since = 0.0
        self.began = self.elapsed = 0.0

    def start(self, learner: Learner, state: dict[str, Any] | None, out: Path) -> None:
        """Join or start Ray, place the actors, send θ; with `state`, continue its accounting."""
        self.started_ray = connect(self.address, self.cfg)
        i = self.inputs
        self.pool = actor_pool(self.cfg, i.data_root, i.categories, i.manifest, i.splits, i.fold)
        self.infos = self.pool.start()
        self.pool.broadcast(learner.packet())
        self.scheduler = Scheduler(self.cfg, i.categories, self.pool, {x["worker"]: x["pid"] for x in self.infos})
        if state is not None:
            self.scheduler.load_state_dict(state)
            if (out / METRICS).is_file():
                applied = self.scheduler.counters.applied
                lines = (out / METRICS).read_text().splitlines()
                self.metrics = [json.loads(line) for line in lines if line.strip()][:applied]

    def _next_ready(self):
        s = self.scheduler
        if not s.in_flight and not s.pings:
            if not s.live():
                d = self.cfg.distributed
                raise RuntimeError(f"all {d.workers} Langevin workers died (distributed.max_restarts={d.max_restarts})")
            s.fill(s.live()[0])
        t0 = time.perf_counter()
        ready, _ = ray.wait(list(s.in_flight) + list(s.pings), num_returns=1)
        waited = time.perf_counter() - t0
        self.idle += waited
        self.idle_since += waited
        return ready[0]

    def _pinged(self, ref) -> None:
        """A restarting worker answered (or not yet, or never will)."""
        s = self.scheduler
        w = s.pings.pop(ref)
        try:
            info = ray.get(ref)
        except ActorUnavailableError:
            s.pings[self.pool.ping(w)] = w  # still restarting
            return
        except ActorDiedError:
            s.recovering.discard(w)
            s.dead.add(w)  # restarts exhausted
            return
        s.recovering.discard(w)
        s.seen_pid(w, info["pid"])
        s.fill(w)

    def _collect(self, ref, ticket: Ticket) -> WorkResult | None:
        """The finished request's result, or None when its worker died (the episode is retried)."""
        s = self.scheduler
        try:
            result = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - classified below
            bad = input_error_of(exc)
            if bad is not None:
                raise bad from None
            if not worker_failure(exc):
                raise
            s.failed(ticket)
            return None
        s.counters.completed += 1
        self.done_by[ticket.worker] += 1
        s.seen_pid(ticket.worker, result.pid)
        self.bytes_in += result.input_bytes
        self.bytes_out += result.nbytes()
        return result

    def updates(self, learner: Learner, start: int) -> Iterator[Update]:
        s = self.scheduler
        for w in range(s.workers):
            s.fill(w)
        self.began = time.perf_counter()
        while s.counters.applied < s.total:
            ref = self._next_ready()
            if ref in s.pings:
                self._pinged(ref)
                continue
            ticket = s.take(ref)
            result = self._collect(ref, ticket)
            if result is None:
                continue
            staleness = learner.version - result.version
            if not s.fresh(staleness):
                s.fill(ticket.worker)
                continue
            episode = ray.get(ticket.episode_ref) if result.grads is None else None
            stats = learner.apply(result, episode)
            if s.applied(staleness, learner.version):
                self.pool.broadcast(learner.packet())
            yield Update(result.category, stats, {"result": result, "staleness": staleness})
            s.fill(ticket.worker)  # after the checkpoint: its in-flight count is the driver's at that point
        self.elapsed = time.perf_counter() - self.began

    def log_record(self, record: dict[str, Any], rounded: dict[str, float], update: Update) -> dict[str, Any]:
        """The per-update record of a Ray run (also a line of metrics.jsonl)."""
        result, staleness, c = update.detail["result"], update.detail["staleness"], self.scheduler.counters
        elapsed = time.perf_counter() - self.began
        full = {
            "update": c.applied, "episode": result.episode_index, "category": result.category,
            "worker": result.worker, "pid": result.pid, "version": result.version, "staleness": staleness, **rounded,
            "staleness_hist": {str(k): v for k, v in sorted(self.scheduler.staleness_hist.items())},
            "episodes_per_s": {str(i): round(n / elapsed, 4) for i, n in enumerate(self.done_by)},
            "worker_compute_s": round(result.compute_s, 4),
            "learner_idle_s": round(self.idle_since, 4),
            "learner_idle_frac": round(self.idle / elapsed, 4) if elapsed > 0 else 0.0,
            "elapsed_s": round(elapsed, 3),
            **asdict(c),
        }
        self.idle_since = 0.0
        self.metrics.append(full)
        return full

    def state_dict(self) -> dict[str, Any]:
        return {"distributed": True, **self.scheduler.state_dict()}

    def extra_writers(self) -> dict[str, Writer]:
        lines = "".join(json.dumps(m) + "\n" for m in self.metrics)
        return {METRICS: lambda path: path.write_text(lines)}

    def finish(self) -> None:
        """Let restarting workers report (completes `restarts`), then abandon what is still in flight."""
        s = self.scheduler
        deadline = time.perf_counter() + self.cfg.distributed.start_timeout_s
        while s.pings and time.perf_counter() < deadline:
            ready, _ = ray.wait(list(s.pings), num_returns=1, timeout=max(0.0, deadline - time.perf_counter()))
            for ref in ready:
                w = s.pings.pop(ref)
                try:
                    s.seen_pid(w, ray.get(ref)["pid"])
                except ActorUnavailableError:
                    time.sleep(0.2)
                    s.pings[self.pool.ping(w)] = w
                except Exception:  # noqa: BLE001 - gone for good; not counted as restarted
                    pass
        s.counters.abandoned += len(s.in_flight)  # not needed any more: the run has its `total` updates
        for ref in s.in_flight:
            try:
                ray.cancel(ref)
            except Exception:  # noqa: BLE001 - already finished or its worker is gone
                pass
        s.in_flight.clear()

    def summary(self) -> dict[str, Any]:
        s, c, elapsed = self.scheduler, self.scheduler.counters, self.elapsed
        seen = max(c.completed, 1)
        return {
            "seconds": elapsed, "mode": self.cfg.distributed.mode, "workers": self.infos, "counters": asdict(c),
            "retry_pending": len(s.retry), "staleness_hist": {str(k): v for k, v in sorted(s.staleness_hist.items())},
            "learner_idle_frac": self.idle / elapsed if elapsed > 0 else 0.0,
            "episodes_per_s": c.completed / elapsed if elapsed > 0 else 0.0,
            "bytes_per_episode": {"episode_in": self.bytes_in / seen, "result_out": self.bytes_out / seen,
                                  "weights": self.pool.broadcast_bytes / seen},
            "broadcasts": self.pool.broadcasts,
        }

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
        if self.started_ray:
            ray.shutdown()
