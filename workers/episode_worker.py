"""Episode worker: loads its shard of training categories, assembles and corrupts episodes on request.

A plain class; workers/pool.py makes it a Ray actor. Its images come from a folder or a manifest (with a
splits file: one fold's training rows), as the in-process run's do. Episodes are a pure function of
(category, seed): the learner draws both per episode index, so a retried or resumed episode is
bit-identical to the original whichever worker serves it. Images are loaded lazily (first `load` or
`sample`), so an actor that Ray restarts after a crash reloads its shard by itself.
"""
from __future__ import annotations

import torch

from model.errors import InputError
from workers.data.images import set_max_pixels
from workers.episodes import Episode, EpisodeSampler
from workers.data.sources import open_source


class EpisodeWorker:
    def __init__(
        self,
        root: str | None,
        categories: list[str],
        image_size: int,
        shots: int,
        queries: int,
        patch_frac: tuple[float, float] = (0.1, 0.3),
        augment: str = "episode",
        corruptions: tuple[str, ...] = ("noise",),
        max_pixels: int | None = None,
        manifest: str | None = None,
        splits: str | None = None,
        fold: str | None = None,
        crop: int = 0,
    ):
        if max_pixels is not None:  # this actor's process decodes the images: the config's limit applies here
            set_max_pixels(max_pixels)
        if not categories:
            raise InputError("an episode worker needs at least one category")
        self.root = None if root is None else str(root)  # None: the manifest's own image root
        self.categories, self.image_size = list(categories), image_size
        self.shots, self.queries, self.patch_frac, self.augment = shots, queries, tuple(patch_frac), augment
        self.crop = crop
        self.corruptions = tuple(corruptions)  # donors come from the same category (one sampler each)
        self.manifest, self.splits, self.fold = manifest, splits, fold
        self._samplers: dict[str, EpisodeSampler] | None = None

    def load(self) -> dict[str, int]:
        """Decode the shard's train/good images; -> {category: number of normal images}."""
        if self._samplers is None:
            samplers, counts = {}, {}
            source = open_source(self.root, self.manifest, self.splits, fold=self.fold)
            for category in self.categories:
                items = source.load(category, self.image_size, split="train")
                images = torch.stack([item.image for item in items])  # (N, 3, S, S)
                counts[category] = images.shape[0]
                # One sampler per category: the learner, not the worker, picks the task's category.
                samplers[category] = EpisodeSampler(
                    {category: images}, self.shots, self.queries, self.patch_frac, self.augment, seed=0,
                    corruptions=self.corruptions, crop=self.crop,
                )
            self._samplers = samplers
            self._counts = counts
        return dict(self._counts)

    def sample(self, category: str, seed: int) -> Episode:
        """The episode of `category` determined by `seed` (support, queries, corrupted queries)."""
        self.load()
        if category not in self._samplers:
            raise InputError(f"category {category!r} is not in this episode worker's shard {self.categories}")
        sampler = self._samplers[category]
        sampler.set_state(torch.Generator().manual_seed(int(seed)).get_state())
        return sampler.sample()
