"""Distributed meta-training: Langevin workers on Ray feed one central learner (IMPALA-style).

The loop (`train_distributed`) fetches whichever result is ready, applies it if it is fresh enough
(staleness = learner version − version that made it ≤ max_staleness, else dropped and counted), and
re-issues work only to the worker that reported, keeping at most max_in_flight requests per worker.
New weights are broadcast every broadcast_interval updates.

Episodes are a pure function of (train.seed, episode index) — `episode_plan` draws the category, the
episode seed and the Langevin seed — so a retried episode (worker killed) or a resumed run reproduces
exactly what the lost attempt would have produced. In `sync` mode (one request in flight, staleness 0,
broadcast every update) a run is therefore deterministic, and a run resumed after the driver was killed
ends with the same weights as an uninterrupted one.

Accounting (exact, also across worker deaths):
    issued    = completed + failed + abandoned (in flight when the run ended or the checkpoint was taken)
    completed = applied + dropped_stale
    failed    = retried + failed episodes not needed any more
"""
from __future__ import annotations

import json
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import ray
import torch
from tqdm import tqdm

from model.errors import InputError
from orchestrator.tracking.artifacts import build_model, META, model_writers, resolve_device, STATE, WEIGHTS
from model.methods import OURS
from orchestrator.checkpoint import METRICS, newest_state, recover, save_checkpoint
from orchestrator.config import Config
from orchestrator.learner import Learner, NonFiniteLoss, step_spec
from orchestrator.pool import (
    ActorDiedError,
    ActorPool,
    ActorUnavailableError,
    connect,
    input_error_of,
    worker_failure,
)
from orchestrator.train import TrainingDiverged, _prepare_out, training_categories

def episode_plan(seed: int, index: int, categories: list[str]) -> tuple[str, int, int]:
    """Episode `index` of a run seeded `seed` -> (category, episode seed, Langevin seed). Pure."""
    a, b, c = np.random.SeedSequence([int(seed), int(index)]).generate_state(3, dtype=np.uint32)
    return categories[int(a) % len(categories)], int(b), int(c)


def checkpoint_is_distributed(out: str | Path) -> bool | None:
    """None: no checkpoint in `out`; True/False: written by the distributed / in-process trainer."""
    path = newest_state(Path(out))
    if path is None:
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - unreadable: resume's consistency check refuses it with one line
        return None
    return bool(state.get("distributed", False))


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


