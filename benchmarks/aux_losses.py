"""The soft Eq. 1 and the auxiliary losses L1-L5 on a GPU: parity with prep, gradients, time per step.

Run: ``python benchmarks/aux_losses.py [--batch 8] [--size 512] [--out FILE.json]`` (CUDA if present).

1. Parity: scikit-image's real IHC sample mirrored to 1024x1024, in four
   orientations as one batch, through ``unmix`` + ``soft_mask`` on the device
   (TF32 allowed, as a trainer would set it) against prep's ``dab_mask`` on
   the CPU: IoU of ``soft > 0.5`` with prep's mask, r = 5 and r = 30.
2. Gradients: ``AuxLosses`` (bundled CPP-Net) on a batch of real-IHC crops
   with noise (a stand-in for G1's output), each term's gradient norm with
   respect to the fake, fp32 and bf16 autocast.
3. Time: forward + backward of ``soft_mask`` alone and of all five terms,
   ms per batch (CUDA events, median of 10 after 3 warm-ups).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atst_model.losses import TERMS, AuxLossConfig, AuxLosses  # noqa: E402
from atst_model.stain_torch import soft_mask, unmix  # noqa: E402
from atst_prep.mask import MaskConfig, dab_mask  # noqa: E402


def real_ihc_1024() -> np.ndarray:
    ihc = data.immunohistochemistry()
    top = np.concatenate([ihc, ihc[:, ::-1]], axis=1)
    return np.ascontiguousarray(np.concatenate([top, top[::-1]], axis=0))


def to_unit(images: list[np.ndarray], device) -> torch.Tensor:
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).to(device)
    return x.float() / 127.5 - 1


def timed(fn, device, repeats: int = 10) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t))
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "batch": args.batch, "size": args.size}

    tile = real_ihc_1024()
    views = [tile, np.ascontiguousarray(np.rot90(tile)), np.ascontiguousarray(tile[::-1]),
             np.ascontiguousarray(tile[:, ::-1])]
    for radius in (5, 30):
        config = MaskConfig(closing_radius=radius)
        with torch.no_grad():
            soft = soft_mask(unmix(to_unit(views, device))[0], config)
        ious = []
        for view, s in zip(views, (soft[:, 0] > 0.5).cpu().numpy()):
            want = dab_mask(view, config)
            ious.append(float(np.count_nonzero(s & want) / max(np.count_nonzero(s | want), 1)))
        result[f"parity_iou_r{radius}"] = min(ious)
        result[f"parity_pixels_differing_r{radius}"] = int(sum(
            np.count_nonzero((s > 0.5) != dab_mask(v, config)) for v, s in zip(views, soft[:, 0].cpu().numpy())))

    rng = np.random.default_rng(0)
    n, c = args.batch, args.size
    origins = rng.integers(0, 1024 - c + 1, size=(n, 2))
    crops = [tile[y:y + c, x:x + c] for y, x in origins]
    config = AuxLossConfig(mask=MaskConfig(closing_radius=30))
    masks = torch.from_numpy(np.stack([dab_mask(crop, config.mask) for crop in crops])).float()[:, None].to(device)
    aux = AuxLosses(config).to(device)
    base = to_unit(crops, device)
    dab_target = aux.dab_target(base, masks)  # the real crops are the targets' IHC
    noisy = (base + 0.05 * torch.randn(base.shape, generator=torch.Generator().manual_seed(0)).to(device)).clamp(-1, 1)

    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        grads = {}
        for term in TERMS:
            fake = noisy.detach().to(dtype, copy=True).requires_grad_(True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                out = aux(fake, base, masks, dab_target)
            out[term].backward()
            g = fake.grad.float()
            grads[term] = {"value": out[term].item(), "grad_norm": float(g.norm()),
                           "grad_nonzero_fraction": float((g != 0).float().mean()),
                           "finite": bool(torch.isfinite(g).all())}
        result[f"gradients_{name}"] = grads

        def step_all():
            fake = noisy.detach().to(dtype, copy=True).requires_grad_(True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                total = aux(fake, base, masks, dab_target)["total"]
            total.backward()

        def step_mask():
            fake = noisy.detach().to(dtype, copy=True).requires_grad_(True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                m = soft_mask(unmix(fake)[0], config.mask, config.temperature)
            m.sum().backward()

        result[f"ms_soft_mask_r30_fwd_bwd_{name}"] = timed(step_mask, device)
        result[f"ms_all_five_fwd_bwd_{name}"] = timed(step_all, device)
    if device.type == "cuda":
        result["peak_memory_GiB"] = torch.cuda.max_memory_allocated() / 2**30
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
