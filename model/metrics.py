"""Evaluation metrics for anomaly detection: image AUROC, pixel AUROC, PRO, IoU / mIoU.

All functions are pure: they take numpy arrays or torch tensors and return Python floats (or numpy
arrays for curves). Conventions:

* image scores: shape (N,), higher = more anomalous; labels (N,) in {0, 1} (1 = anomalous).
* anomaly maps: shape (N, H, W), finite floats, higher = more anomalous.
* masks: shape (N, H, W), bool or {0, 1}; 1 = anomalous pixel. An image whose mask is all zero is
  a normal image (or a category without pixel annotations, when every mask is empty).

Bad input raises `model.errors.InputError` with a one-line message. Metrics that need anomalous
pixels return None when no mask has a positive pixel, so callers can skip them per category.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from sklearn.metrics import roc_auc_score, roc_curve

from model.errors import InputError

__all__ = [
    "image_auroc",
    "pixel_auroc",
    "pro_curve",
    "pro_score",
    "iou_at_threshold",
    "miou",
    "roc_curve_points",
    "summarize",
]

# 8-connectivity inside each image, no connection between images: regions are found with a single
# scipy call over the whole (N, H, W) stack instead of a Python loop over images.
_STRUCTURE_8_PER_IMAGE = np.zeros((3, 3, 3), dtype=bool)
_STRUCTURE_8_PER_IMAGE[1] = True


# --------------------------------------------------------------------------------------------------
# input conversion and validation
# --------------------------------------------------------------------------------------------------


def _to_numpy(x, name: str) -> np.ndarray:
    """Convert a numpy array, torch tensor or sequence to a numpy array (no copy when possible)."""
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
        if t.dtype in (torch.float16, torch.bfloat16):
            t = t.float()  # numpy has no bfloat16
        return t.numpy()
    try:
        return np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise InputError(f"{name}: cannot convert to an array ({exc})") from exc


def _as_scores(x, name: str, ndim: int) -> np.ndarray:
    a = _to_numpy(x, name)
    if a.ndim != ndim:
        raise InputError(f"{name}: expected {ndim} dimensions, got shape {tuple(a.shape)}")
    if a.dtype == bool or not np.issubdtype(a.dtype, np.number):
        raise InputError(f"{name}: expected numeric values, got dtype {a.dtype}")
    a = a.astype(np.float64, copy=False)
    if a.size == 0:
        raise InputError(f"{name}: is empty")
    if not np.all(np.isfinite(a)):
        raise InputError(f"{name}: contains NaN or infinite values")
    return a


def _as_binary(x, name: str, ndim: int) -> np.ndarray:
    a = _to_numpy(x, name)
    if a.ndim != ndim:
        raise InputError(f"{name}: expected {ndim} dimensions, got shape {tuple(a.shape)}")
    if a.dtype == bool:
        return a
    # Reject e.g. 0/255 PNG masks instead of silently treating every non-zero value as anomalous.
    if a.size and not np.all((a == 0) | (a == 1)):
        bad = np.unique(a[(a != 0) & (a != 1)])[:3].tolist()
        raise InputError(f"{name}: expected values in {{0, 1}} or bool, found e.g. {bad}")
    return a.astype(bool)


def _scores_labels(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    s = _as_scores(scores, "scores", 1)
    y = _as_binary(labels, "labels", 1)
    if s.shape != y.shape:
        raise InputError(f"scores shape {tuple(s.shape)} does not match labels shape {tuple(y.shape)}")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise InputError(
            f"labels: need both normal (0) and anomalous (1) samples for AUROC, got only class {int(y[0])}"
        )
    return s, y


def _maps_masks(maps, masks) -> tuple[np.ndarray, np.ndarray]:
    m = _as_scores(maps, "maps", 3)
    g = _as_binary(masks, "masks", 3)
    if m.shape != g.shape:
        raise InputError(f"maps shape {tuple(m.shape)} does not match masks shape {tuple(g.shape)}")
    return m, g


# --------------------------------------------------------------------------------------------------
# AUROC
# --------------------------------------------------------------------------------------------------


def image_auroc(scores, labels) -> float:
    """Image-level AUROC. scores (N,) float, labels (N,) in {0, 1}; both classes must be present."""
    s, y = _scores_labels(scores, labels)
    return float(roc_auc_score(y, s))


def roc_curve_points(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """Image-level ROC curve (fpr, tpr) for plotting; both arrays nondecreasing, from (0,0) to (1,1)."""
    s, y = _scores_labels(scores, labels)
    fpr, tpr, _ = roc_curve(y, s)
    return fpr, tpr


def pixel_auroc(maps, masks) -> float | None:
    """Pixel-level AUROC over all pixels of all images. maps, masks (N, H, W).

    Returns None when no mask has a positive pixel (category without pixel annotations).
    """
    m, g = _maps_masks(maps, masks)
    n_pos = int(g.sum())
    if n_pos == 0:
        return None
    if n_pos == g.size:
        raise InputError("masks: every pixel is anomalous, pixel AUROC needs normal pixels too")
    return rank_auroc(g.ravel(), m.ravel())


def rank_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """AUROC as the Mann-Whitney statistic: labels (n,) in {0, 1} with both classes, scores (n,) finite.

    Exactly sklearn's roc_auc_score (tied scores share their average rank, i.e. count one half), at a
    fraction of its cost on the ~10⁷ pixels of a test set: one value sort (no argsort, no permutation of the
    labels) and a binary search per anomalous score for its tie group's average rank. Every rank is a
    multiple of ½ far below 2⁵³, so the sums are exact in float64.
    """
    ranked = np.sort(scores)  # (n,) ascending
    positive = labels.astype(bool)
    anomalous = np.sort(scores[positive])  # (n_pos,) sorted, so that the searches below walk `ranked` in order
    below = np.searchsorted(ranked, anomalous, side="left")  # (n_pos,) scores strictly below each
    through = np.searchsorted(ranked, anomalous, side="right")  # (n_pos,) scores at or below each
    n_pos = int(anomalous.size)
    n_neg = int(ranked.size) - n_pos
    rank_sum = float(((below + through + 1) / 2.0).sum())  # average 1-based rank of each anomalous score
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


# --------------------------------------------------------------------------------------------------
# PRO (per-region overlap), MVTec AD protocol
# --------------------------------------------------------------------------------------------------


def _pro_full_curve(m: np.ndarray, g: np.ndarray, num_thresholds: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Unclipped (fpr, pro) curve, starting with (0, 0) for a threshold above the maximum.

    Thresholds t_0 = max > ... > t_{K-1} = min (evenly spaced). A pixel with value v is flagged at
    t_k iff t_k <= v, i.e. for every k >= k_min(v). Counting pixels per (region, k_min) with one
    bincount and a cumulative sum over k gives all overlaps in O(pixels + regions * K).
    """
    labels, n_regions = ndimage.label(g, structure=_STRUCTURE_8_PER_IMAGE)
    if n_regions == 0:
        return None
    normal = ~g
    n_normal = int(normal.sum())
    if n_normal == 0:
        raise InputError("masks: every pixel is anomalous, the PRO curve needs normal pixels for its FPR")

    k = num_thresholds
    hi, lo = float(m.max()), float(m.min())
    ascending = np.linspace(hi, lo, k)[::-1]  # linspace endpoints are exact: max/min pixels hit them
    # number of thresholds <= v is >= 1 because t_{K-1} = min <= v
    k_min = k - np.searchsorted(ascending, m.ravel(), side="right")

    flat_labels = labels.ravel()
    anomalous = flat_labels > 0
    # region r (1..R) -> row r-1; counts[r, k] = pixels of region r flagged at threshold t_k
    region_hist = np.bincount(
        (flat_labels[anomalous] - 1) * k + k_min[anomalous], minlength=n_regions * k
    ).reshape(n_regions, k)
    region_flagged = np.cumsum(region_hist, axis=1)
    region_size = region_flagged[:, -1]  # at t = min every pixel is flagged
    pro = (region_flagged / region_size[:, None]).mean(axis=0)

    normal_flagged = np.cumsum(np.bincount(k_min[normal.ravel()], minlength=k))
    fpr = normal_flagged / n_normal

    return np.concatenate(([0.0], fpr)), np.concatenate(([0.0], pro))


