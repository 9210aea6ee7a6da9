"""Distributed training pieces without Ray: the worker's loss is the in-process trainer's, a worker's
result applied by the learner is the in-process update, episodes are pure functions of their seeds, and
bad input (--workers 0, max_staleness < 0, unreachable --address) fails fast with one line, exit 2."""
from __future__ import annotations

import copy
import socket
import subprocess
import sys
import time

import pytest
import torch

from model.errors import InputError
from orchestrator.tracking.artifacts import build_model
from orchestrator.cli import main
from orchestrator.config import load_config, parse_overrides
from orchestrator.training.scheduler import episode_plan
from orchestrator.training.learner import Learner, step_spec
from orchestrator.training.cluster import resolve_address
from orchestrator.training.learner import episode_step
from tests.conftest import HELD_OUT, REPO, SMALL_CATEGORIES, TINY, tiny_sets
from workers.episode_worker import EpisodeWorker
from model.objective import episode_loss
from workers.langevin_worker import LangevinWorker

TRAINED_ON = sorted(c for c in SMALL_CATEGORIES if c != HELD_OUT)


def tiny_config(*extra: str):
    return load_config(None, parse_overrides([f"{k}={v}" for k, v in TINY.items()] + list(extra)))


def in_process_update(model, episode, cfg, seed):
    """the in-process update (orchestrator/training/learner.py): episode_step, backward, clip, one Adam step (fresh Adam)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    generator = torch.Generator().manual_seed(seed)
    result = episode_step(model, episode, cfg, generator, torch.device("cpu"))
    optimizer.zero_grad(set_to_none=True)
    result.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
    optimizer.step()
    return result.stats


@pytest.fixture(scope="module")
def shard(small_real_root):
    cfg = tiny_config()
    return EpisodeWorker(str(small_real_root), TRAINED_ON, cfg.data.image_size, cfg.train.shots, cfg.train.queries)


def test_episode_worker_is_a_pure_function_of_category_and_seed(shard):
    a, b = shard.sample(TRAINED_ON[0], 7), shard.sample(TRAINED_ON[0], 7)
    assert torch.equal(a.support, b.support) and torch.equal(a.corrupted, b.corrupted)
    c = shard.sample(TRAINED_ON[0], 8)
    assert not torch.equal(a.corrupted, c.corrupted)
    assert shard.load() == {c: 12 for c in TRAINED_ON}
    with pytest.raises(InputError, match="not in this episode worker's shard"):
        shard.sample(HELD_OUT, 0)


def test_episode_plan_is_pure_and_covers_the_categories():
    plans = [episode_plan(3, i, TRAINED_ON) for i in range(40)]
    assert plans == [episode_plan(3, i, TRAINED_ON) for i in range(40)]
    assert {p[0] for p in plans} == set(TRAINED_ON)
    assert len({p[1] for p in plans}) == 40 and plans != [episode_plan(4, i, TRAINED_ON) for i in range(40)]


def test_worker_loss_is_the_in_process_episode_step(shard):
    cfg = tiny_config()
    torch.manual_seed(0)
    model = build_model(cfg)
    episode = shard.sample(TRAINED_ON[1], 11)
    ref = episode_step(model, episode, cfg, torch.Generator().manual_seed(5), torch.device("cpu"))
    got = episode_loss(model, episode, step_spec(cfg), torch.Generator().manual_seed(5), torch.device("cpu"))
    assert ref.stats == got.stats
    g_ref = torch.autograd.grad(ref.loss, list(model.parameters()), allow_unused=True)
    g_got = torch.autograd.grad(got.loss, list(model.parameters()), allow_unused=True)
    for a, b in zip(g_ref, g_got):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


@pytest.mark.parametrize("detach", [False, True])
def test_worker_result_applied_by_learner_equals_in_process_update(shard, detach):
    """Synchronous mode's update rule without Ray: same episode, same weights, same Langevin seed."""
    cfg = tiny_config(f"train.detach_rec={str(detach).lower()}")
    torch.manual_seed(0)
    reference = build_model(cfg)
    learner = Learner(copy.deepcopy(reference), cfg.train.lr, cfg.train.grad_clip, step_spec(cfg))
    worker = LangevinWorker(lambda: build_model(cfg), step_spec(cfg), worker_id=0)
    worker.set_weights(learner.packet())
    episode = shard.sample(TRAINED_ON[0], 3)
    stats_ref = in_process_update(reference, episode, cfg, seed=9)
    result = worker.run(episode, 0, seed=9)
    assert result.version == 0 and (result.grads is None) == detach and (result.negatives is None) == (not detach)
    stats = learner.apply(result, episode)
    assert learner.version == 1
    assert stats["loss"] == pytest.approx(stats_ref["loss"], abs=1e-6)
    for (name, a), b in zip(reference.state_dict().items(), learner.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=name)
    moved = sum(float((a - b).detach().abs().sum()) for a, b in zip(reference.parameters(), build_model(cfg).parameters()))
    assert moved > 0


