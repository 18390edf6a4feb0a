"""Every GPU measurement in one run: the script to spend a lent device's 15 minutes on.

Run on the device: ``python benchmarks/gpu_check.py [--budget-s 480] [--json F] [--md F]``;
anywhere: ``python benchmarks/gpu_check.py --smoke`` (the same code on the CPU, tiny networks and
sizes, about a minute; a test runs it; there ``torch.compile`` is switched off, so the "compiled"
figures are eager ones and the JSON says ``compiled_for_real: false``).

Sections, each timed and bounded (a section that fails or runs out of time is reported as such and
the next one runs; a section is skipped when less than its estimate is left):

1. ``train``: one training step per 512 crop, reference style (fp32, batch 1, G1's nine 224 tiles one
   at a time, overwritten) vs ours (bf16, batch 8, tiles batched and blended, channels-last), eager
   and ``torch.compile``d (the first compiled step, i.e. the compile warm-up, is reported apart),
   model TFLOP/s and the share of the card's bf16 peak (goals: >= 15x, >= 40 %).
2. ``aux``: L1-L5 forward + backward at r = 30 on a batch of 512 crops, and the perfect-fake check on
   the device (the real IHC as the fake: every term ~0).
3. ``translate``: ``translate_image`` Mpx/s with G1 native and tiles224 (goals 100 and 70 Mpx/s), and a
   synthetic pyramidal slide through ``translate_slide`` (goal: >= 80 % of native).
4. ``cppnet``: the bundled CPP-Net's batched forward, tiles and Mpx per second; and the whole count of a
   real dense 1024 px tile (network in batches of 8, refinement, NMS), s per pair (goal: <= 1 s).

Writes one JSON and a Markdown section (card name, every figure beside its goal) to paste into
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from atst_model.losses import TERMS, AuxLossConfig, AuxLosses  # noqa: E402
from atst_model.networks import count_flops, create_network  # noqa: E402
from atst_model.train.config import TrainerConfig  # noqa: E402
from atst_model.train.trainer import Dist, Trainer  # noqa: E402
from atst_prep.build import BuildConfig, build  # noqa: E402
from atst_prep.mask import MaskConfig, window_masks, window_origins  # noqa: E402
from atst_prep.sources import detect  # noqa: E402
from atst_prep.stain import dab_channel  # noqa: E402
from atst_prep.synth import SynthConfig, write_dataset  # noqa: E402

GOALS = {"train_ratio": 15.0, "train_peak_share": 0.40, "translate_native_mpx_s": 100.0,
         "translate_tiles224_mpx_s": 70.0, "slide_share_of_native": 0.80}


class Check:
    """The run's settings (full or smoke) and its clock."""

    def __init__(self, smoke: bool, budget_s: float) -> None:
        self.smoke = smoke
        self.cuda = torch.cuda.is_available() and not smoke
        self.device = "cuda" if self.cuda else "cpu"
        self.name = torch.cuda.get_device_name() if self.cuda else "CPU (smoke)"
        self.deadline = time.perf_counter() + budget_s
        self.crop, self.tile_size = (224, 256) if smoke else (512, 1024)
        self.nets = (dict(g1="g1-tiny", g2="g2-tiny", d="d-tiny") if smoke else
                     dict(g1="g1-vitb", g2="g2-resunet", d="d-patchgan"))
        self.batch, self.steps = (2, 1) if smoke else (8, 10)
        self.radius = 5 if smoke else 30

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def timed(self, fn, repeats: int) -> float:
        """Seconds per call: one warm-up call, then the mean of ``repeats``."""
        fn()
        self.sync()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        self.sync()
        return (time.perf_counter() - start) / repeats


def _shards(check: Check, tmp: Path) -> Path:
    write_dataset(tmp / "data", n_train=4, n_val=0, config=SynthConfig(size=check.tile_size), seed=5)
    build(detect(tmp / "data"), tmp / "shards", BuildConfig(mask=MaskConfig(closing_radius=check.radius),
                                                             shard_size=4, counter="classical", window=check.crop))
    return tmp / "shards" / "mist-her2"


