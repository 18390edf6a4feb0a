"""One ATST-Net training step: a reference-style loop vs ours, in one run.

Run: ``python benchmarks/train_step.py`` on a GPU (full ViT-B architecture,
512 crops), or ``--dry-run`` on a CPU (tiny networks, 256 crops, a check).

Reference style = how the public ATST-Net code trains: fp32, batch 1, the
nine 224 tiles of a 512 crop through G1 one at a time and stitched by
overwriting. Ours = ``Trainer.step``: the nine tiles as one batch, blended,
bf16 autocast, channels-last, a batch of crops. Both do the whole CycleGAN
step with L1-L5 (G step with the discriminators frozen, D step with pools)
on the same data, built here from synthetic pairs through ``build-masks``.
Prints ms per crop, the ratio, model FLOPs per crop and the share of the
card's bf16 peak.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atst_model.networks import count_flops, create_network  # noqa: E402
from atst_model.networks.tiling import tile_offsets  # noqa: E402
from atst_model.train.config import TrainerConfig  # noqa: E402
from atst_model.train.trainer import Dist, Trainer  # noqa: E402
from atst_prep.build import BuildConfig, build  # noqa: E402
from atst_prep.mask import MaskConfig  # noqa: E402
from atst_prep.sources import detect  # noqa: E402
from atst_prep.synth import SynthConfig, write_dataset  # noqa: E402

#: Dense bf16 peak (TFLOP/s) of the cards this is meant for, from their data sheets (SXM, no sparsity).
BF16_PEAK = {"H100": 989.0, "H200": 989.0}


def reference_g1(g1, tile: int = 224, stride: int = 144):
    """G1 as the public code runs it: one tile at a time, later tiles overwrite earlier ones."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(x)
        ys = tile_offsets(x.shape[-2], tile, stride)
        xs = tile_offsets(x.shape[-1], tile, stride)
        for y in ys:
            for x0 in xs:
                out[..., y:y + tile, x0:x0 + tile] = g1.forward_tile(x[..., y:y + tile, x0:x0 + tile])
        return out

    return forward


