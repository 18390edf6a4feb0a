"""``atst translate``: virtual staining of images and folders with a trained generator."""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer

from ._common import EXIT_REJECTED, command, console, fail, progress_bar


@command
def translate_command(
    checkpoint: Path = typer.Argument(..., help="Trainer checkpoint (checkpoints/step-*.pt)."),
    inputs: List[Path] = typer.Argument(..., help="Images and/or folders of images (PNG, JPEG, TIFF, BMP)."),
    out: Path = typer.Option(..., "--out", help="Output folder: <stem>.<format> per input image."),
    direction: str = typer.Option("he2ihc", "--direction", help="he2ihc (G1) or ihc2he (G2)."),
    tile: int = typer.Option(512, "--tile", help="Window side in px (read size; small images use one window)."),
    overlap: int = typer.Option(64, "--overlap", help="Blend ramp in px at each window edge (<= tile / 2)."),
    batch: int = typer.Option(8, "--batch", help="Windows per forward pass."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)."),
    fmt: str = typer.Option("png", "--format", help="png or jpg."),
) -> None:
    """Translate H&E to IHC (or IHC to H&E) with seamless blended tiles; bf16 on a GPU, float32 on CPU.

    Exit 0; 1 on a user error; 3 when some inputs were rejected (each named on one line).
    """
    import torch

    from atst_model.infer.translate import FORMATS, load_generator, translate_folder

    if fmt not in FORMATS:
        raise fail(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if batch < 1 or tile < 1 or not 0 <= overlap <= tile // 2:
        raise fail(f"need --batch >= 1, --tile >= 1 and 0 <= --overlap <= tile / 2 (got {batch}, {tile}, {overlap})")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        net = load_generator(checkpoint, direction, device)
    except (FileNotFoundError, ValueError) as exc:
        raise fail(str(exc)) from None

    bar = progress_bar("tiles")
    task = bar.add_task("translate", total=0, t0=time.perf_counter())
    with bar:
        try:
            result = translate_folder(
                net, inputs, out, fmt, tile=tile, overlap=overlap, batch=batch, device=device,
                on_image=lambda n: bar.update(task, total=(bar.tasks[0].total or 0) + n),
                on_tiles=lambda n: bar.advance(task, n))
        except ValueError as exc:  # a --tile the network cannot take
            raise fail(str(exc)) from None
    for line in result.rejected:
        console.print(f"[yellow]rejected:[/] {line}", soft_wrap=True)
    typer.echo(f"translated {len(result.written)} image(s) into {out}")
    if result.rejected:
        raise typer.Exit(EXIT_REJECTED)
