"""workers/episodes.py on real images: held-out categories never sampled, support and queries disjoint,
seeded reproducibility, state round trip, augmentation modes, and too-few-images errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from model.augment import dihedral
from model.errors import InputError
from workers.data.mvtec import load_category
from workers.episodes import AUGMENT_MODES, EpisodeSampler, crop_applies

SIZE = 16
CATEGORIES = ("juice_bottle", "kolektor", "tire")
EXCLUDED = "tire"
K, M = 3, 2


@pytest.fixture(scope="module")
def normals(small_real_root) -> dict[str, torch.Tensor]:
    """{category: train/good images (12, 3, 16, 16)} of three real categories."""
    out = {}
    for category in CATEGORIES:
        items = load_category(small_real_root, category, SIZE, split="train")
        out[category] = torch.stack([item.image for item in items])
    assert all(x.shape[1:] == (3, SIZE, SIZE) for x in out.values())
    # distinct images, so that "which image is this" is well defined in the checks below
    for x in out.values():
        flat = x.flatten(1)
        assert torch.cdist(flat, flat).fill_diagonal_(1.0).min() > 0
    return out


def sampler(normals, augment="none", seed=0, exclude=(EXCLUDED,), shots=K, queries=M, crop=0):
    return EpisodeSampler(normals, shots, queries, (0.1, 0.3), augment, seed, exclude=exclude, crop=crop)


def episodes_equal(a, b) -> bool:
    return (
        a.category == b.category
        and a.support_index == b.support_index
        and a.query_index == b.query_index
        and torch.equal(a.support, b.support)
        and torch.equal(a.queries, b.queries)
        and torch.equal(a.corrupted, b.corrupted)
        and torch.equal(a.patch_mask, b.patch_mask)
    )


def matching_transforms(images: torch.Tensor, base: torch.Tensor) -> set[int]:
    """The dihedral indices t with dihedral(base, t) == images (every image at once)."""
    return {t for t in range(8) if torch.equal(dihedral(base, t), images)}


# --------------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("augment", AUGMENT_MODES)
def test_excluded_category_never_appears(normals, augment):
    s = sampler(normals, augment)
    assert EXCLUDED not in s.categories
    seen = [s.sample().category for _ in range(200)]
    assert EXCLUDED not in seen
    assert set(seen) == set(CATEGORIES) - {EXCLUDED}  # and every training category does appear


def test_support_and_queries_are_disjoint(normals):
    s = sampler(normals)
    for _ in range(200):
        ep = s.sample()
        assert len(ep.support_index) == K and len(ep.query_index) == M
        assert len(set(ep.support_index)) == K and len(set(ep.query_index)) == M
        assert not set(ep.support_index) & set(ep.query_index)
        n = normals[ep.category].shape[0]
        assert all(0 <= i < n for i in ep.support_index + ep.query_index)
        # no query image is (pixel for pixel) in the support set
        for q in ep.queries:
            assert not any(torch.equal(q, x) for x in ep.support)


def test_augment_none_returns_the_indexed_images(normals):
    s = sampler(normals, "none")
    for _ in range(50):
        ep = s.sample()
        images = normals[ep.category]
        assert torch.equal(ep.support, images[ep.support_index])
        assert torch.equal(ep.queries, images[ep.query_index])


def test_corruption_is_confined_to_the_patch(normals):
    s = sampler(normals, "episode")
    for _ in range(50):
        ep = s.sample()
        assert ep.corrupted.shape == ep.queries.shape and ep.patch_mask.shape == (M, SIZE, SIZE)
        assert ep.patch_mask.dtype == torch.bool and ep.patch_mask.flatten(1).any(1).all()
        outside = ~ep.patch_mask.unsqueeze(1).expand_as(ep.queries)
        assert torch.equal(ep.corrupted[outside], ep.queries[outside])
        assert not torch.equal(ep.corrupted, ep.queries)
        assert ep.corrupted.min() >= 0 and ep.corrupted.max() <= 1


@pytest.mark.parametrize("augment", AUGMENT_MODES)
def test_same_seed_same_episodes(normals, augment):
    a, b = sampler(normals, augment, seed=7), sampler(normals, augment, seed=7)
    for _ in range(30):
        assert episodes_equal(a.sample(), b.sample())


def test_different_seed_different_episodes(normals):
    a, b = sampler(normals, seed=1), sampler(normals, seed=2)
    assert not all(episodes_equal(a.sample(), b.sample()) for _ in range(10))


@pytest.mark.parametrize("augment", AUGMENT_MODES)
def test_state_round_trip_reproduces_next_episode(normals, augment):
    s = sampler(normals, augment, seed=3)
    for _ in range(5):
        s.sample()
    state = s.get_state().clone()
    expected = [s.sample() for _ in range(3)]
    other = sampler(normals, augment, seed=99)  # a fresh sampler, another seed: the state decides
    other.set_state(state)
    for e in expected:
        assert episodes_equal(other.sample(), e)
    s.set_state(state)
    assert episodes_equal(s.sample(), expected[0])


def test_excluded_category_absent_from_normals_is_fine(normals):
    only_two = {c: x for c, x in normals.items() if c != EXCLUDED}
    s = sampler(only_two, exclude=(EXCLUDED,))
    assert s.categories == sorted(only_two)


# --------------------------------------------------------------------------------------------------
# Augmentation
# --------------------------------------------------------------------------------------------------


def test_dihedral_matches_numpy_for_all_8():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)  # non-square: catches axis mix-ups
    a = x.numpy()
    outputs = []
    for t in range(8):
        expected = np.rot90(np.flip(a, -1) if t >= 4 else a, t % 4, axes=(-2, -1))
        got = dihedral(x, t)
        np.testing.assert_array_equal(got.numpy(), expected)
        outputs.append(got)
    # the 8 transforms of a generic square image are all different
    sq = torch.arange(36, dtype=torch.float32).reshape(1, 6, 6)
    assert len({tuple(dihedral(sq, t).flatten().tolist()) for t in range(8)}) == 8
    assert torch.equal(dihedral(x, 0), x)
    assert [tuple(o.shape[-2:]) for o in outputs] == [(4, 5), (5, 4)] * 4


def test_dihedral_matches_numpy_2d():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    for t in range(8):
        expected = np.rot90(np.fliplr(a) if t >= 4 else a, t % 4)
        np.testing.assert_array_equal(dihedral(torch.from_numpy(a.copy()), t).numpy(), expected)


def test_augment_episode_shares_one_transform(normals):
    s = sampler(normals, "episode", seed=5)
    used = set()
    for _ in range(100):
        ep = s.sample()
        images = normals[ep.category]
        both = torch.cat([ep.support, ep.queries])
        base = images[ep.support_index + ep.query_index]
        common = matching_transforms(both, base)
        assert common, "support and queries do not share one dihedral transform"
        used |= common if len(common) == 1 else set()
    assert len(used) >= 6  # the transform varies between episodes


def test_augment_episode_draws_the_same_images_as_none(normals):
    """Augmentation changes pixels, not which images are drawn: the first episode of a seed picks the
    same category and indices with augment none and episode."""
    for seed in range(10):
        a = sampler(normals, "none", seed=seed).sample()
        b = sampler(normals, "episode", seed=seed).sample()
        assert (a.category, a.support_index, a.query_index) == (b.category, b.support_index, b.query_index)
        assert matching_transforms(torch.cat([b.support, b.queries]), torch.cat([a.support, a.queries]))


def test_augment_image_transforms_each_image(normals):
    s = sampler(normals, "image", seed=11)
    mixed = 0
    for _ in range(100):
        ep = s.sample()
        images = normals[ep.category]
        per_image = []
        for x, i in zip(torch.cat([ep.support, ep.queries]), ep.support_index + ep.query_index):
            ts = matching_transforms(x, images[i])
            assert ts, "an augmented image is not a dihedral transform of its source"
            per_image.append(ts)
        if not set.intersection(*per_image):
            mixed += 1  # no single transform explains the whole episode
    assert mixed > 50


# --------------------------------------------------------------------------------------------------
# Crop (train.crop): one window per task
# --------------------------------------------------------------------------------------------------


def position_coded(n: int, size: int) -> torch.Tensor:
    """(n, 3, size, size): channel 0 = row, 1 = column, 2 = image index, so a crop's pixels say where they
    were cut from and from which image."""
    rows = torch.arange(size, dtype=torch.float32)[:, None].expand(size, size)
    cols = torch.arange(size, dtype=torch.float32)[None, :].expand(size, size)
    return torch.stack([torch.stack([rows, cols, torch.full((size, size), float(i))]) for i in range(n)])


def test_crop_cuts_support_and_queries_from_one_window():
    size, crop = 24, 16
    s = EpisodeSampler({"a": position_coded(8, size)}, 3, 2, augment="none", seed=3, crop=crop)
    corners = set()
    for _ in range(40):
        ep = s.sample()
        both = torch.cat([ep.support, ep.queries])  # (K + M, 3, 16, 16)
        assert both.shape == (5, 3, crop, crop) and ep.corrupted.shape == (2, 3, crop, crop)
        assert ep.patch_mask.shape == (2, crop, crop)
        top, left = int(both[0, 0, 0, 0]), int(both[0, 1, 0, 0])
        assert 0 <= top <= size - crop and 0 <= left <= size - crop
        # every image of the task is the same window, and each is still its indexed image
        expected = position_coded(8, size)[ep.support_index + ep.query_index][..., top:top + crop, left:left + crop]
        assert torch.equal(both, expected)
        corners.add((top, left))
    assert len(corners) > 20  # the window moves between tasks


@pytest.mark.parametrize("crop", [0, SIZE, 4 * SIZE])
def test_no_crop_or_a_crop_at_least_the_image_is_the_whole_image_and_keeps_the_stream(normals, crop):
    a = sampler(normals, "episode", seed=4)
    b = sampler(normals, "episode", seed=4, crop=crop)
    for _ in range(5):
        assert episodes_equal(a.sample(), b.sample())


def test_crop_cuts_defects_with_their_masks():
    g = torch.Generator().manual_seed(0)
    normals = {"a": torch.rand(6, 3, 32, 32, generator=g)}
    masks = torch.zeros(3, 32, 32, dtype=torch.bool)
    masks[:, 4:20, 2:12] = True
    defects = {"a": (torch.full((3, 3, 32, 32), 0.25) + masks[:, None] * 0.5, masks)}
    s = EpisodeSampler(normals, 2, 2, augment="episode", seed=1, defects=defects, crop=16)
    for _ in range(10):
        ep = s.sample()
        assert ep.anomalous.shape == (2, 3, 16, 16) and ep.anomalous_masks.shape == (2, 16, 16)
        assert torch.equal(ep.anomalous[:, 0] > 0.5, ep.anomalous_masks)  # image and mask cut alike


@pytest.mark.parametrize("kind", ["cutpaste", "blend"])
def test_crop_takes_donor_patches_from_anywhere_in_a_donor_window(kind):
    size, crop = 48, 16
    normals = {"a": position_coded(8, size), "b": position_coded(8, size) + torch.tensor([0.0, 0.0, 100.0])[:, None, None]}
    s = EpisodeSampler(normals, 2, 2, augment="none", seed=5, crop=crop, corruptions=(kind,))
    donor_rows, donor_cols = [], []
    for _ in range(60):
        ep = s.sample()
        assert ep.corrupted.shape == (2, 3, crop, crop)
        for query, corrupted, patched in zip(ep.queries, ep.corrupted, ep.patch_mask):
            foreign = patched & (corrupted[2] != query[2])  # (16, 16) pixels the donor replaced
            if kind == "cutpaste":  # a cut-and-pasted pixel is the donor's own: another category's image
                assert torch.equal(foreign, patched)
            donor_rows += corrupted[0][foreign].tolist()
            donor_cols += corrupted[1][foreign].tolist()
    if kind == "cutpaste":
        # patches come from the whole donor, not only from its top-left crop × crop corner
        assert max(donor_rows) >= size - crop and max(donor_cols) >= size - crop
    assert len(donor_rows) > 0


@pytest.mark.parametrize("kind", ["cutpaste", "blend"])
def test_no_crop_keeps_the_donor_stream(normals, kind):
    a = EpisodeSampler(normals, K, M, augment="episode", seed=2, corruptions=(kind,))
    b = EpisodeSampler(normals, K, M, augment="episode", seed=2, corruptions=(kind,), crop=SIZE)
    for _ in range(5):
        assert episodes_equal(a.sample(), b.sample())


def test_crop_applies_only_below_the_image_side():
    assert crop_applies(64, 128) and crop_applies(64, (128, 96)) and crop_applies(16, torch.Size([203, 512]))
    assert not crop_applies(0, 128) and not crop_applies(128, 128) and not crop_applies(64, (64, 512))


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


def test_not_enough_images_for_k_plus_m(normals):
    few = {c: x[:4] for c, x in normals.items()}
    with pytest.raises(InputError) as exc:
        EpisodeSampler(few, 3, 2, seed=0)
    assert "K + M = 5" in str(exc.value) and "4" in str(exc.value)
    EpisodeSampler(few, 2, 2, seed=0).sample()  # exactly enough is fine


def test_not_enough_images_only_counts_training_categories(normals):
    few_held_out = {**normals, EXCLUDED: normals[EXCLUDED][:2]}
    sampler(few_held_out, exclude=(EXCLUDED,)).sample()  # the held-out category's size is irrelevant
    with pytest.raises(InputError, match=EXCLUDED):
        sampler(few_held_out, exclude=())


@pytest.mark.parametrize("kwargs,needle", [
    ({"shots": 0}, "train.shots"),
    ({"queries": 0}, "train.queries"),
    ({"augment": "sideways"}, "train.augment"),
    ({"exclude": CATEGORIES}, "no training categories"),
    ({"crop": 8}, "train.crop=8"),
])
def test_bad_arguments(normals, kwargs, needle):
    with pytest.raises(InputError, match=needle):
        sampler(normals, **kwargs)
