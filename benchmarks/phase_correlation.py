"""Phase correlation: ours vs OpenCV's vs scikit-image's, on real tissue with known shifts (issue 14).

Run: ``python benchmarks/phase_correlation.py [--n 30]`` (one thread, about a minute).

Compared, on the same inputs (hematoxylin density, Gaussian blur 1 px,
mean removed, as :class:`atst_prep.align.score._Level` prepares them; one
Hann window for all):

- ``ours``: :func:`atst_prep.align.score.phase_correlation` (whitened cross
  power spectrum, 3x3 centroid of the positive peak lobe);
- ``cv2``: ``cv2.phaseCorrelate(a, b, cv2.createHanningWindow(...))``
  (whitened, 5x5 weighted centroid; called on copies, as OpenCV 5.0 windows
  its inputs in place);
- ``skimage xU``: ``skimage.registration.phase_cross_correlation`` on the
  windowed images, ``normalization="phase"``, ``upsample_factor=U``
  (upsampled-DFT refinement; it takes no window, so the inputs are windowed
  beforehand).

Cases (``--n`` random shifts each, uniform in +-40 px per axis, 512 px tiles):

1. ``ihc-sample``: scikit-image's real IHC image (``skimage.data.immunohistochemistry``),
   its hematoxylin (:mod:`atst_prep.stain`) against the same image moved by a
   sub-pixel shift (bicubic); central 432 px crops (the 512 px image leaves no
   more room around a 40 px shift); ``ihc-float``: the same, but the
   hematoxylin itself moved, in float (no rounding to bytes: an idealisation
   without noise, where a whitened correlation peak is a pure sinc);
2. ``he-int`` / ``he-sub`` / ``he-noise``: the real H&E slide of ``tests/data``
   (``tests/realslide.py``), a 512 px tile against the slide cut 512 px at
   the tile moved by an integer shift (exact), a sub-pixel shift (bicubic on
   the RGB, rounded to bytes), and a sub-pixel shift with independent
   Gaussian noise (sigma 12 grey levels) on both;
3. ``he-vs-ihc``: the H&E tile against its IHC-like re-staining under the
   known shift (:func:`atst_prep.align.realpairs.misaligned_pair`, rotation 0,
   no elastic field: the shift is the whole truth; other stain balance, blur,
   noise, JPEG);
4. ``... /2``: cases 1, 2 (sub-pixel) and 3 reduced 2x, as ``align_pair``
   works on 512 px tiles (256 px); errors still in px of the 512 px tile.

Printed per case and method: mean and max error (px) against the known
shift, ms per call, both as ratios to ours, and the response each method
reports (ours: the normalised peak height; cv2: its ``response``; skimage:
its ``error``) on the matched pairs and on unrelated pairs (two different
tiles). Then an end-to-end check: :func:`atst_prep.align.score.align_pair`
(rotation search on, 512 px tiles reduced to 256 px) on ``he-vs-ihc`` pairs
with |rotation| <= 3 deg, rigid and with a 1.5 px elastic field (which no
translation can undo), with the core swapped for each method: shift and
rotation error, median ms per pair.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atst_prep.align import score  # noqa: E402
from atst_prep.align.realpairs import misaligned_pair  # noqa: E402
from atst_prep.stain import HEMATOXYLIN, dab_and_hematoxylin, stain_channel  # noqa: E402
from tests.realslide import TILES_512, read_slide  # noqa: E402

SIZE = 512
MAX_SHIFT = 40.0

ours_core = score.phase_correlation  # the hand-written function, kept for the swap below


def prepare(hema: np.ndarray) -> np.ndarray:
    """As :meth:`score._Level.make`: blur 1 px, remove the mean, float32."""
    hema = cv2.GaussianBlur(np.asarray(hema, np.float32), (0, 0), 1.0)
    return hema - np.float32(hema.mean())


def run_ours(a, b, window):
    return ours_core(a, b, window)


def run_cv2(a, b, window):
    (dx, dy), response = cv2.phaseCorrelate(a.copy(), b.copy(), window)  # copies: 5.0 windows them in place
    return dx, dy, response


def make_skimage(upsample: int):
    from skimage.registration import phase_cross_correlation

    def run(a, b, window):
        shift, error, _ = phase_cross_correlation(a * window, b * window, upsample_factor=upsample,
                                                  normalization="phase")
        return -float(shift[1]), -float(shift[0]), float(error)  # (row, col) to undo -> (dx, dy) of b's content

    return run


METHODS = {"ours": run_ours, "cv2": run_cv2, "skimage x10": make_skimage(10), "skimage x20": make_skimage(20)}


# --------------------------------------------------------------------------- cases


def moved_rgb(image: np.ndarray, origin, size: int, shift, *, as_bytes: bool = True) -> np.ndarray:
    """``size`` px of ``image`` at ``origin`` (x, y) whose content is moved by ``shift``: out(p) = image(p - shift).

    Rounded to uint8 (as a scanned tile is) unless ``as_bytes`` is False.
    """
    dx, dy = shift
    x0, y0 = origin
    margin = int(np.ceil(max(abs(dx), abs(dy)))) + 4  # warp only the neighbourhood the shift reaches
    rx, ry = max(x0 - margin, 0), max(y0 - margin, 0)
    region = image[ry:y0 + size + margin, rx:x0 + size + margin].astype(np.float32)
    m = np.float32([[1, 0, x0 - rx - dx], [0, 1, y0 - ry - dy]])
    out = cv2.warpAffine(region, m, (size, size), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_REFLECT)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8) if as_bytes else out


def noisy(rgb: np.ndarray, rng, sigma: float) -> np.ndarray:
    return np.clip(np.rint(rgb + rng.normal(0, sigma, rgb.shape)), 0, 255).astype(np.uint8)


def cases(n: int, slide: np.ndarray):
    """{case: list of (a_hema, b_hema, true (dx, dy))} and unrelated pairs (a, b)."""
    from skimage.data import immunohistochemistry

    rng = np.random.default_rng(14)
    shifts = rng.uniform(-MAX_SHIFT, MAX_SHIFT, (n, 2))
    out = {name: [] for name in ("ihc-sample", "ihc-float", "he-int", "he-sub", "he-noise", "he-vs-ihc")}
    ihc = np.ascontiguousarray(immunohistochemistry())
    crop = 512 - 2 * int(MAX_SHIFT)
    h_ihc = stain_channel(ihc, HEMATOXYLIN)
    c0 = int(MAX_SHIFT)
    for i, (dx, dy) in enumerate(shifts):
        moved = moved_rgb(ihc, (c0, c0), crop, (dx, dy))
        out["ihc-sample"].append((h_ihc[c0:c0 + crop, c0:c0 + crop], stain_channel(moved, HEMATOXYLIN), (dx, dy)))
        out["ihc-float"].append((h_ihc[c0:c0 + crop, c0:c0 + crop],
                                 moved_rgb(h_ihc, (c0, c0), crop, (dx, dy), as_bytes=False), (dx, dy)))
        origin = TILES_512[i % len(TILES_512)]
        x0, y0 = origin
        he = np.ascontiguousarray(slide[y0:y0 + SIZE, x0:x0 + SIZE])
        h_he = stain_channel(he, HEMATOXYLIN)
        ix, iy = int(round(dx)), int(round(dy))
        shifted = np.ascontiguousarray(slide[y0 - iy:y0 - iy + SIZE, x0 - ix:x0 - ix + SIZE])
        out["he-int"].append((h_he, stain_channel(shifted, HEMATOXYLIN), (ix, iy)))
        moved = moved_rgb(slide, origin, SIZE, (dx, dy))
        out["he-sub"].append((h_he, stain_channel(moved, HEMATOXYLIN), (dx, dy)))
        out["he-noise"].append((stain_channel(noisy(he, rng, 12), HEMATOXYLIN),
                                stain_channel(noisy(moved, rng, 12), HEMATOXYLIN), (dx, dy)))
        pair = misaligned_pair(slide, origin, SIZE, (dx, dy), 0.0, 100 + i, elastic=0.0)
        out["he-vs-ihc"].append((h_he, dab_and_hematoxylin(pair.ihc)[1], (dx, dy)))
    for name in ("ihc-sample", "he-sub", "he-vs-ihc"):  # as align_pair sees them: reduced 2x (INTER_AREA)
        out[f"{name} /2"] = [(score.reduce(a, 2), score.reduce(b, 2), (t[0] / 2, t[1] / 2)) for a, b, t in out[name]]
    unrelated = []
    for i in range(n):
        j, k = rng.choice(len(TILES_512), 2, replace=False)
        (xa, ya), (xb, yb) = TILES_512[j], TILES_512[k]
        unrelated.append((stain_channel(np.ascontiguousarray(slide[ya:ya + SIZE, xa:xa + SIZE]), HEMATOXYLIN),
                          stain_channel(np.ascontiguousarray(slide[yb:yb + SIZE, xb:xb + SIZE]), HEMATOXYLIN)))
    return out, unrelated


def measure(method, items):
    """(errors px, seconds per call, responses) of ``method`` over (a, b, truth) items."""
    errors, times, responses = [], [], []
    for a, b, truth in items:
        a, b = prepare(a), prepare(b)
        window = score.hann(a.shape)
        t0 = time.perf_counter()
        dx, dy, response = method(a, b, window)
        times.append(time.perf_counter() - t0)
        if truth is not None:
            errors.append(float(np.hypot(dx - truth[0], dy - truth[1])))
        responses.append(float(response))
    return np.array(errors), float(np.median(times)), float(np.mean(responses))


def end_to_end(n: int, slide: np.ndarray, elastic: float):
    """align_pair with each core swapped in: shift errors (px), rotation errors (deg), median ms per pair.

    The methods take turns on each pair, so the shared machine's load falls on all alike.
    """
    rng = np.random.default_rng(41)
    errors = {name: [] for name in METHODS}
    rot_errors = {name: [] for name in METHODS}
    times = {name: [] for name in METHODS}
    try:
        for i in range(n):
            shift = rng.uniform(-MAX_SHIFT, MAX_SHIFT, 2)
            pair = misaligned_pair(slide, TILES_512[i % len(TILES_512)], SIZE, shift, float(rng.uniform(-3, 3)),
                                   200 + i, elastic=elastic)
            hema = dab_and_hematoxylin(pair.ihc)[1]
            for name, method in METHODS.items():
                score.phase_correlation = method
                t0 = time.perf_counter()
                a = score.align_pair(pair.he, hema, pair.ihc)
                times[name].append(time.perf_counter() - t0)
                errors[name].append(float(np.hypot(a.shift_x - pair.shift[0], a.shift_y - pair.shift[1])))
                rot_errors[name].append(abs(a.rotation - pair.rotation))
    finally:
        score.phase_correlation = ours_core
    return {name: (np.array(errors[name]), np.array(rot_errors[name]), float(np.median(times[name])))
            for name in METHODS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=30, help="shifts per case")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    slide = read_slide()
    data, unrelated = cases(args.n, slide)
    unrelated_items = [(a, b, None) for a, b in unrelated]
    print(f"phase correlation, {args.n} shifts per case, |dx|, |dy| <= {MAX_SHIFT:g} px, one thread\n")
    print("| case | method | mean err px | max err px | err vs ours | ms/call | time vs ours "
          "| response (matched) | response (unrelated) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    unrelated_response = {name: measure(m, unrelated_items)[2] for name, m in METHODS.items()}
    for case, items in data.items():
        base = None
        factor = 2 if case.endswith("/2") else 1  # errors in px of the 512 px tile
        for name, method in METHODS.items():
            errors, seconds, response = measure(method, items)
            errors = errors * factor
            base = base or (errors.mean(), seconds)
            print(f"| {case} | {name} | {errors.mean():.3f} | {errors.max():.3f} | {errors.mean() / base[0]:.2f} "
                  f"| {seconds * 1e3:.2f} | {seconds / base[1]:.2f} | {response:.3f} "
                  f"| {unrelated_response[name]:.3f} |")
    for elastic in (0.0, 1.5):
        print(f"\nend to end: align_pair on {args.n} he-vs-ihc pairs (512 px -> 256 px working, "
              f"{elastic:g} px elastic, |rotation| <= 3 deg)\n")
        print("| core | mean shift err px | max shift err px | mean rotation err deg | ms/pair | time vs ours |")
        print("|---|---:|---:|---:|---:|---:|")
        rows = end_to_end(args.n, slide, elastic)
        base = rows["ours"][2]
        for name, (errors, rot, t) in rows.items():
            print(f"| {name} | {errors.mean():.3f} | {errors.max():.3f} | {rot.mean():.3f} | {t * 1e3:.1f} "
                  f"| {t / base:.2f} |")

if __name__ == "__main__":
    main()