def section_train(check: Check, tmp: Path) -> dict:
    from train_step import BF16_PEAK, reference_g1, time_steps

    base = TrainerConfig(shards=str(_shards(check, tmp)), out=str(tmp / "run"), crop=check.crop, num_workers=0,
                         checkpoint_every=10 ** 9, sample_every=10 ** 9, **check.nets)
    ref = Trainer(replace(base, batch=1, precision="fp32", channels_last=False), device=check.device, resume=None,
                  dist_info=Dist())
    ref.g1_train = reference_g1(ref.g1)
    batch1 = next(iter(ref.loader()))
    ref_s = time_steps(ref, batch1, check.steps, check.sync)
    del ref
    batch = {k: (torch.cat([v] * check.batch) if isinstance(v, torch.Tensor) else v * check.batch)
             for k, v in batch1.items()}
    out = {"reference_ms_per_crop": 1e3 * ref_s, "compiled_for_real": not check.smoke}
    import torch._dynamo as dynamo

    if check.smoke:  # the code path only: inductor's CPU compile would take the smoke run's whole minute
        dynamo.config.disable = True
    for name, compile_ in (("eager", False), ("compiled", True)):
        if check.cuda:
            torch.cuda.empty_cache()
        trainer = Trainer(replace(base, batch=check.batch, precision="bf16", channels_last=True, compile=compile_),
                          device=check.device, resume=None, dist_info=Dist())
        t0 = time.perf_counter()
        trainer.step(batch)  # the compile warm-up, when compiling
        check.sync()
        first = time.perf_counter() - t0
        ms = 1e3 * time_steps(trainer, batch, check.steps, check.sync) / check.batch
        out[name] = {"ms_per_crop": ms, "ratio": 1e3 * ref_s / ms, "first_step_s": first}
        del trainer
    if check.smoke:
        dynamo.config.disable = False
    with torch.device("meta"):
        g1, g2, d = (create_network(check.nets[k]) for k in ("g1", "g2", "d"))
    shape = (1, 3, check.crop, check.crop)
    flops = 3 * (2 * count_flops(g1, shape) + 2 * count_flops(g2, shape) + 4 * count_flops(d, shape))
    best = min(out["eager"]["ms_per_crop"], out["compiled"]["ms_per_crop"])
    peak = next((v for k, v in BF16_PEAK.items() if k in check.name), None)
    out.update(batch=check.batch, model_gflop_per_crop=flops / 1e9, tflops=flops / (best / 1e3) / 1e12,
               peak_tflops=peak, peak_share=flops / (best / 1e3) / 1e12 / peak if peak else None)
    return out


def _real_crops(check: Check) -> tuple[torch.Tensor, torch.Tensor]:
    """Real IHC crops (scikit-image's sample mirrored) in [-1, 1] on the device, and their window masks."""
    from skimage import data

    ihc = data.immunohistochemistry()
    top = np.concatenate([ihc, ihc[:, ::-1]], axis=1)
    tile = np.ascontiguousarray(np.concatenate([top, top[::-1]], axis=0))  # 1024 x 1024
    c = check.crop
    origins = window_origins(1024, 1024, c, c)[:check.batch]
    masks = window_masks(dab_channel(tile), origins, c, MaskConfig(closing_radius=check.radius))
    x = torch.from_numpy(np.stack([tile[y:y + c, x0:x0 + c] for y, x0 in origins])).permute(0, 3, 1, 2)
    to = dict(device=check.device)
    return (x.float() / 127.5 - 1).to(**to), torch.from_numpy(masks).float()[:, None].to(**to)


def section_aux(check: Check, tmp: Path) -> dict:
    real, masks = _real_crops(check)
    aux = AuxLosses(AuxLossConfig(mask=MaskConfig(closing_radius=check.radius))).to(check.device)
    target = aux.dab_target(real, masks)
    noisy = (real + 0.05 * torch.randn_like(real)).clamp(-1, 1)

    def step():
        fake = noisy.clone().requires_grad_(True)
        with torch.autocast(check.device, dtype=torch.bfloat16, enabled=check.cuda):
            total = aux(fake, real, masks, target)["total"]
        total.backward()

    ms = 1e3 * check.timed(step, 3 if check.smoke else 10)
    with torch.no_grad(), torch.autocast(check.device, dtype=torch.bfloat16, enabled=check.cuda):
        perfect = aux(real.clone(), real, masks, target)
    terms = {k: float(perfect[k]) for k in TERMS}
    return {"radius": check.radius, "batch": len(real), "crop": check.crop, "ms_fwd_bwd": ms,
            "ms_per_crop": ms / len(real), "perfect_fake": terms,
            "perfect_fake_ok": all(v <= 1e-3 for k, v in terms.items() if k != "l5")}


