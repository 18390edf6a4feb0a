"""Virtual staining throughput: a reference-style loop vs ``translate_image`` vs a whole slide, in one run.

Run: ``python benchmarks/translate.py --device cuda --full`` on a GPU (G1 ``g1-vitb``, 1024 x 1024
images, 512 px windows, a 12k x 12k synthetic slide), or ``python benchmarks/translate.py`` on a CPU
(G1 ``g1-tiny``, the same images and windows, a 2048 x 2048 slide; under 30 s on 2 cores).

(a) Reference style = how the public ATST-Net code stains: fp32, batch 1, each 512 crop of the image
    cut into nine overlapping 224 tiles (offsets 0, 144, 288) run one by one through G1 and written
    over each other (no blending).
(b) Ours = :func:`atst_model.infer.translate.translate_image`: blended windows (``--tile``,
    ``--overlap``), ``--batch`` windows per forward pass, bf16 autocast on CUDA (fp32 on CPU); G1 in
    ``tiles224`` mode (224 tiles inside each window, blended) and in ``native`` mode (the ViT at the
    window's size).
(c) A whole slide = :func:`atst_model.infer.slide.translate_slide` on a JPEG-tiled pyramidal TIFF
    written here by mirror-tiling the tissue of ``tests/data/CMU-Small-Region.svs`` (every window is
    run: ``tissue_threshold=0``), end to end: reading and decoding, the network, blending, JPEG
    encoding of level 0 and the pyramid. Reported as a percentage of (b) in the same mode.

Mpx/s counts output pixels (image or slide area) per second. Prints a table and the ratios, and
appends one JSON line per run to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atst_model.infer.slide import translate_slide  # noqa: E402
from atst_model.infer.translate import translate_image  # noqa: E402
from atst_model.networks import create_network  # noqa: E402
from atst_model.networks.tiling import tile_offsets  # noqa: E402

SLIDE = ROOT / "tests" / "data" / "CMU-Small-Region.svs"
TISSUE = (slice(600, 2400), slice(600, 1700))  # (y, x) of a tissue-filled part of the CMU slide's level 0
MODES = ("tiles224", "native")


def make_g1(name: str, mode: str, device: str) -> torch.nn.Module:
    """G1 from the registry with random weights (speed does not depend on them), in eval mode."""
    with warnings.catch_warnings():  # "no encoder weights"
        warnings.simplefilter("ignore")
        return create_network(name, mode=mode).to(device).eval()


def tissue_image(h: int, w: int) -> np.ndarray:
    """An ``h`` x ``w`` uint8 RGB H&E image: the CMU slide's tissue, mirror-tiled."""
    import tifffile

    tissue = tifffile.imread(SLIDE, key=0)[TISSUE]
    reps = (-(-h // tissue.shape[0]), -(-w // tissue.shape[1]))
    rows = [np.concatenate([tissue if (i + j) % 2 == 0 else tissue[:, ::-1] for j in range(reps[1])], axis=1)
            for i in range(reps[0])]
    return np.ascontiguousarray(np.concatenate(rows, axis=0)[:h, :w])


@torch.inference_mode()
def reference_loop(g1, rgb: np.ndarray, device: str) -> np.ndarray:
    """The public code's way: per 512 crop, nine 224 tiles through G1 one at a time, overwritten; fp32."""
    t, stride = g1.config.img_size, g1.config.tile_stride
    out = np.empty_like(rgb)
    for cy in range(0, rgb.shape[0], 512):
        for cx in range(0, rgb.shape[1], 512):
            crop = torch.from_numpy(rgb[cy:cy + 512, cx:cx + 512]).to(device)
            x = crop.permute(2, 0, 1)[None].float() / 127.5 - 1.0
            y = torch.empty_like(x)
            for oy in tile_offsets(x.shape[-2], t, stride):
                for ox in tile_offsets(x.shape[-1], t, stride):
                    y[..., oy:oy + t, ox:ox + t] = g1.forward_tile(x[..., oy:oy + t, ox:ox + t])
            y = ((y[0] + 1.0) * 127.5).clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
            out[cy:cy + 512, cx:cx + 512] = y
    return out


def timed(fn, repeats: int, sync) -> float:
    """Seconds per call of ``fn()``: one warm-up call, then the mean of ``repeats`` calls."""
    fn()
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats


def write_slide(path: Path, side: int) -> None:
    """A ``side`` x ``side`` JPEG-tiled (256 px, quality 90) pyramidal BigTIFF of tissue, like a scanner's."""
    from atst_model.infer.pyramid import write_pyramid

    write_pyramid(path, tissue_image(side, side), compression="jpeg")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--full", action="store_true",
                        help="G1 g1-vitb (the paper's ViT-B) and a 12288 px slide; default: g1-tiny and a 2048 px "
                             "slide")
    parser.add_argument("--size", type=int, default=1024, help="image side for (a) and (b), a multiple of 512")
    parser.add_argument("--slide-side", type=int, help="side of the synthetic slide for (c)")
    parser.add_argument("--tile", type=int, default=512, help="window side for (b) and (c)")
    parser.add_argument("--overlap", type=int, help="blend ramp (default tile / 8)")
    parser.add_argument("--batch", type=int, default=8, help="windows per forward pass for (b) and (c)")
    parser.add_argument("--repeats", type=int, help="timed calls of (a) and (b) after a warm-up (default 5 full, 1 tiny)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "out" / "translate.jsonl")
    args = parser.parse_args()
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")
    if cuda:
        torch.backends.cudnn.benchmark = True
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    name = "g1-vitb" if args.full else "g1-tiny"
    size, tile = args.size, args.tile
    slide_side = args.slide_side or (12288 if args.full else 2048)
    overlap = args.overlap if args.overlap is not None else tile // 8
    repeats = args.repeats or (5 if args.full else 1)
    device_name = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"device: {device_name}; G1 {name}; {size} px images, {slide_side} px slide; tile {tile}, overlap "
          f"{overlap}, batch {args.batch}; {'bf16' if cuda else 'fp32'} for ours")

    rgb = tissue_image(size, size)
    mpx = rgb.shape[0] * rgb.shape[1] / 1e6
    results = {"device": device_name, "network": name, "size": size, "slide_side": slide_side, "tile": tile,
               "overlap": overlap, "batch": args.batch, "repeats": repeats}

    g1 = make_g1(name, "tiles224", args.device)
    ref_s = timed(lambda: reference_loop(g1, rgb, args.device), repeats, sync)
    results["reference_mpx_s"] = mpx / ref_s
    print(f"(a) reference style (fp32, batch 1, nine 224 tiles per 512 crop, overwritten): {mpx / ref_s:8.2f} Mpx/s",
          flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        slide_path = Path(tmp) / "slide.tif"
        write_slide(slide_path, slide_side)
        for mode in MODES:
            net = g1 if mode == "tiles224" else make_g1(name, mode, args.device)
            ours_s = timed(lambda: translate_image(net, rgb, tile, overlap, args.batch, args.device), repeats, sync)
            start = time.perf_counter()
            res = translate_slide(net, slide_path, Path(tmp) / f"out-{mode}.tif", tile=tile, overlap=overlap,
                                  batch=args.batch, device=args.device, tissue_threshold=0.0)
            slide_s = time.perf_counter() - start
            ours, slide = mpx / ours_s, res.height * res.width / 1e6 / slide_s
            results[mode] = {"ours_mpx_s": ours, "slide_mpx_s": slide, "slide_pct": 100 * slide / ours,
                             "vs_reference": ours / results["reference_mpx_s"], "slide_windows": res.windows}
            print(f"(b) ours, {mode:8s} ({size} px images, blended, batched):{ours:22.2f} Mpx/s "
                  f"= {ours / results['reference_mpx_s']:.1f}x reference", flush=True)
            print(f"(c) slide, {mode:8s} ({res.width} x {res.height} px, {res.windows} windows, end to end):"
                  f"{slide:9.2f} Mpx/s = {100 * slide / ours:.0f} % of (b)", flush=True)

    args.json.parent.mkdir(parents=True, exist_ok=True)
    with args.json.open("a") as f:
        f.write(json.dumps(results) + "\n")
    print(f"results appended to {args.json}")


if __name__ == "__main__":
    main()
