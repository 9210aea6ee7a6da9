"""The prepared GPU run (docs/benchmarks.md, "On a GPU"): CPU/CUDA parity, speed on CUDA, and the leave-one-out
protocol at the full profile (stride-2 features, up to 1000 episodes, the checkpoint chosen on the validation
categories) against the no-learning and no-support baselines: the question the CPU budget cannot answer (docs/
benchmarks.md, "Six more levers", 4). Optionally the video protocol too.

    python -m benchmarks.gpu_check prepare --out .devdata          # here: fsad-real + fsad-extra at 128 px
    python -m benchmarks.gpu_check run --data .devdata --out OUT   # on the GPU machine

`prepare` decodes every image and mask of fsad-real and fsad-extra (with --video, fsad-video too) with the
project's own reader at the evaluation size into one scratch folder for one run, never committed (`.devdata` is
git-ignored; name it in the device tool's carry). `run` first measures the training rate on the device (6
episodes), then gives each target the episodes that fit its share of --budget-s (at most --episodes), evaluates
ours at K = 1 and 10 and the baselines at K = 10, and writes OUT/gpu.json and OUT/gpu.log after every part, so a
run stopped at its limit still returns what it measured. A smoke test on the CPU: `run --device cpu --episodes 2
--draws 1 --targets tire --skip-speed --set model.backbone.stride=4`.
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


def _write(arr: np.ndarray, path: Path, lossless: bool) -> None:
    if arr.dtype != np.uint8:  # float grey in [0, 1]
        arr = np.round(np.clip(arr, 0, 1) * 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    # PIL reads by content, so the original suffix may stay
    if lossless:
        Image.fromarray(arr).save(path, format="PNG")
    else:
        Image.fromarray(arr).save(path, format="JPEG", quality=JPEG_QUALITY)


JPEG_QUALITY = 95
SOURCES = {"fsad-real": "images", "fsad-extra": "images", "fsad-video": "fsad-video"}


def prepare(out: Path, size: int, video: bool = False, lossless: bool = False) -> dict:
    """Decode the categories of fsad-real and fsad-extra (and with `video` the scenes of fsad-video) at `size` px
    with the project's reader into out/images/<category> (out/fsad-video). Images are re-encoded as JPEG
    (quality 95) unless `lossless`: at 128 px the PNGs of all six categories exceed the 64 MiB that travels to the
    device machine; the GPU run's baselines see the same images as its model, so its comparisons stay paired.
    Masks are always PNG."""
    from workers.data.images import decode_image, decode_mask

    if out.exists():
        shutil.rmtree(out)
    counts = {"images": 0, "masks": 0, "labels": 0}
    for name, folder in SOURCES.items():
        if name == "fsad-video" and not video:
            continue
        src = SHARED / name
        for path in sorted(src.rglob("*")):
            rel = path.relative_to(src)
            dst = out / folder / rel
            if path.is_dir() or path.name.startswith(".") or (folder == "images" and len(rel.parts) == 1):
                continue  # a README beside the categories is not a category's file
            suffix = path.suffix.lower()
            if suffix == ".txt" and "test_labels" in rel.parts:
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, dst)
                counts["labels"] += 1
            elif suffix in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"):
                is_mask = "ground_truth" in rel.parts or "test_masks" in rel.parts
                if is_mask:
                    arr, _ = decode_mask(path, size)
                    _write(arr * 255, dst, lossless=True)
                else:
                    arr, _ = decode_image(path, size)
                    _write(arr, dst, lossless=lossless)
                counts["masks" if is_mask else "images"] += 1
    counts["bytes"] = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
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
    out["train_loss_cpu"], out["train_loss_cuda"] = float(l_cpu.detach()), float(l_gpu.detach())
    out["train_loss_rel_diff"] = abs(out["train_loss_cpu"] - out["train_loss_cuda"]) / max(abs(out["train_loss_cpu"]), 1e-12)
    return out


VALIDATION = ("pcb_deeppcb", "screw")  # the DVC pipeline's pipeline.val_categories
BASELINES = ("untrained", "knn", "knn_untrained", "nosupport")


def episode_rate(cfg, data: Path, work: Path, log) -> float:
    """Episodes per second of the full profile's training on this device, from a 6-episode run (no validation)."""
    from orchestrator.config import with_values
    from orchestrator.training.loop import train

    quick = with_values(cfg, {"train.episodes": 6, "train.val_categories": [], "train.checkpoint_every": 100000})
    t0 = time.perf_counter()
    train(quick, data, work / "rate", progress=False)
    rate = 6 / (time.perf_counter() - t0)
    log(f"training rate: {rate:.2f} episodes/s (6 episodes, warm-up included)")
    return rate


