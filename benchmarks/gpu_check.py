"""The prepared GPU run (docs/benchmarks.md, "On a GPU"): CPU/CUDA parity, speed on CUDA, the leave-one-out
protocol at the full profile's training budget, and the video protocol on CUDA.

    python -m benchmarks.gpu_check prepare --out .devdata          # here: real data at 64 px, small enough to carry
    python -m benchmarks.gpu_check run --data .devdata --out OUT   # on the GPU machine

`prepare` decodes every image and mask of fsad-real and fsad-video with the project's own reader at the
evaluation size and writes them losslessly (PNG bytes under the original names), so the GPU run sees exactly
the tensors a CPU run at that size sees. The folder is a scratch copy for one run, never committed.
`run` writes OUT/gpu.json and OUT/gpu.md; each part is time-boxed by --budget-s and skipped, with a note,
when the budget is spent.
"""
from __future__ import annotations

import argparse
import copy
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
TARGETS = ("juice_bottle", "tire", "kolektor", "magnetic_tile")


# ---------------------------------------------------------------------------------------------
# prepare (on the CPU machine)


def _write_png(arr: np.ndarray, path: Path) -> None:
    if arr.dtype != np.uint8:  # float grey in [0, 1]
        arr = np.round(np.clip(arr, 0, 1) * 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="PNG")  # PIL reads by content, so the original suffix may stay


def prepare(out: Path, size: int) -> dict:
    from workers.data.images import decode_image, decode_mask

    if out.exists():
        shutil.rmtree(out)
    counts = {"images": 0, "masks": 0, "labels": 0}
    for name in ("fsad-real", "fsad-video"):
        src = SHARED / name
        for path in sorted(src.rglob("*")):
            rel = path.relative_to(src)
            dst = out / name / rel
            if path.is_dir() or path.name.startswith("."):
                continue
            suffix = path.suffix.lower()
            if suffix == ".txt" and "test_labels" in rel.parts:
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, dst)
                counts["labels"] += 1
            elif suffix in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"):
                is_mask = "ground_truth" in rel.parts or "test_masks" in rel.parts
                if is_mask:
                    arr, _ = decode_mask(path, size)
                    _write_png(arr * 255, dst)
                else:
                    arr, _ = decode_image(path, size)
                    _write_png(arr, dst)
                counts["masks" if is_mask else "images"] += 1
    return counts


# ---------------------------------------------------------------------------------------------
# run (on the GPU machine)


def parity(data: Path, device: str) -> dict:
    """The same weights and images on CPU and CUDA: scores, maps and one training loss agree to float32 rounding."""
    from orchestrator.tracking.artifacts import build_model
    from orchestrator.config import load_config, parse_overrides
    from orchestrator.evaluation.evaluate import load_test_set
    from orchestrator.training.inputs import load_normals
    from orchestrator.training.learner import episode_step
    from workers.episodes import EpisodeSampler

    cfg = load_config()
    torch.manual_seed(0)
    cpu = build_model(cfg).eval()
    gpu = copy.deepcopy(cpu).to(device).eval()
    test = load_test_set(data, "tire", cfg.data.image_size)
    support, images = test.support_pool[:10], test.images[:32]
    out = {}
    d_cpu, d_gpu = cpu.build_dictionary(support), gpu.build_dictionary(support.to(device))
    s_cpu, m_cpu = cpu.score_and_map(images, d_cpu, cfg.model.map_smooth_sigma, cfg.model.anomaly_map)
    s_gpu, m_gpu = gpu.score_and_map(images.to(device), d_gpu, cfg.model.map_smooth_sigma, cfg.model.anomaly_map)
    out["score_max_rel_diff"] = float((s_cpu - s_gpu.cpu()).abs().max() / s_cpu.abs().max())
    out["map_max_rel_diff"] = float((m_cpu - m_gpu.cpu()).abs().max() / m_cpu.abs().max())
    out["score_rank_agreement"] = float((s_cpu.argsort() == s_gpu.cpu().argsort()).float().mean())
    # one training episode: the same episode, Langevin noise off, so only arithmetic differs
    cfg_quiet = load_config(None, parse_overrides(["langevin.noise_scale=1e-12"]))
    normals = load_normals(data, ["juice_bottle", "kolektor"], cfg.data.image_size)
    episode = EpisodeSampler(normals, 5, 4, seed=0).sample()
    cpu.train(), gpu.train()
    l_cpu = episode_step(cpu, episode, cfg_quiet, torch.Generator().manual_seed(0), torch.device("cpu")).loss
    l_gpu = episode_step(gpu, episode, cfg_quiet, torch.Generator(device=device).manual_seed(0),
                         torch.device(device)).loss
    out["train_loss_cpu"], out["train_loss_cuda"] = float(l_cpu), float(l_gpu)
    out["train_loss_rel_diff"] = abs(float(l_cpu) - float(l_gpu)) / max(abs(float(l_cpu)), 1e-12)
    return out