def test_worker_needs_weights_first(shard):
    cfg = tiny_config()
    worker = LangevinWorker(lambda: build_model(cfg), step_spec(cfg))
    with pytest.raises(InputError, match="set_weights"):
        worker.run(shard.sample(TRAINED_ON[0], 0), 0, 0)


# --------------------------------------------------------------------------------------------------
# Bad input


def fsad(*args, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def one_error_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fsad: error: "), lines
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("args, needles", [
    (["--workers", "0"], ["--workers 0", ">= 1"]),
    (["--workers", "2", "--set", "distributed.max_staleness=-1"], ["distributed.max_staleness=-1", ">= 0"]),
    (["--workers", "2", "--set", "distributed.mode=lockstep"], ["distributed.mode='lockstep'"]),
    (["--workers", "1", "--method", "maml_ae"], ["supports ours only"]),
    (["--address", "http://127.0.0.1:8265"], ["dashboard URL"]),
    (["--address", "not-an-address"], ["expected auto, HOST:PORT"]),
])
def test_bad_distributed_input_is_one_line_exit_2(small_real_root, tmp_path, capsys, args, needles):
    capsys.readouterr()
    code = main(["train", "--data", str(small_real_root), "--out", str(tmp_path / "m"), "--quiet", "--no-track",
                 *tiny_sets(), *args])
    one_error_line(subprocess.CompletedProcess([], code, "", capsys.readouterr().err), *needles)
    assert not (tmp_path / "m").exists()


def test_unreachable_address_fails_within_the_timeout(small_real_root, tmp_path):
    port = free_port()  # nothing listens there
    began = time.perf_counter()
    proc = fsad("train", "--data", small_real_root, "--out", tmp_path / "m", "--quiet", "--no-track",
                "--workers", "1", "--address", f"127.0.0.1:{port}", "--set", "distributed.connect_timeout_s=2",
                *tiny_sets())
    one_error_line(proc, f"--address 127.0.0.1:{port}")
    assert time.perf_counter() - began < 30
    # a blackholed address (no answer at all): bounded by connect_timeout_s
    began = time.perf_counter()
    proc = fsad("train", "--data", small_real_root, "--out", tmp_path / "m", "--quiet", "--no-track",
                "--workers", "1", "--address", "10.255.255.1:6379", "--set", "distributed.connect_timeout_s=1",
                *tiny_sets())
    one_error_line(proc, "10.255.255.1:6379")
    assert time.perf_counter() - began < 30


def test_resolve_address():
    assert resolve_address("10.0.0.1:6379") == ("10.0.0.1:6379", ("10.0.0.1", 6379))
    assert resolve_address("ray://head:10001") == ("ray://head:10001", ("head", 10001))
    for bad in ("head", "head:port", "head:0", "ray://head"):
        with pytest.raises(InputError):
            resolve_address(bad)
