"""CPP-Net on a GPU: network throughput for counting, the L5 soft count, and training steps.

Run on a machine with CUDA: ``python benchmarks/nuclei_gpu.py``. Needs only
torch, numpy and OpenCV (no StarDist: polygon NMS runs on the CPU and is
timed by ``benchmarks/nuclei.py``).

1. ``predict_maps`` (probability, refined rays, density) of the bundled model
   on a synthetic 1024x1024 IHC tile: GPU vs CPU agreement and ms per tile.
2. Batched forward of each config on 1024x1024 tiles (fp32 and bf16 autocast): tiles/s, Mpx/s.
3. ``soft_count`` forward + backward on a batch of 512x512 crops (what L5 costs per training step).
4. CPP-Net training steps (random targets of the right shapes) per second.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atst_model.cppnet import CONFIGS, CppNet, load_checkpoint  # noqa: E402
from atst_model.cppnet.count import soft_count  # noqa: E402
from atst_model.cppnet.counter import BUNDLED_WEIGHTS  # noqa: E402
from atst_model.cppnet.losses import cppnet_loss  # noqa: E402
from atst_model.cppnet.predict import predict_maps  # noqa: E402
from atst_prep.stain import dab_and_hematoxylin  # noqa: E402
from atst_prep.synth import SynthConfig, render_pair  # noqa: E402

DRY = "--dry-run" in sys.argv  # on the CPU with tiny sizes: checks the script before spending GPU time
SIDE, CROP = (128, 64) if DRY else (1024, 512)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeats: int = 10, warmup: int = 3) -> float:
    if DRY:
        repeats, warmup = 1, 1
    for _ in range(warmup):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    if not DRY and not torch.cuda.is_available():
        sys.exit("needs a CUDA device (or --dry-run)")
    dev = torch.device("cpu" if DRY else "cuda")
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    name = "dry run (CPU)" if DRY else torch.cuda.get_device_name()
    res: dict = {"device": name, "torch": torch.__version__}
    print(f"device: {name}, torch {torch.__version__}")

    # 1. the bundled counter's maps, GPU vs CPU
    pair = render_pair(SynthConfig(size=SIDE), 50_000)
    dab, hema = dab_and_hematoxylin(pair.ihc)
    model_cpu, _ = load_checkpoint(BUNDLED_WEIGHTS, "cpu")
    model_gpu, _ = load_checkpoint(BUNDLED_WEIGHTS, dev)
    t = time.perf_counter()
    cpu = predict_maps(model_cpu, hema[None], device="cpu", prob_floor=0.4)
    cpu_s = time.perf_counter() - t
    gpu = predict_maps(model_gpu, hema[None], device=dev, prob_floor=0.4)
    gpu_s = timed(lambda: predict_maps(model_gpu, hema[None], device=dev, prob_floor=0.4), repeats=5)
    agree = float(np.abs(cpu["prob"] - gpu["prob"]).max())
    res["maps_1024"] = {"cpu_ms": 1e3 * cpu_s, "gpu_ms": 1e3 * gpu_s, "max_prob_diff": agree}
    print(f"bundled tiny CPP-Net maps of a {SIDE} tile: CPU {1e3 * cpu_s:.0f} ms, GPU {1e3 * gpu_s:.1f} ms "
          f"(max |prob| difference {agree:.2e})")

    # 2. batched forward throughput
    res["forward"] = {}
    for cfg_name, cfg in CONFIGS.items():
        net = CppNet(cfg).to(dev).eval().to(memory_format=torch.channels_last)
        for batch in (8,):
            x = torch.rand(batch, 1, SIDE, SIDE, device=dev).to(memory_format=torch.channels_last) * 0.2
            for precision in ("fp32", "bf16"):
                def run():
                    with torch.no_grad(), torch.autocast(dev.type, torch.bfloat16, enabled=precision == "bf16"):
                        net(x)
                s = timed(run)
                mpx = batch * SIDE * SIDE / s / 1e6
                res["forward"][f"{cfg_name}/{precision}"] = {"batch": batch, "ms": 1e3 * s, "tiles_per_s": batch / s,
                                                            "mpx_per_s": mpx}
                print(f"forward {cfg_name:5s} {precision}: batch {batch} x {SIDE}^2 in {1e3 * s:7.1f} ms "
                      f"= {batch / s:7.1f} tiles/s, {mpx:8.1f} Mpx/s")

    # 3. the differentiable count of L5: forward + backward to the input
    model_gpu.requires_grad_(False)
    res["soft_count"] = {}
    for precision in ("fp32", "bf16"):
        hema_b = (torch.rand(8, 1, CROP, CROP, device=dev) * 0.3).requires_grad_(True)
        mask_b = torch.rand(8, 1, CROP, CROP, device=dev)

        def step():
            with torch.autocast(dev.type, torch.bfloat16, enabled=precision == "bf16"):
                c = soft_count(model_gpu, hema_b, mask_b)
            c.sum().backward()
        s = timed(step)
        finite = bool(torch.isfinite(hema_b.grad).all())
        res["soft_count"][precision] = {"ms_per_batch8_512": 1e3 * s, "grad_finite": finite}
        print(f"soft_count fwd+bwd, 8 x {CROP}^2, {precision}: {1e3 * s:.1f} ms (gradient finite: {finite})")

    # 4. training steps/s (targets random but shaped right: the cost is the same)
    res["train"] = {}
    for cfg_name in ("small", "base"):
        cfg = CONFIGS[cfg_name]
        net = CppNet(cfg).to(dev).train()
        opt = torch.optim.Adam(net.parameters(), 1e-3)
        b, c = (2, 64) if DRY else (16, 256)
        x = torch.rand(b, 1, c, c, device=dev) * 0.2
        prob = torch.rand(b, 1, c, c, device=dev)
        dist = torch.rand(b, cfg.n_rays, c, c, device=dev) * 10
        dens = torch.rand(b, 1, c, c, device=dev) * 0.01

        def train_step():
            with torch.autocast(dev.type, torch.bfloat16):
                out = net(x)
            loss = cppnet_loss(net, type(out)(*(t.float() for t in out)), prob, dist, dens)["total"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        s = timed(train_step, repeats=10)
        res["train"][cfg_name] = {"batch": b, "crop": c, "ms_per_step": 1e3 * s, "steps_per_s": 1 / s}
        print(f"train {cfg_name}: batch {b} x {c}^2, bf16 autocast: {1e3 * s:.1f} ms/step ({1 / s:.1f} steps/s)")

    out = Path(sys.argv[sys.argv.index("--json") + 1]) if "--json" in sys.argv else Path("benchmarks/out/nuclei_gpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