def train_distributed(
    cfg: Config,
    data_root: str | Path,
    out: str | Path,
    address: str | None = None,
    resume: bool = False,
    progress: bool = True,
    on_log: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Meta-train with cfg.distributed.workers Langevin workers on Ray; -> a summary (counters, timing)."""
    out, data_root = Path(out), Path(data_root)
    d = cfg.distributed
    if cfg.train.method != OURS.model:
        raise InputError(f"train.method={cfg.train.method!r}: distributed training (--workers) supports ours only")
    if not data_root.is_dir():
        raise InputError(f"data root {data_root} does not exist")
    _prepare_out(out, resume)
    if resume:
        recover(out)  # the newest consistent checkpoint, verified (or a one-line refusal)
    if resume and checkpoint_is_distributed(out) is False:
        raise InputError(f"--resume: {out / STATE} was written by the in-process trainer; resume it without --workers")
    categories = training_categories(data_root, cfg)
    device = resolve_device(cfg.train.device)
    sync = d.mode == "sync"
    max_staleness = 0 if sync else d.max_staleness
    cap = 1 if sync else d.max_in_flight
    interval = 1 if sync else d.broadcast_interval
    total = cfg.train.episodes

    torch.manual_seed(cfg.train.seed)
    learner = Learner(build_model(cfg), cfg.train.lr, cfg.train.grad_clip, step_spec(cfg), device)
    c = Counters()
    next_index = 0
    history: list[dict[str, float]] = []
    metrics: list[dict[str, Any]] = []
    hist: Counter[int] = Counter()
    if resume:
        from safetensors.torch import load_file

        learner.model.load_state_dict(load_file(str(out / WEIGHTS)))
        state = torch.load(out / STATE, map_location="cpu", weights_only=True)
        learner.load_state_dict(state["learner"])
        c = Counters(**state["counters"])
        c.abandoned += int(state["in_flight"])  # requests that died with the previous driver
        next_index = int(state["next_index"])
        hist.update({int(k): int(v) for k, v in state["staleness_hist"].items()})
        history = json.loads((out / META).read_text()).get("history", [])[: c.applied]
        if (out / METRICS).is_file():
            metrics = [json.loads(line) for line in (out / METRICS).read_text().splitlines() if line.strip()][: c.applied]
    meta = {"method": OURS.model, "train_categories": categories, "held_out": list(cfg.data.exclude),
            "data_root": str(data_root), "image_size": cfg.data.image_size, "distributed": asdict(d)}

    in_flight: dict[Any, Ticket] = {}

    def checkpoint() -> None:
        state = {
            "distributed": True,
            "episode": c.applied,
            "next_index": next_index,
            "learner": learner.state_dict(),
            "counters": asdict(c),
            "in_flight": len(in_flight),
            "staleness_hist": {str(k): v for k, v in hist.items()},
        }
        writers = model_writers(learner.model, cfg, {**meta, "episodes_done": c.applied, "history": history}, state)
        lines = "".join(json.dumps(m) + "\n" for m in metrics)
        writers[METRICS] = lambda path: path.write_text(lines)
        save_checkpoint(out, c.applied, writers)

    started_ray = connect(address, cfg)
    pool = None
    try:
        pool = ActorPool(cfg, data_root, categories)
        infos = pool.start()
        pool.broadcast(learner.packet())
        W = d.workers
        pids = {i["worker"]: i["pid"] for i in infos}
        load = [0] * W
        done_by = [0] * W
        pings: dict[Any, int] = {}
        recovering: set[int] = set()
        dead: set[int] = set()
        retry: deque[int] = deque()
        prefetched: dict[int, Any] = {}
        bytes_in = bytes_out = 0

        def episode_ref(index: int):
            if index in prefetched:
                return prefetched.pop(index)
            category, episode_seed, _ = episode_plan(cfg.train.seed, index, categories)
            return pool.episode(category, episode_seed)

        def issue(w: int) -> None:
            nonlocal next_index
            if retry:
                index = retry.popleft()
                c.retried += 1
            else:
                index, next_index = next_index, next_index + 1
            ref_e = episode_ref(index)
            ref = pool.submit(w, ref_e, index, episode_plan(cfg.train.seed, index, categories)[2])
            in_flight[ref] = Ticket(w, index, pool.version, ref_e)
            load[w] += 1
            c.issued += 1
            if sync and index + 1 < total and index + 1 not in prefetched:
                prefetched[index + 1] = episode_ref(index + 1)  # assemble the next episode meanwhile

        def live() -> list[int]:
            return [w for w in range(W) if w not in dead and w not in recovering]

        def fill(w: int) -> None:
            """Re-issue to worker w (which just reported) up to its in-flight cap."""
            if sync:
                if not in_flight and c.applied < total and live():
                    issue(w if w in live() else live()[0])
                return
            while w in live() and load[w] < cap and c.applied + len(in_flight) < total:
                issue(w)

        def seen_pid(w: int, pid: int) -> None:
            if pid != pids[w]:  # a new process serves worker w: Ray restarted it
                c.restarts += 1
                pids[w] = pid

        def fail(w: int) -> None:
            if w not in recovering and w not in dead:
                recovering.add(w)
                pings[pool.ping(w)] = w

        for w in range(W):
            fill(w)
        began = time.perf_counter()
        idle = idle_since = 0.0
        bar = tqdm(total=total, initial=c.applied, desc="train ours (ray)", disable=not progress, dynamic_ncols=True)
        while c.applied < total:
            if not in_flight and not pings:
                if not live():
                    raise RuntimeError(f"all {W} Langevin workers died (distributed.max_restarts={d.max_restarts})")
                fill(live()[0])
            t0 = time.perf_counter()
            ready, _ = ray.wait(list(in_flight) + list(pings), num_returns=1)
            waited = time.perf_counter() - t0
            idle += waited
            idle_since += waited
            ref = ready[0]
            if ref in pings:
                w = pings.pop(ref)
                try:
                    info = ray.get(ref)
                except ActorUnavailableError:
                    pings[pool.ping(w)] = w  # still restarting
                    continue
                except ActorDiedError:
                    recovering.discard(w)
                    dead.add(w)  # restarts exhausted
                    continue
                recovering.discard(w)
                seen_pid(w, info["pid"])
                fill(w)
                continue
            ticket = in_flight.pop(ref)
            w = ticket.worker
            load[w] -= 1
            try:
                result = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - classified below
                bad = input_error_of(exc)
                if bad is not None:
                    raise bad from None
                if not worker_failure(exc):
                    raise
                c.failed += 1
                retry.appendleft(ticket.index)
                prefetched.pop(ticket.index, None)
                fail(w)
                if sync:
                    fill(w)
                continue
            c.completed += 1
            done_by[w] += 1
            seen_pid(w, result.pid)
            bytes_in += result.input_bytes
            bytes_out += result.nbytes()
            staleness = learner.version - result.version
            if staleness > max_staleness:
                c.dropped_stale += 1
                fill(w)
                continue
            episode = ray.get(ticket.episode_ref) if result.grads is None else None
            try:
                stats = learner.apply(result, episode)
            except NonFiniteLoss as exc:
                raise TrainingDiverged(
                    f"loss became non-finite at update {c.applied} (episode {result.episode_index}, {exc}); the "
                    f"last good checkpoint is in {out}; try a smaller train.lr or langevin.step_size"
                ) from None
            c.applied += 1
            hist[staleness] += 1
            if learner.version % interval == 0:
                pool.broadcast(learner.packet())
            elapsed = time.perf_counter() - began
            rounded = {k: round(float(v), 6) for k, v in stats.items()}
            history.append({"episode": c.applied - 1, "category": result.category, **rounded})
            record = {
                "update": c.applied, "episode": result.episode_index, "category": result.category, "worker": w,
                "pid": result.pid,
                "version": result.version, "staleness": staleness, **rounded,
                "staleness_hist": {str(k): v for k, v in sorted(hist.items())},
                "episodes_per_s": {str(i): round(done_by[i] / elapsed, 4) for i in range(W)},
                "worker_compute_s": round(result.compute_s, 4),
                "learner_idle_s": round(idle_since, 4),
                "learner_idle_frac": round(idle / elapsed, 4) if elapsed > 0 else 0.0,
                "elapsed_s": round(elapsed, 3),
                **{k: v for k, v in asdict(c).items()},
            }
            idle_since = 0.0
            metrics.append(record)
            if on_log:
                on_log(record)
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.4f}", stale=staleness)
            if c.applied % cfg.train.checkpoint_every == 0 and c.applied < total:
                checkpoint()
            fill(w)
        bar.close()
        elapsed = time.perf_counter() - began
        deadline = time.perf_counter() + d.start_timeout_s
        while pings and time.perf_counter() < deadline:  # workers still restarting: complete `restarts`
            ready, _ = ray.wait(list(pings), num_returns=1, timeout=max(0.0, deadline - time.perf_counter()))
            for ref in ready:
                w = pings.pop(ref)
                try:
                    seen_pid(w, ray.get(ref)["pid"])
                except ActorUnavailableError:
                    time.sleep(0.2)
                    pings[pool.ping(w)] = w
                except Exception:  # noqa: BLE001 - gone for good; not counted as restarted
                    pass
        c.abandoned += len(in_flight)  # not needed any more: the run has its `total` updates
        for ref in in_flight:
            try:
                ray.cancel(ref)
            except Exception:  # noqa: BLE001 - already finished or its worker is gone
                pass
        in_flight.clear()
        checkpoint()
        seen = max(c.completed, 1)
        return {
            "out": str(out), "episodes": total, "seconds": elapsed, "categories": categories, "mode": d.mode,
            "workers": infos, "counters": asdict(c), "retry_pending": len(retry),
            "staleness_hist": {str(k): v for k, v in sorted(hist.items())},
            "learner_idle_frac": idle / elapsed if elapsed > 0 else 0.0,
            "episodes_per_s": c.completed / elapsed if elapsed > 0 else 0.0,
            "bytes_per_episode": {"episode_in": bytes_in / seen, "result_out": bytes_out / seen,
                                  "weights": pool.broadcast_bytes / seen},
            "broadcasts": pool.broadcasts,
            "final": history[-1] if history else None,
        }
    finally:
        if pool is not None:
            pool.shutdown()
        if started_ray:
            ray.shutdown()


__all__ = ["train_distributed", "episode_plan", "checkpoint_is_distributed", "Counters", "METRICS"]
