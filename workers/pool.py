"""Ray actor pool: the plain worker classes become actors here, and nowhere else.

* `ActorPool` builds E episode workers (one shard of categories each) and W Langevin workers with
  `num_cpus`/`num_gpus` from the resources and `max_restarts`/`max_task_retries`; GPU workers pick their
  device from Ray's assignment (`ray.get_gpu_ids()`; Ray sets CUDA_VISIBLE_DEVICES, so it is cuda:0).
* Weights go out once per version: `broadcast` does one `ray.put`; every request carries that one
  reference (boxed in a list so Ray does not resolve it per call) plus its version; a worker `ray.get`s
  it only when the version changed, and tags its result with the version it ran at.

The pool knows no config: the caller (orchestrator/training/cluster.py) hands it the resources, the
episode worker's arguments, a picklable model factory and the loss spec.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import ray
import torch
import torch.nn as nn
from ray.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    ObjectLostError,
    OwnerDiedError,
    RayActorError,
    RayTaskError,
    WorkerCrashedError,
)

from model.errors import InputError
from model.objective import StepSpec
from workers.episode_worker import EpisodeWorker
from workers.langevin_worker import LangevinWorker, WeightsPacket

# A task that failed for one of these reasons is retried by the learner (the worker died or restarts).
WORKER_FAILURES = (RayActorError, ObjectLostError, OwnerDiedError, WorkerCrashedError)


@dataclass(frozen=True)
class PoolResources:
    """How many actors of each kind, what each may use, and how Ray restarts them."""

    workers: int
    episode_workers: int
    num_cpus_per_worker: float
    num_gpus_per_worker: float
    num_cpus_per_episode_worker: float
    max_restarts: int
    max_task_retries: int
    start_timeout_s: float


class RayLangevinWorker(LangevinWorker):
    """LangevinWorker as a Ray actor: device from Ray's GPU assignment, weights by versioned reference."""

    def __init__(self, model_factory: Callable[[], nn.Module], spec: StepSpec, worker_id: int, num_threads: int):
        torch.set_num_threads(max(1, num_threads))
        self.gpu_ids = [str(g) for g in ray.get_gpu_ids()]
        # Ray sets CUDA_VISIBLE_DEVICES to the assigned GPUs, so the first visible one is ours.
        device = "cuda:0" if self.gpu_ids and torch.cuda.is_available() else "cpu"
        super().__init__(model_factory, spec, worker_id, device)

    def info(self) -> dict[str, Any]:
        return {"worker": self.worker_id, "pid": os.getpid(), "gpu_ids": self.gpu_ids, "device": str(self.device),
                "node": ray.get_runtime_context().get_node_id(), "version": self.version}

    def run_versioned(self, box: list, version: int, episode, episode_index: int, seed: int):
        if version != self.version:
            packet: WeightsPacket = ray.get(box[0])  # the one object of this version, shared by all
            self.set_weights(packet)
        return self.run(episode, episode_index, seed)


def input_error_of(exc: BaseException) -> InputError | None:
    """The InputError a remote call raised (Ray wraps it in a RayTaskError), if any."""
    cause = getattr(exc, "cause", None)
    if isinstance(exc, InputError) and not isinstance(exc, RayTaskError):
        return exc
    if isinstance(cause, InputError):
        return InputError(str(cause.args[0]) if cause.args else str(cause))
    return None


def worker_failure(exc: BaseException) -> bool:
    """True when a task failed because a worker (or its input's producer) died, not because of a bug."""
    if isinstance(exc, WORKER_FAILURES):
        return True
    return isinstance(exc, RayTaskError) and isinstance(getattr(exc, "cause", None), WORKER_FAILURES)


class ActorPool:
    def __init__(self, resources: PoolResources, categories: list[str], episode_args: dict[str, Any],
                 model_factory: Callable[[], nn.Module], spec: StepSpec):
        """episode_args: EpisodeWorker's keyword arguments except `categories` (its shard)."""
        r = self.resources = resources
        n_shards = min(r.episode_workers, len(categories))
        shards = [categories[i::n_shards] for i in range(n_shards)]
        self.owner = {c: i for i, shard in enumerate(shards) for c in shard}
        common = {"max_restarts": r.max_restarts, "max_task_retries": r.max_task_retries}
        episode_cls = ray.remote(EpisodeWorker).options(num_cpus=r.num_cpus_per_episode_worker, **common)
        self.episode_actors = [episode_cls.remote(categories=shard, **episode_args) for shard in shards]
        langevin_cls = ray.remote(RayLangevinWorker).options(
            num_cpus=r.num_cpus_per_worker, num_gpus=r.num_gpus_per_worker, **common)
        threads = max(1, int(r.num_cpus_per_worker))
        self.actors = [langevin_cls.remote(model_factory, spec, w, threads) for w in range(r.workers)]
        self.box: list = []
        self.version = -1
        self.broadcasts = 0
        self.broadcast_bytes = 0
        self.infos: list[dict[str, Any]] = []

    def start(self) -> list[dict[str, Any]]:
        """Wait until every actor is placed and ready (episode shards loaded); -> Langevin worker infos.

        Raises InputError when a shard has bad data, or when the actors are not all placed within
        start_timeout_s (e.g. more GPUs or CPUs requested than the cluster has)."""
        r = self.resources
        info_refs = [a.info.remote() for a in self.actors]
        load_refs = [a.load.remote() for a in self.episode_actors]
        pending = info_refs + load_refs
        ready, not_ready = ray.wait(pending, num_returns=len(pending), timeout=r.start_timeout_s)
        for ref in ready:  # bad data surfaces first
            try:
                ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - classify below
                bad = input_error_of(exc)
                if bad is not None:
                    raise bad from None
                raise
        if not_ready:
            have = ray.cluster_resources()
            raise InputError(
                f"{len(not_ready)} of {len(pending)} Ray workers were not placed within {r.start_timeout_s:g}s: "
                f"{r.workers} Langevin workers × ({r.num_cpus_per_worker:g} CPU, {r.num_gpus_per_worker:g} GPU) "
                f"requested, the cluster has {have.get('CPU', 0):g} CPU and {have.get('GPU', 0):g} GPU"
            )
        self.infos = ray.get(info_refs)
        return self.infos

    def broadcast(self, packet: WeightsPacket) -> None:
        """One ray.put per version; later requests carry this reference."""
        self.box = [ray.put(packet)]
        self.version = packet.version
        self.broadcasts += 1
        self.broadcast_bytes += packet.nbytes()

    def episode(self, category: str, seed: int) -> ray.ObjectRef:
        return self.episode_actors[self.owner[category]].sample.remote(category, seed)

    def submit(self, worker: int, episode_ref: ray.ObjectRef, index: int, seed: int) -> ray.ObjectRef:
        return self.actors[worker].run_versioned.remote(self.box, self.version, episode_ref, index, seed)

    def ping(self, worker: int) -> ray.ObjectRef:
        return self.actors[worker].info.remote()

    def shutdown(self) -> None:
        for actor in self.actors + self.episode_actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass


__all__ = ["ActorPool", "PoolResources", "RayLangevinWorker", "worker_failure", "input_error_of",
           "ActorDiedError", "ActorUnavailableError"]
