"""Episode sampler (Alg. 1 lines 5-6): one task = one training category; K support + M query normals,
queries corrupted with a noise patch (learning by inpainting), seeded for reproducibility.

Augmentation (Section 4.1: flips and 90° rotations) is applied per episode by default: the whole task
(support and queries alike) gets one random dihedral transform, which turns 3 training categories into
up to 24 distinct tasks without making an upright query look anomalous against a rotated support. With
`augment="image"` every image draws its own transform (for rotation-invariant textures).

`crop`: every task is cut to one random S' × S' window (support, queries and their defects alike), so that
the network trains at the pixel scale it is evaluated at, on a fraction of the pixels (train.crop); images no
larger than the window are used whole.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from model.augment import dihedral
from model.errors import InputError
from model.ebm.inpaint import corrupt, noise_patch

AUGMENT_MODES = ("none", "episode", "image")
MIN_CROP = 16  # four feature cells a side at Ψ's output stride 4


def crop_applies(crop: int, size: tuple[int, ...] | torch.Size | int) -> bool:
    """Whether train.crop = `crop` cuts images of `size` ((H, W) or one side): a crop of 0 means whole images,
    and images no larger than the crop are used whole (no window is drawn)."""
    sides = (size,) if isinstance(size, int) else tuple(size)
    return 0 < crop < min(sides)


@dataclass
class Episode:
    category: str
    support: torch.Tensor  # (K, C, S, S) normal images, the task dictionary's source
    queries: torch.Tensor  # (M, C, S, S) normal images (positives)
    corrupted: torch.Tensor  # (M, C, S, S) queries with a noise patch (Langevin starts)
    patch_mask: torch.Tensor  # (M, S, S) bool, where the noise patch is
    support_index: list[int]  # indices into the category's normal images
    query_index: list[int]
    anomalous: torch.Tensor | None = None  # (A, C, S, S) real defects of the category (train.objective=defects)
    anomalous_masks: torch.Tensor | None = None  # (A, S, S) bool


class EpisodeSampler:
    """Draws episodes from {category: normal images (N, C, S, S)}; held-out categories never enter."""

    def __init__(
        self,
        normals: dict[str, torch.Tensor],
        shots: int,
        queries: int,
        patch_frac: tuple[float, float] = (0.1, 0.3),
        augment: str = "episode",
        seed: int = 0,
        exclude: tuple[str, ...] = (),
        corruptions: tuple[str, ...] = ("noise",),
        defects: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
        crop: int = 0,
    ):
        if shots < 1:
            raise InputError(f"train.shots={shots}: expected K >= 1")
        if queries < 1:
            raise InputError(f"train.queries={queries}: expected M >= 1")
        if augment not in AUGMENT_MODES:
            raise InputError(f"train.augment={augment!r}: expected one of {AUGMENT_MODES}")
        self.normals = {c: x for c, x in normals.items() if c not in set(exclude)}
        if crop != 0 and crop < MIN_CROP:
            raise InputError(f"train.crop={crop}: expected 0 (whole images) or a side >= {MIN_CROP}")
        self.crop = crop
        if not self.normals:
            raise InputError("no training categories left after excluding the held-out ones")
        for category, images in self.normals.items():
            if images.shape[0] < shots + queries:
                raise InputError(
                    f"category {category!r} has {images.shape[0]} normal images; an episode needs "
                    f"K + M = {shots + queries}"
                )
        self.categories = sorted(self.normals)
        # {category: (anomalous images (N, C, S, S), masks (N, S, S))}: M of them join every episode
        self.defects = defects
        if defects is not None:
            for category in self.categories:
                if category not in defects or defects[category][0].shape[0] < 1:
                    raise InputError(f"train.objective=defects: training category {category!r} has no anomalous "
                                     "test image with a non-empty mask; expected at least one")
        self.shots, self.queries = shots, queries
        self.patch_frac = patch_frac
        self.augment = augment
        self.corruptions = tuple(corruptions)
        self.generator = torch.Generator().manual_seed(seed)

    def _donors(self, category: str) -> torch.Tensor:
        """Normal images of another training category (the foreign structure of cut-paste and blend), or of
        the same category when it is the only one."""
        others = [c for c in self.categories if c != category] or [category]
        return self.normals[others[int(torch.randint(len(others), (1,), generator=self.generator))]]

    def get_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)

    def sample(self) -> Episode:
        g = self.generator
        category = self.categories[int(torch.randint(len(self.categories), (1,), generator=g))]
        images = self.normals[category]
        order = torch.randperm(images.shape[0], generator=g)[: self.shots + self.queries].tolist()
        support_index, query_index = order[: self.shots], order[self.shots :]
        support, queries = images[support_index], images[query_index]
        if self.augment == "episode":
            t = int(torch.randint(8, (1,), generator=g))
            support, queries = dihedral(support, t), dihedral(queries, t)
        elif self.augment == "image":
            ts = torch.randint(8, (self.shots + self.queries,), generator=g).tolist()
            support = torch.stack([dihedral(x, t) for x, t in zip(support, ts[: self.shots])])
            queries = torch.stack([dihedral(x, t) for x, t in zip(queries, ts[self.shots :])])
        window = self._window(support.shape[-2:])
        support, queries = self._cut(support, window), self._cut(queries, window)
        if self.corruptions == ("noise",):  # the paper's start; keeps the seeded stream of earlier releases
            corrupted, patch_mask = noise_patch(queries, *self.patch_frac, generator=g)
        else:
            donors = self._donors(category)
            if window is not None:  # foreign patches from anywhere in a donor, at the queries' size
                # a view: corrupt reads M of the category's N donors, so none of them is copied here
                donors = self._cut(donors, self._window(donors.shape[-2:]), copy=False)
            corrupted, patch_mask = corrupt(queries, self.corruptions, *self.patch_frac, generator=g,
                                            donors=donors)
        episode = Episode(category, support, queries, corrupted, patch_mask, support_index, query_index)
        if self.defects is not None:  # drawn last: the stream of earlier draws is that of a run without defects
            transform = t if self.augment == "episode" else None
            anomalous, masks = self._defects(category, transform)
            episode.anomalous, episode.anomalous_masks = self._cut(anomalous, window), self._cut(masks, window)
        return episode

    def _window(self, size: torch.Size) -> tuple[int, int] | None:
        """The task's crop: its top-left corner (row, column), drawn uniformly; None without train.crop or when
        the images are no larger than the crop (no draw: the seeded stream is that of a run without cropping)."""
        if not crop_applies(self.crop, size):
            return None
        g = self.generator
        top = int(torch.randint(size[0] - self.crop + 1, (1,), generator=g))
        left = int(torch.randint(size[1] - self.crop + 1, (1,), generator=g))
        return top, left

    def _cut(self, images: torch.Tensor, window: tuple[int, int] | None, copy: bool = True) -> torch.Tensor:
        """The window of every image; copy=False returns a view (an episode's own tensors are copies, so that
        shipping one to a Ray learner does not carry the uncropped images' storage)."""
        if window is None:
            return images
        top, left = window
        cut = images[..., top : top + self.crop, left : left + self.crop]  # (..., S, S) -> (..., S', S')
        return cut.contiguous() if copy else cut

    def _defects(self, category: str, transform: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """M anomalous images of the category and their masks (A, C, S, S), (A, S, S), drawn with replacement.
        `transform`: the episode's dihedral transform; None under augment none or image."""
        g = self.generator
        images, masks = self.defects[category]
        pick = torch.randint(images.shape[0], (self.queries,), generator=g).tolist()
        images, masks = images[pick], masks[pick]
        if transform is not None:
            images, masks = dihedral(images, transform), dihedral(masks, transform)
        elif self.augment == "image":
            ts = torch.randint(8, (len(pick),), generator=g).tolist()
            images = torch.stack([dihedral(x, t) for x, t in zip(images, ts)])
            masks = torch.stack([dihedral(m, t) for m, t in zip(masks, ts)])
        return images, masks