def full_budget_loo(data: Path, work: Path, episodes: int, deadline: float, log, device: str,
                    targets=TARGETS, overrides: tuple[str, ...] = (), draws: int = 5,
                    rows: list[dict] | None = None) -> list[dict]:
    """Per held-out target: ours trained at the full profile (stride 2; `episodes`, cut to what the time left
    allows), its checkpoint chosen on the validation categories, against the no-learning and no-support
    baselines; ours at K = 1 and 10, the baselines at K = 10; `draws` seeded draws each. Each target's row is
    appended to `rows` (the caller's result, which `log` writes out) before its line is logged."""
    from orchestrator.config import load_config, parse_overrides, with_values
    from orchestrator.evaluation.evaluate import evaluate
    from orchestrator.training.loop import train

    base = load_config(REPO / "params.yaml", parse_overrides(["experiments.profile=full", f"train.device={device}",
                                                            "train.checkpoint_every=100000", *overrides]))
    rate = episode_rate(with_values(base, {"data.exclude": [targets[0]]}), data, work, log)
    rows = [] if rows is None else rows
    for index, target in enumerate(targets):
        left = deadline - time.monotonic()
        # a target's evaluation took about a fifth of its training in the quick profile; keep room for it
        fit = int(rate * left / len(targets[index:]) * 0.75)
        if fit < 10:
            rows.append({"target": target, "skipped": "time budget spent"})
            log(f"budget spent: {target} not run")
            continue
        n = min(episodes, fit)
        val = [c for c in VALIDATION if c != target]
        cfg = with_values(base, {"data.exclude": [target], "train.episodes": n, "train.val_categories": val,
                                    "train.val_every": max(1, n // 5)})
        t0 = time.perf_counter()
        train(cfg, data, work / target, progress=False)
        meta = json.loads((work / target / "meta.json").read_text())
        row = {"target": target, "episodes": n, "train_s": time.perf_counter() - t0,
               "selected_episode": meta.get("selection", {}).get("best_episode"),
               "validation": meta.get("selection", {}).get("history")}
        for method, k in [("ours", 1), ("ours", 10)] + [(b, 10) for b in BASELINES]:
            t1 = time.perf_counter()
            rec = evaluate(work / target, data, target, k, draws, work / f"{target}_eval" / method / f"K{k}",
                           method=method, progress=False, overlays=0, calibrate=False)
            row[f"{method}_K{k}"] = {m: rec[m]["mean"] if rec[m] else None
                                     for m in ("image_auroc", "pixel_auroc", "pro", "miou")}
            row[f"{method}_K{k}"]["eval_s"] = time.perf_counter() - t1
        rows.append(row)
        log(f"{target}: {n} episodes in {row['train_s']:.0f} s, selected episode {row['selected_episode']}; K = 10 "
            + "; ".join(f"{m} {row[f'{m}_K10']['image_auroc']:.3f} / {row[f'{m}_K10']['pixel_auroc']:.3f}"
                        for m in ("ours", *BASELINES)))
    return rows


def video(data: Path, work: Path, episodes: int, device: str, every: int) -> dict:
    from orchestrator.config import load_config, parse_overrides
    from orchestrator.evaluation.video import run_video

    cfg = load_config(None, parse_overrides([f"train.device={device}", f"train.episodes={episodes}", "train.checkpoint_every=100000",
                             f"experiments.video_root={data / 'fsad-video'}", f"experiments.video_test_every={every}"]))
    t0 = time.perf_counter()
    record = run_video(cfg, "ucsd_ped2", work / "video_ped2", image_source=data / "images")
    return {"scene": "ucsd_ped2", "episodes": episodes, "seconds": time.perf_counter() - t0,
            "frame_auroc": {k: v["frame_auroc"] for k, v in record["shots"].items()}}


def run(data: Path, out: Path, budget_s: float, episodes: int, device: str = "cuda", video_every: int = 2,
        targets=TARGETS, with_video: bool = False, overrides: tuple[str, ...] = (), draws: int = 5,
        skip_speed: bool = False) -> dict:
    from benchmarks.run import machine, speed

    began = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    work = Path("/tmp/fsad_gpu_work")
    shutil.rmtree(work, ignore_errors=True)
    lines: list[str] = []
    result: dict = {"machine": machine(), "episodes": episodes, "device": device, "overrides": list(overrides),
                    "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None}

    def log(message: str) -> None:
        print(message, flush=True)
        lines.append(message)
        # written after every part, so a run stopped at its time limit still leaves what it measured
        (out / "gpu.json").write_text(json.dumps(result, indent=2))
        (out / "gpu.log").write_text("\n".join(lines) + "\n")

    images = data / "images"
    deadline = began + budget_s
    result["parity"] = parity(images, device)
    log(f"parity: {result['parity']}")
    if not skip_speed:
        result["speed"] = speed(images, torch.device(device))
        log(f"speed: {result['speed']}")
    result["loo"] = []
    full_budget_loo(images, work, episodes, deadline, log, device, targets, overrides, draws, rows=result["loo"])
    if with_video:
        result["video"] = video(data, work, min(episodes, 300), device, video_every)
        log(f"video: {result['video']}")
    result["seconds"] = time.monotonic() - began
    log(f"done in {result['seconds']:.0f} s")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--out", default=".devdata")
    p.add_argument("--size", type=int, default=128, help="decode size (the defaults' data.image_size)")
    p.add_argument("--video", action="store_true", help="also the scenes of fsad-video")
    p.add_argument("--lossless", action="store_true", help="PNG images (too large to travel at 128 px)")
    r = sub.add_parser("run")
    r.add_argument("--data", default=".devdata")
    r.add_argument("--out", required=True)
    r.add_argument("--budget-s", type=float, default=420.0, help="seconds for the leave-one-out part, all targets")
    r.add_argument("--episodes", type=int, default=1000, help="at most this many per target (the full profile's)")
    r.add_argument("--targets", default=",".join(TARGETS), help="held-out targets, in order")
    r.add_argument("--draws", type=int, default=5)
    r.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides on the full profile")
    r.add_argument("--video", action="store_true", help="also UCSD Ped2 (data prepared with --video)")
    r.add_argument("--skip-speed", action="store_true")
    r.add_argument("--video-every", type=int, default=2, help="score every n-th test frame")
    r.add_argument("--device", default="cuda", help="cuda on the GPU machine; cpu for a smoke test here")
    args = parser.parse_args(argv)
    if args.verb == "prepare":
        print(prepare(Path(args.out), args.size, args.video, args.lossless))
    else:
        run(Path(args.data), Path(args.out), args.budget_s, args.episodes, args.device, args.video_every,
            tuple(args.targets.split(",")), args.video, tuple(args.set), args.draws, args.skip_speed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
