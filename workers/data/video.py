"""Video scenes as few-shot tasks (paper Section 4.2): frames of a scene, an optional motion cue, the
files behind them, and a training source that mixes image categories with scenes.

* **Frames** (`list_scenes`, `load_scene`): a video root holds scene folders

      <scene>/train/<clip>/<frame>.jpg       normal frames
      <scene>/test/<clip>/<frame>.jpg        labels in <scene>/test_labels/<clip>.txt, one 0/1 per frame
      <scene>/test_masks/<clip>/<frame>.png  optional pixel labels

  decoded with workers.data.images' conventions (channels, size, values, limits); frames are ordered by
  the integer in their stem when every stem is numeric, else by name.

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
* **`SceneTaskSource`**: image categories (a `workers.data.sources` source) plus scenes' training frames as
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
from workers.data.folders import check_root, check_split, folder_images, parallel_map, subfolders
from workers.data.images import ImageItem, check_image_size, empty_mask, load_image, load_mask
from workers.data.manifest import sha256_bytes
from workers.data.paths import plain_name
from workers.data.sources import as_source

SCENE_PREFIX = "scene:"
MOTION_GAIN = 4.0
LUMA = (0.299, 0.587, 0.114)

__all__ = ["SCENE_PREFIX", "MOTION_GAIN", "list_scenes", "load_scene", "scene_category", "check_scene", "frame_gap",
           "load_frames", "motion_image", "scene_files", "files_sha256", "SceneTaskSource"]


def list_scenes(root) -> list[str]:
    """Scene folders (those with a train/ or test/ folder) under a video root, sorted by name."""
    root = check_root(root)
    scenes = [p.name for p in subfolders(root) if (p / "train").is_dir() or (p / "test").is_dir()]
    if not scenes:
        raise InputError(f"data root {root} has no scenes; expected folders with <scene>/train/<clip>/ frames")
    return scenes


def _frame_files(clip: Path) -> list[Path]:
    files = folder_images(clip)
    stems = [p.stem for p in files]
    if files and all(s.isdigit() for s in stems):
        return sorted(files, key=lambda p: (int(p.stem), p.name))
    return files


def _read_labels(path: Path, n_frames: int) -> list[int]:
    if not path.is_file():
        raise InputError(f"label file {path} is missing; expected one 0/1 line per test frame")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read label file {path}: {e}; expected a text file of 0/1 lines") from None
    while lines and not lines[-1].strip():
        lines.pop()
    labels = []
    for i, line in enumerate(lines, 1):
        s = line.strip()
        if s not in ("0", "1"):
            raise InputError(f"label file {path} line {i} is {s!r}; expected 0 or 1")
        labels.append(int(s))
    if len(labels) != n_frames:
        raise InputError(
            f"label file {path} has {len(labels)} labels but the clip has {n_frames} frames; expected one per frame"
        )
    return labels


def load_scene(root, scene: str, image_size: int, split: str = "train", every: int = 1,
               clips: Sequence[str] | None = None) -> list[ImageItem]:
    """Load a video scene's frames as ImageItems (clips by name, frames in frame order).

        <scene>/train/<clip>/<frame>.jpg     normal frames (label 0, mask None)
        <scene>/test/<clip>/<frame>.jpg      labels from <scene>/test_labels/<clip>.txt (one 0/1 per frame)
        <scene>/test_masks/<clip>/<frame>.png

    category = scene, defect_type = clip name. every=k keeps every k-th frame of each clip (after the
    label count is validated against all frames). clips, when given, restricts loading to those clips
    (an unknown clip name is an InputError). Test masks: when the scene has a test_masks folder,
    a frame's mask is read from it when present, a normal frame without one gets zeros, and an
    anomalous frame without one is an InputError; without a test_masks folder every mask is None.
    """
    check_image_size(image_size)
    check_split(split)
    if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
        raise InputError(f"every {every!r} is invalid; expected a positive integer")
    root = check_root(root)
    plain_name(scene, "scene")
    folder = root / str(scene)
    if not folder.is_dir():
        avail = ", ".join(p.name for p in subfolders(root) if (p / "train").is_dir() or (p / "test").is_dir())
        raise InputError(f"scene {scene!r} not found under {root}; available: {avail or 'none'}")
    split_dir = folder / split
    if not split_dir.is_dir():
        raise InputError(f"scene folder {folder} has no {split} folder; expected {split_dir}/<clip>/ frames")
    clip_dirs = subfolders(split_dir)
    if clips is not None:
        if isinstance(clips, str):
            clips = [clips]
        known = {c.name for c in clip_dirs}
        missing = [str(c) for c in clips if str(c) not in known]
        if missing:
            raise InputError(f"clip(s) {', '.join(missing)} not found in {split_dir}; "
                             f"available: {', '.join(sorted(known)) or 'none'}")
        wanted = {str(c) for c in clips}
        clip_dirs = [c for c in clip_dirs if c.name in wanted]
    mask_root = folder / "test_masks"
    has_masks = split == "test" and mask_root.is_dir()
    jobs = []
    for clip in clip_dirs:
        frames = _frame_files(clip)
        if split == "test":
            labels = _read_labels(folder / "test_labels" / f"{clip.name}.txt", len(frames))
        else:
            labels = [0] * len(frames)
        jobs += [(f, clip.name, lab) for f, lab in list(zip(frames, labels))[::every]]
    if not jobs:
        raise InputError(f"{split_dir} has no frames; expected {split_dir}/<clip>/<frame>.jpg")

    def item(job) -> ImageItem:
        path, clip, label = job
        image, orig = load_image(path, image_size)
        mask = None
        if has_masks:
            mp = mask_root / clip / f"{path.stem}.png"
            if mp.is_file():
                mask = load_mask(mp, image_size, orig)
            elif label == 0:
                mask = empty_mask(image)
            else:
                raise InputError(f"mask for anomalous frame {path} is missing; expected {mp}")
        return ImageItem(image=image, mask=mask, label=label, category=str(scene), defect_type=clip,
                         path=str(path))

    return parallel_map(item, jobs)


def scene_category(scene: str) -> str:
    """The training-task name of a scene: ``scene:<scene>``."""
    return f"{SCENE_PREFIX}{scene}"


def check_scene(root, scene: str) -> Path:
    """The video root as a Path; InputError naming the available scenes when `scene` is not one."""
    if not Path(root).exists():
        raise InputError(f"video root {root} does not exist; expected a folder of scenes "
                         "(<scene>/train/<clip>/<frame>.jpg), e.g. experiments.video_root")
    root = check_root(root)
    scenes = list_scenes(root)
    if scene not in scenes:
        raise InputError(f"unknown scene {scene!r} under {root}; available: {', '.join(scenes)}")
    return root


def _clips(root: Path, scene: str, split: str) -> list[tuple[str, list[Path]]]:
    """[(clip, frames in frame order)] exactly as load_scene lists them."""
    folder = root / scene / split
    if not folder.is_dir():
        raise InputError(f"scene folder {root / scene} has no {split} folder; expected {folder}/<clip>/ frames")
    return [(clip.name, _frame_files(clip)) for clip in subfolders(folder)]


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
        previous, _ = load_image(prev, image_size)
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

    images: a folder or a workers.data.sources source. Scene frames: every `every`-th training frame of each
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
