"""Pictures of a filter-misaligned run, drawn with OpenCV: the score histogram and the worst pairs.

- :func:`score_histogram`: scores in 20 bins of 0.05, each bar split into
  kept (green) and dropped (red) pairs, the cut (the score floor, or the
  lowest score a rank cut kept) as a dashed line.
- :func:`gallery`: one row per pair: H&E | IHC | hematoxylin overlay as
  given | overlay after undoing the measured shift. Overlays show the H&E's
  hematoxylin in magenta and the IHC's in green: where they coincide the
  picture is white, misalignment shows as magenta/green fringes.
- :func:`dataset_pictures`: both of one dataset folder, by file name
  (:data:`PICTURES`), as ``filter-misaligned`` writes them;
  :func:`encode_png` turns one into PNG bytes.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import h5py
import numpy as np

from ..errors import UserError
from ..shards import _plain, pair_images, read_header, sample_channels
from ..stain import HEMATOXYLIN, stain_channel
from .register import register_image

KEPT, DROPPED, AXIS = (60, 170, 75), (215, 60, 50), (40, 40, 40)
GALLERY_COLUMNS = ("H&E", "IHC", "hematoxylin as given", "after undoing the shift")
#: File names of the pictures in each dataset folder: the score histogram, the gallery of the worst pairs.
PICTURES = ("alignment-scores.png", "alignment-worst.png")
_FONT = cv2.FONT_HERSHEY_SIMPLEX


class PictureError(UserError):
    """A picture that OpenCV could not encode; ``str()`` names the file it was meant for."""


def _text(img: np.ndarray, text: str, xy, scale: float = 0.45, colour=AXIS, outline: bool = False) -> None:
    if outline:  # light text on pictures: a dark outline keeps it readable
        for dx, dy in ((-1, -1), (1, -1), (-1, 1), (1, 1), (0, 1), (0, -1), (1, 0), (-1, 0)):
            cv2.putText(img, text, (xy[0] + dx, xy[1] + dy), _FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, text, xy, _FONT, scale, colour, 1, cv2.LINE_AA)


def score_histogram(scores: np.ndarray, kept: np.ndarray, cut: float, *, n_unscorable: int = 0, title: str = "",
                    size: tuple[int, int] = (720, 400), bins: int = 20) -> np.ndarray:
    """Bar histogram of ``scores`` (N,) in [0, 1] split by ``kept`` (N,) bool; (H, W, 3) uint8 RGB."""
    w, h = size
    img = np.full((h, w, 3), 255, np.uint8)
    left, right, top, bottom = 56, 20, 40, 46
    pw, ph = w - left - right, h - top - bottom
    scores, kept = np.clip(np.asarray(scores, float), 0, 1), np.asarray(kept, bool)
    edges = np.linspace(0, 1, bins + 1)
    n_kept = np.histogram(scores[kept], edges)[0]
    n_dropped = np.histogram(scores[~kept], edges)[0]
    top_count = max(int((n_kept + n_dropped).max(initial=0)), 1)
    px = lambda s: left + int(round(s * pw))  # noqa: E731
    py = lambda n: top + ph - int(round(n / top_count * ph))  # noqa: E731
    for i in range(bins):
        x0, x1 = px(edges[i]) + 1, px(edges[i + 1]) - 1
        if n_dropped[i]:
            cv2.rectangle(img, (x0, py(n_dropped[i])), (x1, py(0)), DROPPED, -1)
        if n_kept[i]:
            cv2.rectangle(img, (x0, py(n_dropped[i] + n_kept[i])), (x1, py(n_dropped[i])), KEPT, -1)
    cv2.line(img, (left, top + ph), (left + pw, top + ph), AXIS, 1)
    cv2.line(img, (left, top), (left, top + ph), AXIS, 1)
    for s in np.linspace(0, 1, 5):
        cv2.line(img, (px(s), top + ph), (px(s), top + ph + 4), AXIS, 1)
        _text(img, f"{s:.2f}", (px(s) - 14, top + ph + 18))
    for n in sorted({0, top_count // 2, top_count}):
        _text(img, str(n), (8, py(n) + 4))
    _text(img, "score", (left + pw // 2 - 20, h - 8))
    x = px(min(max(cut, 0.0), 1.0))
    for y in range(top - 6, top + ph, 10):  # dashed
        cv2.line(img, (x, y), (x, min(y + 5, top + ph)), (0, 0, 0), 2)
    _text(img, f"cut {cut:.3f}", (min(x + 6, w - 90), top + 24), colour=(0, 0, 0))
    legend = f"kept {int(kept.sum())}   dropped {int((~kept).sum())}"
    if n_unscorable:
        legend += f"   (+{n_unscorable} unscorable, dropped)"
    _text(img, title, (left, 18), 0.5, (0, 0, 0))
    _text(img, legend, (left, 34), 0.42, AXIS)
    cv2.rectangle(img, (w - 150, 8), (w - 138, 20), KEPT, -1)
    _text(img, "kept", (w - 132, 19))
    cv2.rectangle(img, (w - 90, 8), (w - 78, 20), DROPPED, -1)
    _text(img, "dropped", (w - 72, 19))
    return img


def overlay(he_hema: np.ndarray, ihc_hema: np.ndarray) -> np.ndarray:
    """Two hematoxylin densities (H, W) as magenta (H&E) + green (IHC) on black; (H, W, 3) uint8 RGB."""
    def norm(d):
        top = float(np.percentile(d, 99.5)) or 1.0
        return np.clip(d / top, 0, 1)

    a, b = norm(he_hema), norm(ihc_hema)
    return (np.stack([a, b, a], axis=-1) * 255).astype(np.uint8)


def gallery_row(he: np.ndarray, ihc: np.ndarray, ihc_hema: np.ndarray, shift, label: str,
                thumb: int = 240) -> np.ndarray:
    """One row (thumb, 4*thumb, 3) uint8: H&E, IHC, overlay as given, overlay after undoing ``shift`` (x, y) px."""
    he_hema = stain_channel(he, HEMATOXYLIN)
    after = register_image(ihc_hema, shift) if shift is not None else ihc_hema
    size = (thumb, thumb)
    panels = [he, ihc, overlay(he_hema, ihc_hema), overlay(he_hema, after)]
    row = np.concatenate([cv2.resize(p, size, interpolation=cv2.INTER_AREA) for p in panels], axis=1)
    if shift is None:
        row[:, 3 * thumb:] = 255
        _text(row, "unscorable", (3 * thumb + 8, thumb // 2))
    _text(row, label, (6, 16), 0.42, (255, 255, 255), outline=True)
    return row


def gallery(rows: list[np.ndarray], thumb: int = 240) -> np.ndarray:
    """Rows under a header naming the columns; (H, W, 3) uint8 RGB."""
    if not rows:
        raise ValueError("no pairs to show")
    header = np.full((26, rows[0].shape[1], 3), 255, np.uint8)
    for i, title in enumerate(GALLERY_COLUMNS):
        _text(header, title, (i * thumb + 8, 18), 0.5, (0, 0, 0))
    parts = [header]
    for row in rows:
        parts += [row, np.full((3, row.shape[1], 3), 255, np.uint8)]
    return np.concatenate(parts[:-1], axis=0)


def worst_rows(folder: Path, rows: list[dict], n: int = 8, thumb: int = 240) -> np.ndarray | None:
    """Gallery of the ``n`` lowest-scoring pairs of a dataset (unscorable ones last); None if there are none.

    ``rows`` are the keep-list rows of :mod:`.store` (``name``, ``shard``,
    ``alignment``, ``reason``); images are read from the shards (or their
    source files for shards without images).
    """
    order = sorted(rows, key=lambda r: (not r["alignment"].scored, r["alignment"].score, r["split"], r["name"]))
    pictures = []
    for r in order[:n]:
        path = Path(folder) / r["shard"]
        root = Path(read_header(path).get("source_root", "."))
        with h5py.File(path, "r") as f:
            g = next(f["samples"][k] for k in f["samples"] if _plain(f["samples"][k].attrs["name"]) == r["name"])
            he, ihc = pair_images(g, root)
            hema = sample_channels(g, ihc)[1]
        a = r["alignment"]
        if a.scored:
            label = f"{r['name']}  score {a.score:.3f}  shift ({a.shift_x:+.1f}, {a.shift_y:+.1f}) px  " \
                    f"rot {a.rotation:+.1f} deg"
        else:
            label = f"{r['name']}  {r['reason']}"
        pictures.append(gallery_row(he, ihc, hema, (a.shift_x, a.shift_y) if a.scored else None, label, thumb))
    return gallery(pictures, thumb) if pictures else None


def dataset_pictures(folder: Path, rows: list[dict], cut: float, worst: int = 8) -> dict[str, np.ndarray]:
    """The pictures of one dataset folder, by file name (in :data:`PICTURES` order); (H, W, 3) uint8 RGB.

    Always the histogram of the scored pairs' scores (``cut`` as its dashed
    line, unscorable pairs counted in the legend); the gallery of the
    ``worst`` lowest-scoring pairs (:func:`worst_rows`) only when there is a
    pair to show. ``rows`` are the folder's keep-list rows of :mod:`.store`.
    """
    scored = [r for r in rows if r["alignment"].scored]
    pictures = {PICTURES[0]: score_histogram([r["alignment"].score for r in scored], [r["kept"] for r in scored],
                                             cut, n_unscorable=len(rows) - len(scored),
                                             title=f"{Path(folder).name}: alignment scores ({len(rows)} pairs)")}
    gallery_of_worst = worst_rows(folder, rows, worst)
    if gallery_of_worst is not None:
        pictures[PICTURES[1]] = gallery_of_worst
    return pictures


def encode_png(rgb: np.ndarray, path: Path) -> bytes:
    """PNG bytes of an (H, W, 3) uint8 RGB picture; :class:`PictureError` naming ``path`` if OpenCV cannot."""
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise PictureError(f"{path}: could not encode PNG")
    return png.tobytes()