def _clip_curve(fpr: np.ndarray, pro: np.ndarray, fpr_limit: float) -> tuple[np.ndarray, np.ndarray]:
    """Keep the points with fpr <= fpr_limit and end the curve exactly at fpr_limit.

    fpr is nondecreasing; it may repeat (vertical steps), so np.interp is not used: the end point
    is interpolated on the segment from the last point with fpr <= limit to the next point.
    """
    after = int(np.searchsorted(fpr, fpr_limit, side="right"))  # first index with fpr > limit
    f, p = fpr[:after], pro[:after]
    if after < fpr.size and f[-1] < fpr_limit:
        x0, y0, x1, y1 = fpr[after - 1], pro[after - 1], fpr[after], pro[after]
        y = y0 + (fpr_limit - x0) * (y1 - y0) / (x1 - x0)
        f, p = np.append(f, fpr_limit), np.append(p, y)
    return f, p


def _check_pro_args(fpr_limit: float, num_thresholds: int) -> None:
    if not 0.0 < fpr_limit <= 1.0:
        raise InputError(f"fpr_limit: expected a value in (0, 1], got {fpr_limit}")
    if int(num_thresholds) != num_thresholds or num_thresholds < 2:
        raise InputError(f"num_thresholds: expected an integer >= 2, got {num_thresholds}")


