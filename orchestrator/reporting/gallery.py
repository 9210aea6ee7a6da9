"""A static results page (index.html) a person opens in a browser: every image as a card, sorted by
score, with its verdict badge, score, overlay and mask; the threshold, its target and the counts on top.

One self-contained file beside the PNGs it shows (relative links, inline CSS, no script or font from
anywhere): it works from disk, from a copied folder and from MLflow's artifact store. The page's own
numbers sit in data- attributes (body: data-n-images, data-n-flagged; card: data-score, data-verdict)
so a test can compare them with scores.jsonl; a short inline script records on <body> how many images
loaded (data-images-loaded, data-images-broken) once the page has finished loading.
"""
from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

from workers.files import atomic_write_text

INDEX = "index.html"

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
h1{font-size:1.3em;margin:0 0 .3em} .facts{margin:.2em 0 1em;line-height:1.6}
.facts b{font-variant-numeric:tabular-nums}
.grid{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px;width:420px}
.card.anomalous{border-color:#c62828} .imgs{display:flex;gap:4px;align-items:flex-start}
.imgs img{height:128px;image-rendering:pixelated} .imgs img.overlay{height:128px}
.name{font-size:.8em;word-break:break-all;color:#555} .score{font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:.8em;font-weight:600;color:#fff}
.badge.ok{background:#2e7d32} .badge.anomalous{background:#c62828} .badge.uncalibrated{background:#757575}
.label{font-size:.8em;color:#555;margin-left:.5em}
"""

SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images-loaded', ok);
  document.body.setAttribute('data-images-broken', imgs.length - ok);
});
"""


def _rel(path: str | Path | None, folder: Path) -> str | None:
    if not path:
        return None
    return Path(os.path.relpath(Path(path), folder)).as_posix()


def write_gallery(folder: Path, title: str, cards: list[dict[str, Any]], facts: list[tuple[str, str]]) -> Path:
    """folder/index.html. cards: {name, score, verdict ("ok" | "anomalous" | None), and optional image
    paths thumbnail / overlay / mask, label}; facts: (label, value) lines shown above the cards."""
    folder = Path(folder)
    ordered = sorted(cards, key=lambda c: -float(c["score"]))
    flagged = sum(1 for c in cards if c.get("verdict") == "anomalous")
    rows = []
    for card in ordered:
        verdict = card.get("verdict") or "uncalibrated"
        pictures = []
        for key, alt in (("thumbnail", "image"), ("overlay", "overlay"), ("mask", "mask")):
            src = _rel(card.get(key), folder)
            if src:
                pictures.append(f'<img class="{key}" src="{html.escape(src)}" alt="{alt}" loading="eager">')
        label = f'<span class="label">{html.escape(card["label"])}</span>' if card.get("label") else ""
        rows.append(
            f'<div class="card {verdict}" data-score="{float(card["score"])!r}" data-verdict="{verdict}">'
            f'<div><span class="badge {verdict}">{verdict.upper()}</span> '
            f'<span class="score">score {float(card["score"]):.5g}</span>{label}</div>'
            f'<div class="name">{html.escape(str(card["name"]))}</div>'
            f'<div class="imgs">{"".join(pictures)}</div></div>')
    fact_lines = "".join(f"<div>{html.escape(k)}: <b>{html.escape(v)}</b></div>" for k, v in facts)
    page = (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style><script>{SCRIPT}</script></head>\n"
        f'<body data-n-images="{len(cards)}" data-n-flagged="{flagged}">\n'
        f"<h1>{html.escape(title)}</h1>\n"
        f'<div class="facts"><div>images: <b id="n-images">{len(cards)}</b> · flagged anomalous: '
        f'<b id="n-flagged">{flagged}</b> · ok: <b id="n-ok">{sum(1 for c in cards if c.get("verdict") == "ok")}</b></div>'
        f"{fact_lines}<div>sorted by score, highest first; overlay: image | anomaly heat map, white contour = "
        "the mask</div></div>\n"
        f'<div class="grid">\n' + "\n".join(rows) + "\n</div>\n</body></html>\n")
    atomic_write_text(folder / INDEX, page)
    return folder / INDEX