def full_budget_loo(data: Path, work: Path, episodes: int, deadline: float, log, device: str,
                    targets=TARGETS) -> list[dict]:
    """ours + kNN per held-out target at `episodes` episodes on CUDA; K = 1, 5, 10, 5 seeded draws each."""
    from orchestrator.config import load_config, parse_overrides
    from orchestrator.evaluation.evaluate import evaluate
    from orchestrator.training.loop import train

    rows = []
    for target in targets:
        if time.monotonic() > deadline:
            log(f"budget spent: {target} not run")
            rows.append({"target": target, "skipped": "time budget spent"})
            continue
        cfg = load_config(None, parse_overrides([f"train.device={device}", f"train.episodes={episodes}", f"data.exclude=[{target}]",
                                 "train.checkpoint_every=100000"]))
        t0 = time.perf_counter()
        summary = train(cfg, data, work / target, progress=False)
        row = {"target": target, "episodes": episodes, "train_s": time.perf_counter() - t0,
               "final_loss": summary["final"]["loss"]}
        for method in ("ours", "knn"):
            for k in (1, 5, 10):
                t1 = time.perf_counter()
                rec = evaluate(work / target, data, target, k, 5, work / f"{target}_eval" / method / f"K{k}",
                               method=method, progress=False, overlays=0)
                row[f"{method}_K{k}"] = {n: rec[n]["mean"] if rec[n] else None
                                         for n in ("image_auroc", "pixel_auroc", "pro", "miou")}
                row[f"{method}_K{k}"]["eval_s"] = time.perf_counter() - t1
        rows.append(row)
        log(f"{target}: {episodes} episodes in {row['train_s']:.0f} s; ours K10 {row['ours_K10']}")
    return rows


def video(data: Path, work: Path, episodes: int, device: str, every: int) -> dict:
    from orchestrator.config import load_config, parse_overrides
    from orchestrator.evaluation.video import run_video

    cfg = load_config(None, parse_overrides([f"train.device={device}", f"train.episodes={episodes}", "train.checkpoint_every=100000",
                             f"experiments.video_root={data / 'fsad-video'}", f"experiments.video_test_every={every}"]))
    t0 = time.perf_counter()
    record = run_video(cfg, "ucsd_ped2", work / "video_ped2", image_source=data / "fsad-real")
    return {"scene": "ucsd_ped2", "episodes": episodes, "seconds": time.perf_counter() - t0,
            "frame_auroc": {k: v["frame_auroc"] for k, v in record["shots"].items()}}


def run(data: Path, out: Path, budget_s: float, episodes: int, device: str = "cuda", video_every: int = 2,
        targets=TARGETS, skip_video: bool = False) -> dict:
    from benchmarks.run import machine, speed

    began = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    work = Path("/tmp/fsad_gpu_work")
    shutil.rmtree(work, ignore_errors=True)
    lines: list[str] = []

    def log(message: str) -> None:
        print(message, flush=True)
        lines.append(message)

    result: dict = {"machine": machine(), "episodes": episodes, "device": device,
                    "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None}
    real = data / "fsad-real"
    result["parity"] = parity(real, device)
    log(f"parity: {result['parity']}")
    result["speed"] = speed(real, torch.device(device))
    log(f"speed: {result['speed']}")
    deadline = began + budget_s
    if not skip_video:
        result["video"] = video(data, work, min(episodes, 300), device, video_every)
        log(f"video: {result['video']}")
    result["loo"] = full_budget_loo(real, work, episodes, deadline, log, device, targets)
    result["seconds"] = time.monotonic() - began
    (out / "gpu.json").write_text(json.dumps(result, indent=2))
    (out / "gpu.log").write_text("\n".join(lines) + "\n")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--out", default=".devdata")
    p.add_argument("--size", type=int, default=64)
    r = sub.add_parser("run")
    r.add_argument("--data", default=".devdata")
    r.add_argument("--out", required=True)
    r.add_argument("--budget-s", type=float, default=360.0)
    r.add_argument("--episodes", type=int, default=1000)
    r.add_argument("--targets", default=",".join(TARGETS), help="held-out targets, in order")
    r.add_argument("--skip-video", action="store_true")
    r.add_argument("--video-every", type=int, default=2, help="score every n-th test frame")
    r.add_argument("--device", default="cuda", help="cuda on the GPU machine; cpu for a smoke test here")
    args = parser.parse_args(argv)
    if args.verb == "prepare":
        print(prepare(Path(args.out), args.size))
    else:
        run(Path(args.data), Path(args.out), args.budget_s, args.episodes, args.device, args.video_every,
            tuple(args.targets.split(",")), args.skip_video)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
