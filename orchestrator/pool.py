"""Ray actor pool: the plain worker classes become actors here, and nowhere else.

* `connect` joins a cluster (`auto`, `HOST:PORT`, `ray://HOST:PORT`) after checking that this machine has
  the cluster's token and a TCP probe bounded by distributed.connect_timeout_s, or starts Ray in-process
  (no address).
* `ActorPool` builds E episode workers (one shard of categories each) and W Langevin workers with
  `num_cpus`/`num_gpus` from the config and `max_restarts`/`max_task_retries`; GPU workers pick their
  device from Ray's assignment (`ray.get_gpu_ids()`; Ray sets CUDA_VISIBLE_DEVICES, so it is cuda:0).
* Weights go out once per version: `broadcast` does one `ray.put`; every request carries that one
  reference (boxed in a list so Ray does not resolve it per call) plus its version; a worker `ray.get`s
  it only when the version changed, and tags its result with the version it ran at.
"""
from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import ray
import torch
from ray.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    GetTimeoutError,
    ObjectLostError,
    OwnerDiedError,
    RayActorError,
    RayTaskError,
    WorkerCrashedError,
)

from model.errors import InputError
from orchestrator.tracking.artifacts import build_model
from orchestrator.config import Config, config_from_dict
from orchestrator.learner import step_spec
from workers.episode_worker import EpisodeWorker
from workers.negatives import LangevinWorker, WeightsPacket

# A task that failed for one of these reasons is retried by the learner (the worker died or restarts).
WORKER_FAILURES = (RayActorError, ObjectLostError, OwnerDiedError, WorkerCrashedError)
RAY_CLUSTER_FILE = Path("/tmp/ray/ray_current_cluster")


# ---------------------------------------------------------------------------------------------
# Connecting


def _host_port(text: str, address: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"--address {address!r}: expected auto, HOST:PORT or ray://HOST:PORT")
    return host, int(port)


def resolve_address(address: str) -> tuple[str, tuple[str, int] | None]:
    """-> (address for ray.init, (host, port) to probe first). `auto`: $RAY_ADDRESS, else the local
    cluster file written by `ray start`."""
    if address == "auto":
        found = os.environ.get("RAY_ADDRESS", "").strip()
        if not found and RAY_CLUSTER_FILE.is_file():
            found = RAY_CLUSTER_FILE.read_text().strip()
        if not found or found == "auto":
            raise InputError("--address auto: no running Ray cluster found (no $RAY_ADDRESS, no `ray start` on this machine)")
        address = found
    if address.startswith(("http://", "https://")):
        raise InputError(f"--address {address!r} is a dashboard URL (that is for `ray job submit`); "
                         "give the cluster address HOST:PORT (default port 6379) or ray://HOST:10001")
    if address.startswith("ray://"):
        return address, _host_port(address[len("ray://"):], address)
    return address, _host_port(address, address)


