"""Tests for model/metrics.py: hand-worked cases, sklearn agreement, brute-force PRO reference."""

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from model.errors import InputError
from model.metrics import (
    image_auroc,
    iou_at_threshold,
    miou,
    pixel_auroc,
    pro_curve,
    pro_score,
    roc_curve_points,
    summarize,
)


def _blob_masks(rng, n, h, w, p_anomalous=0.7):
    """Masks made of a few random rectangles; some images stay normal."""
    masks = np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        if rng.random() > p_anomalous:
            continue
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
            dy, dx = rng.integers(1, h // 4), rng.integers(1, w // 4)
            masks[i, y : y + dy, x : x + dx] = True
    return masks


# --------------------------------------------------------------------------------------------------
# AUROC
# --------------------------------------------------------------------------------------------------


def test_image_auroc_hand_case():
    # pairs (anomalous, normal): (0.35,0.1) ok, (0.35,0.4) wrong, (0.8,0.1) ok, (0.8,0.4) ok -> 3/4
    assert image_auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)


def test_image_auroc_matches_sklearn_numpy_and_torch():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = rng.normal(size=200) + 0.7 * labels
    expected = roc_auc_score(labels, scores)
    assert image_auroc(scores, labels) == pytest.approx(expected, abs=1e-12)
    assert image_auroc(torch.from_numpy(scores).float(), torch.from_numpy(labels)) == pytest.approx(expected, abs=1e-6)
    assert image_auroc(scores, labels.astype(bool)) == pytest.approx(expected, abs=1e-12)


def test_image_auroc_perfect_and_single_class():
    assert image_auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    with pytest.raises(InputError, match="both"):
        image_auroc([0.1, 0.2, 0.3], [1, 1, 1])
    with pytest.raises(InputError):
        image_auroc([0.1, 0.2, 0.3], [0, 0, 0])
    with pytest.raises(InputError):
        image_auroc([0.1, 0.2], [0, 1, 1])  # length mismatch
    with pytest.raises(InputError):
        image_auroc([0.1, float("nan")], [0, 1])
    with pytest.raises(InputError):
        image_auroc([0.1, 0.2], [0, 2])  # labels not binary