def pro_curve(
    maps, masks, fpr_limit: float = 0.3, num_thresholds: int = 200
) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-region-overlap curve (fpr, pro), clipped at fpr_limit. maps, masks (N, H, W).

    Regions are the 8-connected components of each mask. For each of `num_thresholds` thresholds
    t evenly spaced from max(maps) down to min(maps): PRO(t) = mean over all regions of the
    fraction of the region with map >= t; FPR(t) = fraction of normal pixels (all images) with
    map >= t. The curve starts at (0, 0) (threshold above the maximum), fpr is nondecreasing, and
    the last point is at fpr == fpr_limit (linearly interpolated). None when no mask has a region.
    """
    _check_pro_args(fpr_limit, num_thresholds)
    m, g = _maps_masks(maps, masks)
    full = _pro_full_curve(m, g, int(num_thresholds))
    if full is None:
        return None
    return _clip_curve(*full, fpr_limit)


def pro_score(maps, masks, fpr_limit: float = 0.3, num_thresholds: int = 200) -> float | None:
    """Area under the PRO curve for FPR in [0, fpr_limit], divided by fpr_limit (perfect map: 1.0).

    A random map scores about fpr_limit / 2. None when no mask has a positive pixel.
    """
    curve = pro_curve(maps, masks, fpr_limit, num_thresholds)
    if curve is None:
        return None
    fpr, pro = curve
    return float(np.trapezoid(pro, fpr) / fpr_limit)


# --------------------------------------------------------------------------------------------------
# IoU
# --------------------------------------------------------------------------------------------------


def iou_at_threshold(maps, masks, threshold: float) -> float:
    """Mean IoU between (map >= threshold) and mask over the anomalous images (non-empty mask).

    maps, masks (N, H, W). Raises InputError when no image is anomalous.
    """
    m, g = _maps_masks(maps, masks)
    anomalous = g.reshape(g.shape[0], -1).any(axis=1)
    if not anomalous.any():
        raise InputError("masks: no anomalous image (every mask is empty), IoU is undefined")
    pred = m[anomalous] >= threshold
    gt = g[anomalous]
    inter = (pred & gt).sum(axis=(1, 2))
    union = (pred | gt).sum(axis=(1, 2))  # > 0 because every mask here is non-empty
    return float(np.mean(inter / union))


def miou(maps, masks, num_thresholds: int = 100) -> tuple[float, float] | None:
    """mIoU: best threshold over a quantile grid, mean IoU over the anomalous test images.

    The grid is the quantiles of all map values (pooled over every image, normal ones included) at
    `num_thresholds` levels evenly spaced in [0.5, 0.999]. Returns (best mean IoU, its threshold);
    the threshold is chosen on the test masks, so this is an oracle upper bound, not a deployable
    operating point. None when no mask has a positive pixel.
    """
    if int(num_thresholds) != num_thresholds or num_thresholds < 1:
        raise InputError(f"num_thresholds: expected an integer >= 1, got {num_thresholds}")
    m, g = _maps_masks(maps, masks)
    anomalous = g.reshape(g.shape[0], -1).any(axis=1)
    if not anomalous.any():
        return None

    k = int(num_thresholds)
    # sort guards against 1-ulp non-monotonicity of interpolated quantiles; searchsorted needs it
    thresholds = np.sort(np.quantile(m, np.linspace(0.5, 0.999, k)))

    am = m[anomalous].reshape(int(anomalous.sum()), -1)
    ag = g[anomalous].reshape(am.shape)
    n_img = am.shape[0]
    # n_le = number of thresholds <= v; the pixel is flagged at t_j iff j < n_le (ascending grid).
    n_le = np.searchsorted(thresholds, am, side="right")
    rows = np.arange(n_img)[:, None] * (k + 1) + n_le
    hist_all = np.bincount(rows.ravel(), minlength=n_img * (k + 1)).reshape(n_img, k + 1)
    hist_gt = np.bincount(rows[ag], minlength=n_img * (k + 1)).reshape(n_img, k + 1)
    # flagged[:, j] = pixels with n_le > j = reverse cumulative sum over bins j+1..k
    pred_count = np.cumsum(hist_all[:, ::-1], axis=1)[:, ::-1][:, 1:]
    inter = np.cumsum(hist_gt[:, ::-1], axis=1)[:, ::-1][:, 1:]
    gt_count = ag.sum(axis=1)[:, None]
    iou = inter / (pred_count + gt_count - inter)  # union >= gt_count > 0
    mean_iou = iou.mean(axis=0)
    best = int(np.argmax(mean_iou))  # ties: the lowest threshold
    return float(mean_iou[best]), float(thresholds[best])


# --------------------------------------------------------------------------------------------------
# aggregation
# --------------------------------------------------------------------------------------------------


def summarize(values: list[float | None]) -> dict | None:
    """{"mean", "std" (population, ddof=0), "n"} over the non-None values; None if there are none."""
    kept = [float(v) for v in values if v is not None]
    if not kept:
        return None
    a = np.asarray(kept, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=0)), "n": int(a.size)}