def time_steps(trainer: Trainer, batch: dict, steps: int, sync) -> float:
    trainer.step(batch)  # warm-up: allocations, cuDNN autotuning
    trainer.step(batch)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.step(batch)
    sync()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny networks: checks the script")
    parser.add_argument("--batch", type=int, default=8, help="crops per step in our configuration")
    parser.add_argument("--also", nargs="*", default=[], metavar="VARIANT",
                        help="extra runs of ours in the same process: 'b16' (batch 16), 'native' (G1 native "
                             "mode), 'compile' (torch.compile the generators; compile time reported apart)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/out/train_step.json"))
    args = parser.parse_args()
    cuda = torch.cuda.is_available() and not args.dry_run
    device = "cuda" if cuda else "cpu"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.backends.cudnn.benchmark = True
    crop, size = (512, 1024) if cuda else (256, 256)
    nets = dict(g1="g1-vitb", g2="g2-resunet", d="d-patchgan") if cuda else dict(g1="g1-tiny", g2="g2-tiny",
                                                                                    d="d-tiny")
    steps = args.steps if cuda else 2
    name = torch.cuda.get_device_name() if cuda else "CPU (dry run)"
    print(f"device: {name}; networks {nets}; {crop} px crops")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_dataset(tmp / "data", n_train=4, n_val=0, config=SynthConfig(size=size), seed=5)
        build(detect(tmp / "data"), tmp / "shards", BuildConfig(mask=MaskConfig(closing_radius=30), shard_size=4,
                                                                 counter="classical", window=crop))
        base = TrainerConfig(shards=str(tmp / "shards" / "mist-her2"), out=str(tmp / "run"), crop=crop,
                             num_workers=0, checkpoint_every=10**9, sample_every=10**9, **nets)
        results = {"device": name, "crop": crop, "networks": nets}

        # reference style: fp32, batch 1, G1 tile by tile with overwriting
        ref = Trainer(replace(base, batch=1, precision="fp32", channels_last=False), device=device, resume=None,
                      dist_info=Dist())
        ref.g1_train = reference_g1(ref.g1)
        batch1 = next(iter(ref.loader()))
        ref_s = time_steps(ref, batch1, steps, sync)
        del ref
        if cuda:
            torch.cuda.empty_cache()

        # ours: the nine tiles as one batch, blended, bf16, channels-last, a batch of crops
        ours = Trainer(replace(base, batch=args.batch, precision="bf16", channels_last=True), device=device,
                       resume=None, dist_info=Dist())
        batch = {k: (torch.cat([v] * args.batch) if isinstance(v, torch.Tensor) else v * args.batch)
                 for k, v in batch1.items()}
        ours_s = time_steps(ours, batch, steps, sync)
        del ours
        # printed now: a variant that runs past a time limit must not take these with it
        print(f"reference-style: {1e3 * ref_s:.1f} ms per crop; ours: {1e3 * ours_s / args.batch:.1f} ms per crop")
        variants = {}
        for variant in args.also:
            b = 16 if variant == "b16" else args.batch
            cfg = replace(base, batch=b, precision="bf16", channels_last=True,
                          g1_mode="native" if variant == "native" else base.g1_mode, compile=variant == "compile")
            if cuda:
                torch.cuda.empty_cache()
            t0 = time.perf_counter()
            trainer = Trainer(cfg, device=device, resume=None, dist_info=Dist())
            vb = {k: (torch.cat([v] * b) if isinstance(v, torch.Tensor) else v * b) for k, v in batch1.items()}
            trainer.step(vb)  # includes compilation for "compile"
            sync()
            first = time.perf_counter() - t0
            ms = 1e3 * time_steps(trainer, vb, steps, sync) / b
            variants[variant] = {"ms_per_crop": ms, "ratio": ref_s * 1e3 / ms, "first_step_s": first, "batch": b}
            print(f"variant {variant}: {ms:.1f} ms per crop ({ref_s * 1e3 / ms:.1f}x; first step {first:.0f} s)")
            del trainer
        results["variants"] = variants

    ref_ms, ours_ms = 1e3 * ref_s, 1e3 * ours_s / args.batch
    with torch.device("meta"):
        g1, g2, d = create_network(nets["g1"]), create_network(nets["g2"]), create_network(nets["d"])
    shape = (1, 3, crop, crop)
    # per crop and step: G1 twice (H&E, fake H&E), G2 twice, D four times (two in each step); backward ~2x forward
    forward = 2 * count_flops(g1, shape) + 2 * count_flops(g2, shape) + 4 * count_flops(d, shape)
    flops = 3 * forward
    results.update(reference_ms_per_crop=ref_ms, ours_ms_per_crop=ours_ms, ratio=ref_ms / ours_ms,
                   model_gflop_per_crop=flops / 1e9, ours_tflops=flops / (ours_ms / 1e3) / 1e12, batch=args.batch)
    peak = next((v for k, v in BF16_PEAK.items() if k in name), None)
    print(f"reference-style (fp32, batch 1, tiles one by one, overwrite): {ref_ms:9.1f} ms per crop")
    print(f"ours (bf16, batch {args.batch}, tiles batched and blended):     {ours_ms:9.1f} ms per crop")
    print(f"ratio: {ref_ms / ours_ms:.1f}x;  model FLOPs per crop and step: {flops / 1e9:.0f} GFLOP "
          f"(G1, G2 x2 and D x4 forwards, backward counted as 2x forward)")
    print(f"ours achieves {results['ours_tflops']:.1f} TFLOP/s" +
          (f" = {100 * results['ours_tflops'] / peak:.0f} % of the {peak:.0f} TFLOP/s bf16 peak" if peak else ""))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {args.json}")


if __name__ == "__main__":
    main()