def test_roc_curve_points():
    fpr, tpr = roc_curve_points([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    assert fpr[0] == 0.0 and tpr[0] == 0.0 and fpr[-1] == 1.0 and tpr[-1] == 1.0
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(0.75)
    with pytest.raises(InputError):
        roc_curve_points([0.1, 0.2], [1, 1])


def test_pixel_auroc_matches_sklearn():
    rng = np.random.default_rng(1)
    masks = _blob_masks(rng, 6, 16, 16)
    maps = rng.random((6, 16, 16)) + 0.5 * masks
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(maps, masks) == pytest.approx(expected, abs=1e-12)
    assert pixel_auroc(torch.from_numpy(maps), torch.from_numpy(masks.astype(np.uint8))) == pytest.approx(
        expected, abs=1e-12
    )


def test_pixel_auroc_matches_sklearn_with_ties_and_hand_count():
    # quantised maps: most pixels share their score with others, where a rank-sum shortcut goes wrong
    rng = np.random.default_rng(2)
    masks = _blob_masks(rng, 5, 12, 12)
    maps = np.round((rng.random((5, 12, 12)) + 0.3 * masks) * 4) / 4
    assert pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    # by hand: anomalous {0.5, 0.9}, normal {0.5, 0.1}; pairs (0.5,0.5) ½, (0.5,0.1) 1, (0.9,·) 1+1 -> 3.5/4
    hand_maps = np.array([[[0.5, 0.9], [0.5, 0.1]]])
    hand_masks = np.array([[[1, 1], [0, 0]]])
    assert pixel_auroc(hand_maps, hand_masks) == pytest.approx(3.5 / 4, abs=1e-15)


def test_pixel_auroc_perfect_none_and_errors():
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, 1:3, 1:3] = True
    assert pixel_auroc(masks.astype(float), masks) == 1.0
    assert pixel_auroc(np.random.default_rng(0).random((2, 4, 4)), np.zeros((2, 4, 4))) is None
    with pytest.raises(InputError, match="shape"):
        pixel_auroc(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(InputError):
        pixel_auroc(np.zeros((4, 4)), np.zeros((4, 4)))  # not (N, H, W)
    with pytest.raises(InputError, match="0, 1"):
        pixel_auroc(np.zeros((1, 2, 2)), np.array([[[0, 255], [0, 0]]]))  # 0/255 PNG mask


# --------------------------------------------------------------------------------------------------
# PRO
# --------------------------------------------------------------------------------------------------

# One 4x4 image. Region A = top-left 2x2 (4 px). Region B = (2,3) and (3,2): diagonal neighbours,
# so ONE region under 8-connectivity (two under 4-connectivity). 10 normal pixels.
HAND_MASK = np.array(
    [
        [1, 1, 0, 0],
        [1, 1, 0, 0],
        [0, 0, 0, 1],
        [0, 0, 1, 0],
    ]
)[None]
# Region A values 1.0, 0.75, 0.5, 0.25; region B values 1.0 (2,3) and 0.0 (3,2);
# normal pixels: 0.75 at (0,2), 0.5 at (1,2), the other 8 are 0.
HAND_MAP = np.array(
    [
        [1.0, 0.75, 0.75, 0.0],
        [0.5, 0.25, 0.5, 0.0],
        [0.0, 0.0, 0.0, 1.0],
        [0.0, 0.0, 0.0, 0.0],
    ]
)[None]
# num_thresholds=5 -> thresholds 1.0, 0.75, 0.5, 0.25, 0.0 (max to min).
#   t      A overlap  B overlap  PRO = mean           FPR (of 10 normal px)
#   1.0    1/4        1/2        (0.25+0.5)/2 = 0.375  0/10 = 0.0
#   0.75   2/4        1/2        0.5                   1/10 = 0.1
#   0.5    3/4        1/2        0.625                 2/10 = 0.2
#   0.25   4/4        1/2        0.75                  2/10 = 0.2
#   0.0    4/4        2/2        1.0                   10/10 = 1.0
# plus the starting point (0, 0) for a threshold above the maximum.


def test_pro_curve_hand_case_limit_0_3():
    fpr, pro = pro_curve(HAND_MAP, HAND_MASK, fpr_limit=0.3, num_thresholds=5)
    # end point at fpr 0.3 on the segment (0.2, 0.75) -> (1.0, 1.0): 0.75 + 0.1/0.8 * 0.25 = 0.78125
    np.testing.assert_allclose(fpr, [0.0, 0.0, 0.1, 0.2, 0.2, 0.3], atol=1e-12)
    np.testing.assert_allclose(pro, [0.0, 0.375, 0.5, 0.625, 0.75, 0.78125], atol=1e-12)
    # area: [0,0.1] (0.375+0.5)/2*0.1 = 0.04375; [0.1,0.2] (0.5+0.625)/2*0.1 = 0.05625;
    # vertical step at 0.2 adds 0; [0.2,0.3] (0.75+0.78125)/2*0.1 = 0.0765625.
    # total 0.1765625, / 0.3 = 0.58854166...
    assert pro_score(HAND_MAP, HAND_MASK, fpr_limit=0.3, num_thresholds=5) == pytest.approx(0.1765625 / 0.3)


def test_pro_curve_hand_case_limit_on_a_point():
    # limit 0.2 is hit exactly: the curve stops at the last point with fpr 0.2 (pro 0.75), no extra point
    fpr, pro = pro_curve(HAND_MAP, HAND_MASK, fpr_limit=0.2, num_thresholds=5)
    np.testing.assert_allclose(fpr, [0.0, 0.0, 0.1, 0.2, 0.2], atol=1e-12)
    np.testing.assert_allclose(pro, [0.0, 0.375, 0.5, 0.625, 0.75], atol=1e-12)
    # area 0.04375 + 0.05625 = 0.1, / 0.2 = 0.5
    assert pro_score(HAND_MAP, HAND_MASK, fpr_limit=0.2, num_thresholds=5) == pytest.approx(0.5)


def test_pro_hand_case_limit_1_reaches_end():
    fpr, pro = pro_curve(HAND_MAP, HAND_MASK, fpr_limit=1.0, num_thresholds=5)
    assert fpr[-1] == 1.0 and pro[-1] == 1.0
    # 0.1 (up to 0.2) + [0.2,1.0] (0.75+1.0)/2*0.8 = 0.7 -> 0.8
    assert pro_score(HAND_MAP, HAND_MASK, fpr_limit=1.0, num_thresholds=5) == pytest.approx(0.8)


def _pro_curve_reference(maps, masks, num_thresholds):
    """Naive loop over thresholds and regions, per-image labelling: independent of the vectorised code."""
    regions = []
    for i in range(maps.shape[0]):
        lab, n = ndimage.label(masks[i], structure=np.ones((3, 3)))
        regions += [(i, lab == r) for r in range(1, n + 1)]
    normal = ~masks.astype(bool)
    fprs, pros = [0.0], [0.0]
    for t in np.linspace(maps.max(), maps.min(), num_thresholds):
        flagged = maps >= t
        pros.append(np.mean([(flagged[i] & reg).sum() / reg.sum() for i, reg in regions]))
        fprs.append((flagged & normal).sum() / normal.sum())
    return np.array(fprs), np.array(pros)


def test_pro_curve_matches_naive_reference():
    rng = np.random.default_rng(2)
    masks = _blob_masks(rng, 8, 24, 24)
    maps = rng.random((8, 24, 24)) + 0.6 * masks
    ref_fpr, ref_pro = _pro_curve_reference(maps, masks, 40)
    fpr, pro = pro_curve(maps, masks, fpr_limit=1.0, num_thresholds=40)
    np.testing.assert_allclose(fpr, ref_fpr, atol=1e-12)
    np.testing.assert_allclose(pro, ref_pro, atol=1e-12)
    # clipped curve = reference points below the limit, then the interpolated end point
    fpr_c, pro_c = pro_curve(maps, masks, fpr_limit=0.3, num_thresholds=40)
    keep = ref_fpr <= 0.3
    np.testing.assert_allclose(fpr_c[:-1], ref_fpr[keep], atol=1e-12)
    np.testing.assert_allclose(pro_c[:-1], ref_pro[keep], atol=1e-12)
    j = int(np.argmax(ref_fpr > 0.3))
    end = ref_pro[j - 1] + (0.3 - ref_fpr[j - 1]) * (ref_pro[j] - ref_pro[j - 1]) / (ref_fpr[j] - ref_fpr[j - 1])
    assert fpr_c[-1] == pytest.approx(0.3) and pro_c[-1] == pytest.approx(end)


def test_pro_perfect_map_is_one():
    rng = np.random.default_rng(3)
    masks = _blob_masks(rng, 10, 32, 32)
    assert pro_score(masks.astype(float), masks) == pytest.approx(1.0)
    assert pro_score(masks.astype(float), masks, fpr_limit=0.05) == pytest.approx(1.0)


def test_pro_random_map_is_chance():
    # PRO(t) ~ FPR(t) for a map independent of the mask -> area of y=x on [0, 0.3] / 0.3 = 0.15
    rng = np.random.default_rng(4)
    masks = _blob_masks(rng, 30, 32, 32, p_anomalous=1.0)
    maps = rng.random((30, 32, 32))
    assert pro_score(maps, masks) == pytest.approx(0.15, abs=0.02)


def test_pro_invariant_to_monotone_transforms():
    rng = np.random.default_rng(5)
    masks = _blob_masks(rng, 10, 32, 32)
    maps = rng.random((10, 32, 32)) + 0.5 * ndimage.uniform_filter(masks.astype(float), size=(1, 5, 5))
    base = pro_score(maps, masks)
    assert 0.2 < base < 0.99  # not a degenerate case where everything is 0 or 1
    # increasing affine maps move the evenly spaced thresholds with the values: identical score
    assert pro_score(3.0 * maps - 7.0, masks) == pytest.approx(base, abs=1e-9)
    assert pro_score(torch.from_numpy(maps), torch.from_numpy(masks)) == pytest.approx(base, abs=1e-12)
    # a nonlinear increasing map only changes where the 200 thresholds sample the same curve
    assert pro_score(np.exp(2.0 * maps), masks) == pytest.approx(base, abs=0.01)
    assert pro_score(maps**3, masks, num_thresholds=2000) == pytest.approx(
        pro_score(maps, masks, num_thresholds=2000), abs=0.005
    )
    # a decreasing transform is not monotone-increasing and must change the score
    assert pro_score(-maps, masks) < base - 0.05


def test_pro_none_without_regions_and_bad_args():
    maps = np.random.default_rng(6).random((3, 8, 8))
    assert pro_score(maps, np.zeros((3, 8, 8))) is None
    assert pro_curve(maps, np.zeros((3, 8, 8), dtype=bool)) is None
    with pytest.raises(InputError):
        pro_score(maps, np.ones((3, 8, 8)))  # no normal pixel -> FPR undefined
    with pytest.raises(InputError):
        pro_score(maps, HAND_MASK)  # shape mismatch
    with pytest.raises(InputError):
        pro_score(HAND_MAP, HAND_MASK, fpr_limit=0.0)
    with pytest.raises(InputError):
        pro_score(HAND_MAP, HAND_MASK, num_thresholds=1)


def test_pro_is_fast_enough():
    import time

    rng = np.random.default_rng(7)
    masks = _blob_masks(rng, 700, 64, 64)
    maps = rng.random((700, 64, 64)).astype(np.float32)
    start = time.perf_counter()
    pro_score(maps, masks)
    miou(maps, masks)
    assert time.perf_counter() - start < 3.0


# --------------------------------------------------------------------------------------------------
# IoU / mIoU
# --------------------------------------------------------------------------------------------------

# Three 3x3 images; image 1 is normal.
IOU_MASKS = np.array(
    [
        [[1, 1, 1], [1, 0, 0], [0, 0, 0]],
        [[0, 0, 0], [0, 0, 0], [0, 0, 0]],
        [[0, 0, 0], [0, 1, 1], [0, 0, 0]],
    ]
)
IOU_MAPS = np.array(
    [
        [[0.9, 0.9, 0.5], [0.9, 0.2, 0.1], [0.1, 0.1, 0.1]],
        [[0.0, 0.0, 0.0], [0.0, 0.0, 0.5], [0.0, 0.0, 0.0]],
        [[0.0, 0.0, 0.0], [0.0, 0.9, 0.5], [0.0, 0.0, 0.0]],
    ]
)
# Pooled values (27) sorted: 0.0 x15 (idx 0-14), 0.1 x4 (15-18), 0.2 (19), 0.5 x3 (20-22), 0.9 x4 (23-26).


def test_iou_at_threshold_hand_case():
    # t=0.5: image 0 flags {0.9,0.9,0.9,0.5} = its mask -> 1; image 2 flags {0.9,0.5} = mask -> 1
    assert iou_at_threshold(IOU_MAPS, IOU_MASKS, 0.5) == pytest.approx(1.0)
    # t=0.2: image 0 flags 5 px, 4 in mask -> 4/5; image 2 -> 1; the normal image is not averaged
    assert iou_at_threshold(IOU_MAPS, IOU_MASKS, 0.2) == pytest.approx((0.8 + 1.0) / 2)
    # t=0.9: image 0 flags 3 of its 4 mask px -> 3/4; image 2 flags 1 of 2 -> 1/2
    assert iou_at_threshold(IOU_MAPS, IOU_MASKS, 0.9) == pytest.approx(0.625)
    with pytest.raises(InputError):
        iou_at_threshold(IOU_MAPS, np.zeros_like(IOU_MASKS), 0.5)


def test_miou_hand_case():
    # 2 levels 0.5, 0.999 -> positions 0.5*26 = 13 -> 0.0 and 0.999*26 = 25.974 (between two 0.9) -> 0.9
    # t=0.0 flags everything: image 0 IoU 4/9, image 2 IoU 2/9 -> 1/3; t=0.9: 0.625 (see above)
    best, thr = miou(IOU_MAPS, IOU_MASKS, num_thresholds=2)
    assert best == pytest.approx(0.625) and thr == pytest.approx(0.9)
    # 3 levels add 0.7495 -> position 19.487 -> 0.2 + 0.487*(0.5-0.2) = 0.3461: flags exactly the masks
    best, thr = miou(IOU_MAPS, IOU_MASKS, num_thresholds=3)
    assert best == pytest.approx(1.0) and thr == pytest.approx(0.2 + 0.487 * 0.3)


def test_miou_matches_brute_force_loop():
    rng = np.random.default_rng(8)
    masks = _blob_masks(rng, 12, 20, 20)
    maps = rng.random((12, 20, 20)) + 0.8 * masks
    grid = np.quantile(maps, np.linspace(0.5, 0.999, 50))
    scores = [iou_at_threshold(maps, masks, t) for t in grid]
    best, thr = miou(maps, masks, num_thresholds=50)
    assert best == pytest.approx(max(scores), abs=1e-12)
    assert thr == pytest.approx(grid[int(np.argmax(scores))], abs=1e-12)


def test_miou_perfect_and_none():
    rng = np.random.default_rng(9)
    masks = _blob_masks(rng, 10, 32, 32)
    best, thr = miou(masks.astype(float), masks)
    assert best == pytest.approx(1.0) and thr == pytest.approx(1.0)
    assert miou(rng.random((2, 8, 8)), np.zeros((2, 8, 8))) is None


# --------------------------------------------------------------------------------------------------
# summarize
# --------------------------------------------------------------------------------------------------


def test_summarize():
    # values 1, 2, 4: mean 7/3; deviations -4/3, -1/3, 5/3; squares sum 42/9; /3 = 14/9 -> std sqrt(14)/3
    out = summarize([1.0, None, 2.0, 4.0])
    assert out["n"] == 3
    assert out["mean"] == pytest.approx(7 / 3)
    assert out["std"] == pytest.approx(math.sqrt(14) / 3)
    assert summarize([0.5]) == {"mean": 0.5, "std": 0.0, "n": 1}
    assert summarize([None, None]) is None
    assert summarize([]) is None
