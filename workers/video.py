"""Video scenes as few-shot tasks (paper Section 4.2): frames of a scene, an optional motion cue, the
files behind them, and a training source that mixes image categories with scenes.

Frames come from `workers.data.load_scene` (same channels, size, label and mask conventions). On top:

* **Motion cue** (``temporal=True``, paper App. B.4 "simple temporal information"). The network keeps its
  3 input channels, because the image categories trained alongside are RGB. A frame becomes

      (Y_t, Y_t, min(1, MOTION_GAIN · |Y_t − Y_prev|))       Y = ITU-R 601 luma (0.299 R + 0.587 G + 0.114 B)

  i.e. appearance in the first two channels and a frame-difference channel in the third. ``prev`` is the
  frame ``gap`` original frame indices earlier in the same clip, where ``gap`` is the stride of the
  scene's *training* frames (UCSD Ped2 keeps every 3rd training frame, so gap 3; Avenue gap 1): support
  frames (from train/) and test frames then see motion over the same time step. When that frame is not on
  disk the nearest earlier one is used; the first frame of a clip uses the next one (a clip of one frame
  gets zero motion). MOTION_GAIN = 4 maps a walking pedestrian's difference (99th percentile of |ΔY| ≈
  0.10-0.13 at 64 px on both scenes) to ≈ 0.5, the range of the appearance channels. Within a task the
  channel meaning is the same for support, queries and test frames; the dictionary is rebuilt per task,
  so image tasks (RGB) and scene tasks (luma, luma, motion) do not mix.
* **Files used** (`scene_files`): every file a run reads from a scene (frames kept, their predecessors
  with the motion cue, the label files of test clips), for the content hash `files_sha256`.
* **`SceneTaskSource`**: image categories (a `workers.manifest` source) plus scenes' training frames as
  categories named ``scene:<name>``, with the interface training uses: categories(), load(category,
  image_size, split), content_sha256, str().
"""
from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from model.errors import InputError
from workers.data import ImageItem, _check_root, _frame_files, _load_image, _subdirs, list_scenes, load_scene
from workers.manifest import as_source, sha256_bytes

SCENE_PREFIX = "scene:"
MOTION_GAIN = 4.0
LUMA = (0.299, 0.587, 0.114)

__all__ = ["SCENE_PREFIX", "MOTION_GAIN", "scene_category", "check_scene", "frame_gap", "load_frames", "motion_image",
           "scene_files", "files_sha256", "SceneTaskSource"]


def scene_category(scene: str) -> str:
    """The training-task name of a scene: ``scene:<scene>``."""
    return f"{SCENE_PREFIX}{scene}"


def check_scene(root, scene: str) -> Path:
    """The video root as a Path; InputError naming the available scenes when `scene` is not one."""
    if not Path(root).exists():
        raise InputError(f"video root {root} does not exist; expected a folder of scenes "
                         "(<scene>/train/<clip>/<frame>.jpg), e.g. experiments.video_root")
    root = _check_root(root)
    scenes = list_scenes(root)
    if scene not in scenes:
        raise InputError(f"unknown scene {scene!r} under {root}; available: {', '.join(scenes)}")
    return root


def _clips(root: Path, scene: str, split: str) -> list[tuple[str, list[Path]]]:
    """[(clip, frames in frame order)] exactly as load_scene lists them."""
    folder = root / scene / split
    if not folder.is_dir():
        raise InputError(f"scene folder {root / scene} has no {split} folder; expected {folder}/<clip>/ frames")
    return [(clip.name, _frame_files(clip)) for clip in _subdirs(folder)]


def _index(path: Path, position: int, numeric: bool) -> int:
    return int(path.stem) if numeric else position


def frame_gap(root, scene: str) -> int:
    """Stride of the scene's training frames in original frame indices (the smallest step between
    consecutive numbered frames of a train clip; 1 when frames are not numbered)."""
    steps = []
    for _, frames in _clips(Path(root), scene, "train"):
        if len(frames) > 1 and all(p.stem.isdigit() for p in frames):
            idx = np.array([int(p.stem) for p in frames])
            steps.append(int(np.diff(idx).min()))
    return max(1, min(steps)) if steps else 1


def _predecessors(frames: list[Path], gap: int) -> list[Path]:
    """For every frame of a clip, the frame its motion is taken against (see the module docstring)."""
    numeric = all(p.stem.isdigit() for p in frames)
    idx = [_index(p, i, numeric) for i, p in enumerate(frames)]
    out = []
    for i, t in enumerate(idx):
        j = bisect.bisect_right(idx, t - gap, 0, i) - 1  # the last earlier frame at least `gap` back
        if j >= 0:
            out.append(frames[j])
        elif i > 0:
            out.append(frames[i - 1])  # less than `gap` into the clip: the nearest earlier frame
        else:
            out.append(frames[1] if len(frames) > 1 else frames[0])
    return out


