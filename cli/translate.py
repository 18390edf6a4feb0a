"""``atst translate``: virtual staining of images, folders and whole slides with a trained generator."""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer

from ._common import EXIT_REJECTED, command, console, fail, progress_bar


@command
def translate_command(
    checkpoint: Path = typer.Argument(..., help="Trainer checkpoint (checkpoints/step-*.pt)."),
    inputs: List[Path] = typer.Argument(..., help="Images, slides (SVS, NDPI, large or pyramidal TIFF) and/or folders."),
    out: Path = typer.Option(..., "--out", help="Output folder: <stem>.<format> per image, <stem>.tif per slide."),
    direction: str = typer.Option("he2ihc", "--direction", help="he2ihc (G1) or ihc2he (G2)."),
    tile: int = typer.Option(512, "--tile", help="Window side in px (read size; small images use one window)."),
    overlap: int = typer.Option(64, "--overlap", help="Blend ramp in px at each window edge (<= tile / 2)."),
    batch: int = typer.Option(8, "--batch", help="Windows per forward pass."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)."),
    fmt: str = typer.Option("png", "--format", help="png or jpg."),
    annotations: bool = typer.Option(False, "--annotations", help="Slides: also write <out>/<stem>.geojson, the "
                                     "virtual IHC's DAB-positive region (Eq. 1 per window) with its area and "
                                     "fraction of tissue, for QuPath (File > Import objects)."),
    closing_radius: int = typer.Option(30, "--closing-radius", "-r", help="Eq. 1's closing radius in px for "
                                       "--annotations (the build-masks default)."),
    mpp: Optional[float] = typer.Option(None, "--mpp", help="Slides: level 0's pixel size in um, written into the "
                                        "output when the slide states none."),
    reader: str = typer.Option("auto", "--reader", help="Slide reader: auto (OpenSlide when it recognises the "
                               "file, else tifffile), openslide or tifffile."),
) -> None:
    """Translate H&E to IHC (or IHC to H&E) with seamless blended tiles; bf16 on a GPU, float32 on CPU.

    Slides (every format OpenSlide reads: SVS, NDPI, MRXS, SCN, BIF, Philips TIFF, DICOM...; and .tif/.tiff
    over 4096 px on a side or with several levels) are translated at level 0, skipping background
    windows, into a tiled pyramidal BigTIFF <out>/<stem>.tif laid out as an Aperio SVS (JPEG tiles, every
    level, the source's pixel size and objective power): OpenSlide, tiffslide and QuPath open it whole.
    Slides are streamed: reading, the network and writing overlap in separate threads, memory grows with
    the slide's width, not its area, and the .tif appears only when complete (an interrupted run leaves
    no file).

    Exit 0; 1 on a user error; 3 when some inputs were rejected (each named on one line).
    """
    import torch

    from atst_model.infer.run import translate_inputs
    from atst_model.infer.slide_io import READERS
    from atst_model.infer.translate import FORMATS, load_generator
    from atst_prep.mask import MaskConfig

    if fmt not in FORMATS:
        raise fail(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if reader not in READERS:
        raise fail(f"--reader must be one of {', '.join(READERS)}, got {reader!r}")
    if mpp is not None and not mpp > 0:
        raise fail(f"--mpp must be a positive pixel size in um, got {mpp}")
    if closing_radius < 0:
        raise fail(f"--closing-radius must be >= 0, got {closing_radius}")
    if batch < 1 or tile < 1 or not 0 <= overlap <= tile // 2:
        raise fail(f"need --batch >= 1, --tile >= 1 and 0 <= --overlap <= tile / 2 (got {batch}, {tile}, {overlap})")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    net = load_generator(checkpoint, direction, device)  # a user error: one line (command)

    bar = progress_bar("tiles")
    task = bar.add_task("translate", total=0, t0=time.perf_counter())
    with bar:
        result = translate_inputs(
            net, inputs, out, fmt=fmt, tile=tile, overlap=overlap, batch=batch, device=device, reader=reader,
            mpp=mpp, annotations=annotations, mask_config=MaskConfig(closing_radius=closing_radius),
            on_work=lambda n: bar.update(task, total=(bar.tasks[0].total or 0) + n),
            on_tiles=lambda n: bar.advance(task, n))
    for r in result.slides:
        size = f"{r.meta.mpp[0]:.4g} um/px" if r.meta.mpp else "pixel size unknown (--mpp)"
        power = f", {r.meta.objective_power:g}x" if r.meta.objective_power else ""
        typer.echo(f"{r.path.name}: {r.width} x {r.height} px, {len(r.levels)} levels, {size}{power}, "
                   f"{r.windows - r.skipped} of {r.windows} windows run ({r.skipped} background skipped)")
        if r.region is not None:
            typer.echo(f"{r.path.stem}.geojson: DAB-positive {100 * r.region.fraction_of_tissue:.1f}% of tissue "
                       f"({r.region.positive_px} px)")
    for line in result.rejected:
        console.print(f"[yellow]rejected:[/] {line}", soft_wrap=True)
    typer.echo(f"translated {len(result.written)} image(s) into {out}")
    if result.rejected:
        raise typer.Exit(EXIT_REJECTED)
