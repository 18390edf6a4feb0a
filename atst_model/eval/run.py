"""``evaluate``: per-image PSNR/SSIM/CSS, FID, KID x1000 and PHV of fake vs real folders.

Outputs in ``out_dir``: ``per_image.csv`` (name, psnr, ssim, css), ``summary.json``
(means, FID, KID, PHV, the feature extractors and conventions used, rejected
inputs, and with ``compare`` the paper's published numbers), ``report.png`` (metrics
table and best/median/worst pairs by SSIM), ``histograms.png`` and a self-contained
``report.html`` (see :mod:`.report`); with a synthetic ``truth`` file, ``truth_scores.csv``
(one row per tile scored against the exact truth, see :mod:`.truth`).
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from atst_model.metrics import css, frechet_distance, kid_x1000, phv_per_layer, psnr, ssim
from atst_prep.errors import checked
from atst_prep.images import InputError
from atst_prep.mask import MaskConfig

from . import features as feat
from . import published as pub
from .pairs import Pair, load_pair, match_pairs
from .report import write_reports

__all__ = ["EvalResult", "evaluate", "fid"]


def fid(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """FID equal to :func:`atst_model.metrics.frechet_distance`, via the nuclear norm.

    With centred features ``A`` (``N_a x D``) and ``B``, ``S_a = A^T A / (N_a - 1)``,
    the non-zero eigenvalues of ``S_a S_b`` are the squared singular values of
    ``A B^T / sqrt((N_a - 1)(N_b - 1))``, so ``tr(sqrtm(S_a S_b))`` is that
    matrix's nuclear norm: an ``N_a x N_b`` SVD instead of a ``D x D`` ``sqrtm``
    (2048-d: milliseconds instead of ~15 s), and no imaginary round-off. Falls
    back to ``frechet_distance`` when ``N > D``.
    """
    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        return frechet_distance(a, b)  # its validation and messages
    if max(len(a), len(b)) > a.shape[1]:
        return frechet_distance(a, b)
    ca, cb = a - a.mean(axis=0), b - b.mean(axis=0)
    na, nb = len(a) - 1, len(b) - 1
    cross = np.linalg.svd(ca @ cb.T, compute_uv=False).sum() / np.sqrt(na * nb)
    diff = a.mean(axis=0) - b.mean(axis=0)
    return float(diff @ diff + (ca * ca).sum() / na + (cb * cb).sum() / nb - 2.0 * cross)


@dataclass
class EvalResult:
    """What :func:`evaluate` measured and wrote into ``out_dir``.

    ``rejected`` (one line per unusable input of the metrics) and
    ``truth_rejected`` (of the truth scores) are kept apart, as the command
    prints them; ``truth`` is the truth scores' summary (:func:`.truth.summarise`),
    None without a truth file.
    """

    summary: dict
    rows: list[dict]
    rejected: list[str] = field(default_factory=list)
    out_dir: Path | None = None
    truth: dict | None = None
    truth_rejected: list[str] = field(default_factory=list)


def _finite(x: float) -> float | str:
    return x if math.isfinite(x) else ("inf" if x > 0 else "-inf")


def evaluate(fake_dir, real_dir, he_dir=None, out_dir="eval", device: str = "cpu", *,
             inception_weights=None, resnet_weights=None, kid_weights=None, fid_weights=None,
             kid_subsets: int = 100, kid_seed: int = 0,
             phv_threshold: float = 0.01, phv_normalisation: str = "asp", batch: int = 16, compare: str | None = None,
             truth=None, closing_radius: int = 30, on_start: Callable[[int], None] | None = None,
             on_pair: Callable[[], None] | None = None) -> EvalResult:
    """Evaluate the fakes in ``fake_dir`` against the same-named reals in ``real_dir``.

    Unmatched names, unreadable files and size mismatches are reported in
    ``EvalResult.rejected`` (one line each) and skipped. PHV is ``None`` (with a
    warning) when no ResNet-50 weights are found. ``compare`` (her2, er, bci, ... see
    :func:`.published.names`) adds the paper's Table 1 numbers to the summary and the report.
    ``on_start(n)`` gets the number of matched pairs, ``on_pair()`` is called after each.
    KID uses torchvision's ImageNet Inception-v3 (the published convention) when ``kid_weights``
    is given or ``inception_v3_google-*.pth`` is in the torch hub cache, FID pytorch-fid's
    Inception likewise (``fid_weights``, ``pt_inception-2015-12-05-*.pth``); otherwise both use
    the bundled TorchScript Inception, labelled as such in ``summary["conventions"]``.
    ``truth`` (``truth_<split>.npz`` of ``atst data synth``) also scores each fake against the
    exact truth into ``truth_scores.csv`` (:func:`.truth.score_folder`, the classical counter,
    Eq. 1 with ``closing_radius``), after the other outputs are written.
    Raises :class:`InputError` for missing folders / weights / truth file (checked before any
    work), an unknown ``compare`` name, or when no pair is usable; :class:`atst_prep.errors.ConfigError` for a
    bad ``closing_radius``.
    """
    if truth is not None:  # before any work
        if not Path(truth).is_file():
            raise InputError(truth, "truth file not found (truth_<split>.npz of 'atst data synth')")
        mask_config = checked(MaskConfig, closing_radius=closing_radius)
    if kid_subsets < 1:
        raise InputError("--kid-subsets", f"must be >= 1, got {kid_subsets}")
    if phv_normalisation not in feat.PHV_NORMALISATIONS:
        raise InputError("--phv-normalisation", f"must be one of {', '.join(feat.PHV_NORMALISATIONS)}")
    published = None if compare is None else pub.compare(compare)  # an unknown name fails before any work
    pairing = match_pairs(Path(fake_dir), Path(real_dir), None if he_dir is None else Path(he_dir))
    rejected = list(pairing.unmatched)
    # fail fast, before any work: every feature network is loaded now
    kid_path = feat.find_hub_weights(kid_weights, feat.TORCHVISION_INCEPTION, "torchvision Inception-v3", "--kid-weights")
    fid_path = feat.find_hub_weights(fid_weights, feat.PYTORCH_FID_INCEPTION, "pytorch-fid Inception", "--fid-weights")
    extractors = {}
    if kid_path is None or fid_path is None or inception_weights is not None:
        inception = feat.load_inception(inception_weights, device)
        extractors["bundled"] = lambda imgs: feat.inception_features(imgs, device=device, batch=batch, model=inception)
    for key, path in (("kid", kid_path), ("fid", fid_path)):
        if path is not None:
            model = feat.load_torch_inception(path, key, device)
            extractors[key] = (lambda m: lambda imgs: feat.torch_inception_features(imgs, m, device, batch))(model)
    source = {"kid": "kid" if kid_path is not None and inception_weights is None else "bundled",
              "fid": "fid" if fid_path is not None and inception_weights is None else "bundled"}
    extractors = {k: v for k, v in extractors.items() if k in source.values()}
    resnet_path = feat.find_resnet_weights(resnet_weights)
    resnet = feat.load_resnet(resnet_path, device) if resnet_path is not None else None
    if resnet is None:
        warnings.warn(feat.resnet_hint(), stacklevel=2)
    if on_start is not None:
        on_start(len(pairing.pairs))

    rows: list[dict] = []
    used: list[Pair] = []
    feats: dict[str, tuple[list, list]] = {k: ([], []) for k in extractors}
    res_fake, res_real = [], []
    buf_fake, buf_real = [], []

    def flush():
        if buf_fake:
            for key, extract in extractors.items():
                feats[key][0].append(extract(buf_fake))
                feats[key][1].append(extract(buf_real))
            buf_fake.clear()
            buf_real.clear()

    for pair in pairing.pairs:
        try:
            fake, real, _ = load_pair(pair)
        except InputError as exc:
            rejected.append(str(exc))
        else:
            rows.append({"name": pair.name, "psnr": psnr(fake, real), "ssim": ssim(fake, real), "css": css(fake, real)})
            used.append(pair)
            buf_fake.append(fake)
            buf_real.append(real)
            if len(buf_fake) >= batch:
                flush()
            if resnet is not None:
                for store, img in ((res_fake, fake), (res_real, real)):
                    store.append(feat.resnet_features([img], device=device, normalisation=phv_normalisation,
                                                      model=resnet))
        if on_pair is not None:
            on_pair()
    flush()
    if not rows:
        raise InputError(fake_dir, "no usable fake/real pair (see the lines above)")

    summary: dict = {"pairs": len(rows), "rejected": len(rejected),
                     "inputs": {"fake": str(fake_dir), "real": str(real_dir),
                                "he": None if he_dir is None else str(he_dir)}}
    for key in ("psnr", "ssim", "css"):
        values = np.array([r[key] for r in rows], dtype=np.float64)
        summary[f"{key}_mean"] = _finite(float(values.mean()))
    stacked = {k: (np.concatenate(a), np.concatenate(b)) for k, (a, b) in feats.items()}
    if len(rows) >= 2:
        summary["fid"] = fid(*stacked[source["fid"]])
        kid_mean, kid_std = kid_x1000(*stacked[source["kid"]], subsets=kid_subsets, seed=kid_seed)
        summary["kid_x1000_mean"], summary["kid_x1000_std"] = kid_mean, kid_std
    else:
        warnings.warn("FID and KID need at least 2 pairs; reported as null", stacklevel=2)
        summary["fid"] = summary["kid_x1000_mean"] = summary["kid_x1000_std"] = None
    if resnet is not None:
        layers = {name: (np.concatenate([f[name] for f in res_fake]), np.concatenate([r[name] for r in res_real]))
                  for name in feat.LAYERS}
        per_layer, mean = phv_per_layer(layers, threshold=phv_threshold)
        summary["phv"] = {**per_layer, "mean": mean}
    else:
        summary["phv"] = None
    summary["conventions"] = {
        "psnr_ssim": "scikit-image on uint8 RGB at full resolution, SSIM channel_axis=2, data_range=255",
        "css": "SSIM contrast-structure term, uniform 5x5 valid windows, per channel then averaged (sewar)",
        "fid": "Frechet distance of 2048-d pool features of all images (sample covariance, float64; trace of the matrix square root as a nuclear norm, equal to the sqrtm formula)",
        "kid": f"unbiased MMD^2, cubic polynomial kernel, {kid_subsets} subsets of min(N, 100), seed {kid_seed}, x1000",
        "inception_features": {"extractor": feat.INCEPTION_LABEL if inception_weights is None else
                               f"user TorchScript feature extractor {inception_weights}",
                               "input": "resized to 299x299 (nv_bilinear on 0-255 floats), scaled to [-1, 0.9921875]"},
        "kid_features": (f"{feat.KID_LABEL}, weights {kid_path}" if source["kid"] == "kid" else
                         "the inception_features above (offline default, NOT the published KID network: pass "
                         "--kid-weights inception_v3_google-*.pth or put it in the torch hub cache)"),
        "fid_features": (f"{feat.FID_LABEL}, weights {fid_path}" if source["fid"] == "fid" else
                         "the inception_features above (offline default; --fid-weights takes pytorch-fid's "
                         "pt_inception-2015-12-05-*.pth)"),
        "phv": {"network": f"torchvision ResNet-50, weights {resnet_path}" if resnet_path else None,
                "layers": list(feat.LAYERS), "threshold": phv_threshold, "normalisation": phv_normalisation,
                "normalisation_note": "asp: [0,1] images through (x+1)/2 then ImageNet mean/std, as ASP/MIST's "
                                      "script; imagenet: ImageNet mean/std on [0,1]"},
    }
    summary["rejected_inputs"] = rejected
    if published is not None:
        summary["published"] = published

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "per_image.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["name", "psnr", "ssim", "css"])
        writer.writeheader()
        writer.writerows(rows)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_reports(out, summary, rows, used)
    result = EvalResult(summary, rows, rejected, out)
    if truth is not None:
        from atst_prep.nuclei import make_counter

        from .truth import score_folder

        _, result.truth, result.truth_rejected = score_folder(Path(fake_dir), Path(real_dir), Path(truth), mask_config,
                                                              make_counter("classical"),
                                                              out_csv=out / "truth_scores.csv")
    return result