def _kept(root: Path, scene: str, split: str, every: int) -> list[tuple[str, Path, Path]]:
    """[(clip, frame, predecessor)] for the frames load_scene(..., every) keeps, in its order."""
    gap = frame_gap(root, scene)
    out = []
    for clip, frames in _clips(root, scene, split):
        prev = _predecessors(frames, gap)
        out += [(clip, f, p) for f, p in list(zip(frames, prev))[::every]]
    return out


def _luma(image: torch.Tensor) -> torch.Tensor:
    """(3, S, S) -> (S, S)."""
    w = torch.tensor(LUMA, dtype=image.dtype).view(3, 1, 1)
    return (image * w).sum(0)


def motion_image(image: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """(3, S, S) frame and its predecessor -> (3, S, S) = (Y, Y, min(1, MOTION_GAIN·|ΔY|))."""
    y = _luma(image)  # (S, S)
    motion = (MOTION_GAIN * (y - _luma(previous)).abs()).clamp(max=1.0)  # (S, S)
    return torch.stack([y, y, motion])


def load_frames(root, scene: str, image_size: int, split: str = "train", every: int = 1,
                temporal: bool = False) -> list[ImageItem]:
    """load_scene(root, scene, image_size, split, every), with the motion cue when `temporal`."""
    items = load_scene(root, scene, image_size, split=split, every=every)
    if not temporal:
        return items
    kept = _kept(Path(root), scene, split, every)
    if [str(f) for _, f, _ in kept] != [it.path for it in items]:  # the two listings must agree
        raise RuntimeError(f"frame listing of {scene}/{split} disagrees with load_scene")
    for it, (_, _, prev) in zip(items, kept):
        previous, _ = _load_image(prev, image_size)
        it.image = motion_image(it.image, previous)
    return items


def scene_files(root, scene: str, split: str, every: int = 1, temporal: bool = False) -> list[Path]:
    """Every file a load_frames call reads for the frames (not the masks): the kept frames, their
    predecessors when `temporal`, and for the test split the clips' label files. Sorted, unique."""
    root = Path(root)
    kept = _kept(root, scene, split, every)
    files = {f for _, f, _ in kept}
    if temporal:
        files |= {p for _, _, p in kept}
    if split == "test":
        files |= {root / scene / "test_labels" / f"{clip}.txt" for clip, _, _ in kept}
    return sorted(files)


def files_sha256(root, files: Sequence[Path]) -> str:
    """sha256 over sorted lines ``<path relative to root>\\t<sha256 of the file>``."""
    root = Path(root)
    lines = sorted(f"{Path(f).relative_to(root).as_posix()}\t{sha256_bytes(Path(f).read_bytes())}" for f in files)
    h = hashlib.sha256(b"fsad-video-files v1\n")
    for line in lines:
        h.update(line.encode() + b"\n")
    return h.hexdigest()


@dataclass
class SceneTaskSource:
    """Image categories plus the training frames of video scenes, one task each (``scene:<name>``).

    images: a folder or a workers.manifest source. Scene frames: every `every`-th training frame of each
    clip, with the motion cue when `temporal`. content_sha256 covers both: the image source's content
    hash and the scene files used (`scene_files`).
    """

    images: object
    video_root: Path
    scenes: list[str]
    every: int = 1
    temporal: bool = False

    def __post_init__(self):
        self.images = as_source(self.images)
        self.video_root = Path(self.video_root)
        for scene in self.scenes:
            check_scene(self.video_root, scene)
        clash = [c for c in self.images.categories() if c.startswith(SCENE_PREFIX)]
        if clash:
            raise InputError(f"image categories {clash} start with {SCENE_PREFIX!r}, the prefix of scene tasks")
        self._hash: str | None = None

    def __str__(self) -> str:
        return f"{self.images} + scenes {', '.join(self.scenes)} of {self.video_root}"

    def categories(self) -> list[str]:
        return list(self.images.categories()) + [scene_category(s) for s in self.scenes]

    def load(self, category: str, image_size: int, split: str = "train") -> list[ImageItem]:
        if not category.startswith(SCENE_PREFIX):
            return self.images.load(category, image_size, split=split)
        scene = category[len(SCENE_PREFIX):]
        if scene not in self.scenes:
            raise InputError(f"scene task {category!r} is not in this source; available: "
                             f"{', '.join(scene_category(s) for s in self.scenes)}")
        items = load_frames(self.video_root, scene, image_size, split, self.every, self.temporal)
        for it in items:
            it.category = category
        return items

    @property
    def content_sha256(self) -> str:
        if self._hash is None:
            h = hashlib.sha256(f"fsad-scene-tasks v1\nimages\t{self.images.content_sha256}\n".encode())
            for scene in self.scenes:
                files = scene_files(self.video_root, scene, "train", self.every, self.temporal)
                h.update(f"{scene_category(scene)}\t{files_sha256(self.video_root, files)}\n".encode())
            self._hash = h.hexdigest()
        return self._hash