def cluster_token_source() -> str | None:
    """Where Ray will read the cluster token from (its own order), or None when there is none."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return "RAY_AUTH_TOKEN"
    custom = os.environ.get("RAY_AUTH_TOKEN_PATH", "").strip()
    path = Path(custom).expanduser() if custom else Path.home() / ".ray" / "auth_token"
    try:
        return str(path) if path.read_text().strip() else None
    except OSError:
        return None


def require_cluster_token(address: str) -> None:
    """Refuse to join without a token unless RAY_AUTH_MODE=disabled says the cluster has none.

    Without a token a token-authenticated cluster does not refuse the driver: Ray retries until
    distributed.connect_timeout_s and the reason is lost, so the missing token is named up front.
    """
    if os.environ.get("RAY_AUTH_MODE", "").strip().lower() == "disabled" or cluster_token_source() is not None:
        return
    custom = os.environ.get("RAY_AUTH_TOKEN_PATH", "").strip()
    where = f"RAY_AUTH_TOKEN_PATH={custom} is missing or empty" if custom else \
        "no RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token"
    raise InputError(f"--address {address}: no Ray cluster token ({where}); expected the head's token "
                     "(`ray get-auth-token` on the head) in a file named by RAY_AUTH_TOKEN_PATH, or "
                     "RAY_AUTH_MODE=disabled for a cluster without token authentication (docs/cluster.md)")


def _probe_gcs(target: str, address: str, timeout: float) -> None:
    """Join the cluster from a child process first: ray.init retries a silent or foreign endpoint (a
    proxy, Redis on 6379) for minutes, a child can be stopped after `timeout` seconds."""
    code = ("import ray; ray.init(address=%r, log_to_driver=False, logging_level='ERROR', "
            "include_dashboard=False) if not %r.startswith('ray://') else ray.init(address=%r); ray.shutdown()"
            % (target, target, target))
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        source = cluster_token_source()
        hint = f"; a cluster whose token differs from {source}'s does not answer either" if source else ""
        raise InputError(f"--address {address}: no Ray cluster answered at {target} within {timeout:g}s "
                         f"(distributed.connect_timeout_s){hint}") from None
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        raise InputError(f"--address {address}: could not join the Ray cluster at {target} "
                         f"({lines[-1][:200] if lines else 'exit ' + str(proc.returncode)})")


def connect(address: str | None, cfg: Config) -> bool:
    """Join or start Ray; -> True when Ray was started (and must be shut down) here."""
    if ray.is_initialized():  # a caller (tests, notebooks) already did ray.init
        return False
    d = cfg.distributed
    if address is None:
        need = d.workers * d.num_cpus_per_worker + d.episode_workers * d.num_cpus_per_episode_worker
        kwargs: dict[str, Any] = {}
        if d.object_store_mb:
            kwargs["object_store_memory"] = d.object_store_mb * 1024 * 1024
        # address="local": a fresh in-process instance, never whatever `ray start` left running.
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, math.ceil(need)), include_dashboard=False,
                 log_to_driver=False, logging_level="ERROR", **kwargs)
        return True
    target, probe = resolve_address(address)
    require_cluster_token(address)
    if probe is not None:
        try:
            socket.create_connection(probe, timeout=d.connect_timeout_s).close()
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise InputError(f"--address {address}: no Ray cluster reachable at {probe[0]}:{probe[1]} "
                             f"within {d.connect_timeout_s:g}s ({reason})") from None
    _probe_gcs(target, address, d.connect_timeout_s)
    try:
        ray.init(address=target, log_to_driver=False, logging_level="ERROR")
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise InputError(f"--address {address}: could not join the Ray cluster ({first})") from None
    return False


# ---------------------------------------------------------------------------------------------
# Actors


class RayLangevinWorker(LangevinWorker):
    """LangevinWorker as a Ray actor: device from Ray's GPU assignment, weights by versioned reference."""

    def __init__(self, cfg_tree: dict, worker_id: int, num_threads: int):
        torch.set_num_threads(max(1, num_threads))
        cfg = config_from_dict(cfg_tree)
        self.gpu_ids = [str(g) for g in ray.get_gpu_ids()]
        # Ray sets CUDA_VISIBLE_DEVICES to the assigned GPUs, so the first visible one is ours.
        device = "cuda:0" if self.gpu_ids and torch.cuda.is_available() else "cpu"
        super().__init__(lambda: build_model(cfg), step_spec(cfg), worker_id, device)

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
    def __init__(self, cfg: Config, data_root: str | Path, categories: list[str]):
        d = cfg.distributed
        self.cfg = cfg
        tree = cfg.to_dict()
        tree["model"]["backbone"]["weights"] = ""  # workers get θ from the learner, not from a file
        n_shards = min(d.episode_workers, len(categories))
        shards = [categories[i::n_shards] for i in range(n_shards)]
        self.owner = {c: i for i, shard in enumerate(shards) for c in shard}
        common = {"max_restarts": d.max_restarts, "max_task_retries": d.max_task_retries}
        episode_cls = ray.remote(EpisodeWorker).options(num_cpus=d.num_cpus_per_episode_worker, **common)
        self.episode_actors = [
            episode_cls.remote(str(data_root), shard, cfg.data.image_size, cfg.train.shots, cfg.train.queries,
                               (cfg.inpaint.min_frac, cfg.inpaint.max_frac), cfg.train.augment,
                               tuple(cfg.inpaint.kinds), max_pixels=cfg.data.max_pixels)
            for shard in shards
        ]
        langevin_cls = ray.remote(RayLangevinWorker).options(
            num_cpus=d.num_cpus_per_worker, num_gpus=d.num_gpus_per_worker, **common)
        threads = max(1, int(d.num_cpus_per_worker))
        self.actors = [langevin_cls.remote(tree, w, threads) for w in range(d.workers)]
        self.box: list = []
        self.version = -1
        self.broadcasts = 0
        self.broadcast_bytes = 0
        self.infos: list[dict[str, Any]] = []

    def start(self) -> list[dict[str, Any]]:
        """Wait until every actor is placed and ready (episode shards loaded); -> Langevin worker infos.

        Raises InputError when a shard has bad data, or when the actors are not all placed within
        distributed.start_timeout_s (e.g. more GPUs or CPUs requested than the cluster has)."""
        d = self.cfg.distributed
        info_refs = [a.info.remote() for a in self.actors]
        load_refs = [a.load.remote() for a in self.episode_actors]
        pending = info_refs + load_refs
        ready, not_ready = ray.wait(pending, num_returns=len(pending), timeout=d.start_timeout_s)
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
                f"{len(not_ready)} of {len(pending)} Ray workers were not placed within {d.start_timeout_s:g}s: "
                f"{d.workers} Langevin workers × ({d.num_cpus_per_worker:g} CPU, {d.num_gpus_per_worker:g} GPU) "
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


__all__ = ["ActorPool", "RayLangevinWorker", "connect", "resolve_address", "worker_failure", "input_error_of",
           "ActorDiedError", "ActorUnavailableError", "GetTimeoutError"]