def section_translate(check: Check, tmp: Path) -> dict:
    from translate import make_g1, tissue_image, write_slide

    from atst_model.infer.slide import translate_slide
    from atst_model.infer.translate import translate_image

    side = 512 if check.smoke else 4096
    rgb = tissue_image(side, side)
    out = {}
    for mode in ("native", "tiles224"):
        g1 = make_g1(check.nets["g1"], mode, check.device)
        s = check.timed(lambda: translate_image(g1, rgb, tile=check.crop * (2 if check.smoke else 1),
                                                overlap=check.crop // 8, batch=check.batch, device=check.device), 1)
        out[f"{mode}_mpx_s"] = side * side / s / 1e6
    slide_side = 1024 if check.smoke else 8192
    write_slide(tmp / "slide.tif", slide_side)
    g1 = make_g1(check.nets["g1"], "native", check.device)
    t0 = time.perf_counter()
    res = translate_slide(g1, tmp / "slide.tif", tmp / "out.tif", tile=check.crop, overlap=check.crop // 8,
                          batch=check.batch, device=check.device)
    check.sync()
    s = time.perf_counter() - t0
    out.update(slide_side=slide_side, slide_mpx_s=slide_side ** 2 / s / 1e6, slide_windows=res.windows,
               slide_share_of_native=slide_side ** 2 / s / 1e6 / out["native_mpx_s"])
    return out


def section_cppnet(check: Check, tmp: Path) -> dict:
    from atst_model.cppnet.counter import BUNDLED_WEIGHTS
    from atst_model.cppnet.model import load_checkpoint

    model, _ = load_checkpoint(BUNDLED_WEIGHTS, check.device)
    side, batch = (256, 2) if check.smoke else (1024, 16)
    x = torch.rand(batch, 1, side, side, device=check.device) * 0.2

    def run():
        with torch.no_grad(), torch.autocast(check.device, dtype=torch.bfloat16, enabled=check.cuda):
            model(x)

    s = check.timed(run, 2 if check.smoke else 10)
    result = {"tile": side, "batch": batch, "tiles_per_s": batch / s, "mpx_per_s": batch * side * side / s / 1e6}
    # the whole count (network in batches of 8, refinement, NMS) on real dense tissue, as build-masks runs it
    from atst_model.cppnet.counter import CppNetCounter
    from atst_prep.shards import as_stored
    from atst_prep.stain import dab_and_hematoxylin
    from benchmarks.prep_masks import real_ihc_1024

    ihc = real_ihc_1024()[:256, :256] if check.smoke else real_ihc_1024()
    dab, hema = (as_stored(c) for c in dab_and_hematoxylin(np.ascontiguousarray(ihc)))
    counter, tiles = CppNetCounter(device=check.device), [(hema, dab)] * (2 if check.smoke else 8)
    counter.detect_many(tiles[:2], batch=2)  # warm-up
    start = time.perf_counter()
    found = counter.detect_many(tiles, batch=len(tiles))
    result.update(count_s_per_pair=(time.perf_counter() - start) / len(tiles), nuclei_per_tile=len(found[0].areas),
                  count_tile=int(ihc.shape[0]))
    return result


#: (name, function, rough seconds it needs on a GPU; skipped when less is left)
SECTIONS = (("train", section_train, 240), ("aux", section_aux, 30), ("translate", section_translate, 90),
            ("cppnet", section_cppnet, 20))


def markdown(results: dict) -> str:
    """The RESULTS.md section: every figure beside its goal."""
    r, lines = results["sections"], [f"## GPU check — `benchmarks/gpu_check.py`, {results['device']}, "
                                     f"{results['date']}", ""]

    def get(*keys):
        v = r
        for k in keys:
            v = v.get(k) if isinstance(v, dict) else None
        return v

    def fmt(v, spec=".1f"):
        return "—" if v is None else format(v, spec)

    lines += ["| figure | measured | goal |", "|---|---|---|",
              f"| train step, reference style, ms per crop | {fmt(get('train', 'reference_ms_per_crop'))} | |",
              f"| train step, ours eager, ms per crop (ratio) | {fmt(get('train', 'eager', 'ms_per_crop'))} "
              f"({fmt(get('train', 'eager', 'ratio'))}x) | >= {GOALS['train_ratio']:.0f}x |",
              f"| train step, ours compiled, ms per crop (ratio) | {fmt(get('train', 'compiled', 'ms_per_crop'))} "
              f"({fmt(get('train', 'compiled', 'ratio'))}x) | >= {GOALS['train_ratio']:.0f}x |",
              f"| compile warm-up (first compiled step), s | {fmt(get('train', 'compiled', 'first_step_s'))} | |",
              f"| model TFLOP/s, share of bf16 peak | {fmt(get('train', 'tflops'))}, "
              f"{fmt(get('train', 'peak_share'), '.0%')} | >= {GOALS['train_peak_share']:.0%} |",
              f"| L1-L5 fwd+bwd at r = {get('aux', 'radius')}, ms per crop | {fmt(get('aux', 'ms_per_crop'))} | |",
              f"| perfect fake on the device, every term ~0 | {get('aux', 'perfect_fake_ok')} | True |",
              f"| translate native, Mpx/s | {fmt(get('translate', 'native_mpx_s'))} | >= "
              f"{GOALS['translate_native_mpx_s']:.0f} |",
              f"| translate tiles224, Mpx/s | {fmt(get('translate', 'tiles224_mpx_s'))} | >= "
              f"{GOALS['translate_tiles224_mpx_s']:.0f} |",
              f"| slide, Mpx/s (share of native) | {fmt(get('translate', 'slide_mpx_s'))} "
              f"({fmt(get('translate', 'slide_share_of_native'), '.0%')}) | >= {GOALS['slide_share_of_native']:.0%} |",
              f"| CPP-Net (bundled) forward, tiles/s | {fmt(get('cppnet', 'tiles_per_s'))} | |",
              f"| CPP-Net count of a real {get('cppnet', 'count_tile')} px tile (batches of 8), s per pair | "
              f"{fmt(get('cppnet', 'count_s_per_pair'), '.2f')} | <= 1 |", ""]
    failed = {k: v for k, v in r.items() if "error" in v or "skipped" in v}
    for k, v in failed.items():
        lines.append(f"- `{k}`: {v.get('error') or v.get('skipped')}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny networks and sizes (about a minute)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="stop starting sections after this")
    parser.add_argument("--only", help="comma-separated sections (train, aux, translate, cppnet)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "out" / "gpu_check.json")
    parser.add_argument("--md", type=Path, default=ROOT / "benchmarks" / "out" / "gpu_check.md")
    args = parser.parse_args(argv)
    check = Check(args.smoke, args.budget_s)
    if check.cuda:
        torch.backends.cudnn.benchmark = True
    only = set(args.only.split(",")) if args.only else None
    results = {"device": check.name, "smoke": check.smoke, "torch": torch.__version__,
               "date": time.strftime("%Y-%m-%d"), "sections": {}}
    print(f"device: {check.name}; budget {args.budget_s:.0f} s", flush=True)
    for name, fn, need in SECTIONS:
        if only and name not in only:
            continue
        if not check.smoke and check.left() < need:
            results["sections"][name] = {"skipped": f"{check.left():.0f} s left, needs ~{need} s"}
            continue
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            try:
                out = fn(check, Path(tmp))
            except Exception as exc:  # report and go on: one broken section must not cost the others
                out = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc(limit=4)}
        out["seconds"] = time.perf_counter() - start
        results["sections"][name] = out
        print(f"{name}: {json.dumps({k: v for k, v in out.items() if k != 'trace'}, default=str)}", flush=True)
    for path, text in ((args.json, json.dumps(results, indent=2, default=str) + "\n"), (args.md, markdown(results))):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
