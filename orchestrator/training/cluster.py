"""Joining a Ray cluster, and the actor pool built from a config.

* `connect` joins a cluster (`auto`, `HOST:PORT`, `ray://HOST:PORT`) after checking that this machine has
  the cluster's token and a TCP probe bounded by distributed.connect_timeout_s, or starts Ray in-process
  (no address).
* `actor_pool` turns the config into workers/pool.py's ActorPool (resources, episode worker arguments,
  a model factory the actors call, the loss spec).
"""
from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import ray

from model.errors import InputError
from orchestrator.tracking.artifacts import build_model
from orchestrator.config import Config, config_from_dict
from orchestrator.training.learner import step_spec
from workers.pool import ActorPool, PoolResources

RAY_CLUSTER_FILE = Path("/tmp/ray/ray_current_cluster")




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


def actor_pool(cfg: Config, data_root: str | Path | None, categories: list[str], manifest: str | Path | None = None,
               splits: str | Path | None = None, fold: str | None = None) -> ActorPool:
    """The pool for cfg.distributed: episode shards read what the in-process run reads (folder or manifest)."""
    d = cfg.distributed
    tree = cfg.to_dict()
    tree["model"]["backbone"]["weights"] = ""  # workers get θ from the learner, not from a file
    resources = PoolResources(
        workers=d.workers, episode_workers=d.episode_workers, num_cpus_per_worker=d.num_cpus_per_worker,
        num_gpus_per_worker=d.num_gpus_per_worker, num_cpus_per_episode_worker=d.num_cpus_per_episode_worker,
        max_restarts=d.max_restarts, max_task_retries=d.max_task_retries, start_timeout_s=d.start_timeout_s)
    episode_args = {
        "root": None if data_root is None else str(data_root), "image_size": cfg.data.image_size,
        "shots": cfg.train.shots, "queries": cfg.train.queries,
        "patch_frac": (cfg.inpaint.min_frac, cfg.inpaint.max_frac), "augment": cfg.train.augment,
        "crop": cfg.train.crop,
        "corruptions": tuple(cfg.inpaint.kinds), "max_pixels": cfg.data.max_pixels,
        "manifest": None if manifest is None else str(manifest), "splits": None if splits is None else str(splits),
        "fold": fold,
    }
    return ActorPool(resources, categories, episode_args, partial(build_model, config_from_dict(tree)), step_spec(cfg))
