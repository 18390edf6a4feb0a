"""``atst translate``: virtual staining of images, folders and whole slides with a trained generator."""

from __future__ import annotations

import errno
import time
from pathlib import Path
from typing import List, Optional

import typer

from ._common import EXIT_REJECTED, command, console, fail, progress_bar

#: errno values that mean the output cannot be written (disk full, quota, read-only, permission).
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES}


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
) -> None:
    """Translate H&E to IHC (or IHC to H&E) with seamless blended tiles; bf16 on a GPU, float32 on CPU.

    Slides (.svs/.ndpi, or .tif/.tiff over 4096 px on a side or with several levels) are translated at
    level 0, skipping background windows, into a tiled pyramidal BigTIFF <out>/<stem>.tif (JPEG tiles,
    reduced levels as SubIFDs; opens in QuPath). Slides are streamed: reading, the network and writing
    overlap in separate threads, memory grows with the slide's width, not its area, and the .tif appears
    only when complete (an interrupted run leaves no file).

    Exit 0; 1 on a user error; 3 when some inputs were rejected (each named on one line).
    """
    import torch

    from atst_model.infer.slide import count_slide_windows, is_slide, translate_slide
    from atst_model.infer.translate import FORMATS, TileSizeError, expand_inputs, load_generator, translate_folder

    if fmt not in FORMATS:
        raise fail(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if batch < 1 or tile < 1 or not 0 <= overlap <= tile // 2:
        raise fail(f"need --batch >= 1, --tile >= 1 and 0 <= --overlap <= tile / 2 (got {batch}, {tile}, {overlap})")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    net = load_generator(checkpoint, direction, device)  # a user error: one line (command)

    files, missing = expand_inputs(inputs)
    for folder in (p for p in inputs if p.is_dir()):  # scanner formats are not in the image suffixes
        files += sorted(q for q in folder.iterdir() if q.is_file() and q.suffix.lower() in (".svs", ".ndpi"))
    slides = [p for p in files if is_slide(p)]
    images = [p for p in files if p not in slides]

    bar = progress_bar("tiles")
    task = bar.add_task("translate", total=0, t0=time.perf_counter())
    grow = lambda n: bar.update(task, total=(bar.tasks[0].total or 0) + n)  # noqa: E731
    slide_out, slide_rejected, first_of = [], [], {}
    with bar:
        try:
            result = translate_folder(
                net, images, out, fmt, tile=tile, overlap=overlap, batch=batch, device=device,
                on_image=grow, on_tiles=lambda n: bar.advance(task, n)) if images else None
            out.mkdir(parents=True, exist_ok=True)
            for path in slides:
                if first_of.setdefault(path.stem, path) != path:
                    slide_rejected.append(f"{path}: same name as {first_of[path.stem]} (both would write "
                                          f"{path.stem}.tif); rename one")
                    continue
                target = out / f"{path.stem}.tif"
                try:
                    grow(count_slide_windows(path, tile, overlap, net))
                except TileSizeError:
                    raise
                except ValueError as exc:
                    slide_rejected.append(f"{path}: {exc}")
                    continue
                except Exception as exc:  # an unreadable TIFF: tifffile / imagecodecs raise their own types
                    slide_rejected.append(f"{path}: cannot read as a slide ({type(exc).__name__}: {exc})")
                    continue
                try:
                    res = translate_slide(net, path, target, tile=tile, overlap=overlap,
                                          batch=batch, device=device, on_tiles=lambda n: bar.advance(task, n))
                except TileSizeError:
                    raise
                except ValueError as exc:
                    slide_rejected.append(f"{path}: {exc}")
                    continue
                except OSError as exc:
                    if exc.errno in _WRITE_ERRNOS:  # the output side: no later slide can be written either
                        raise fail(f"cannot write {target}: {exc.strerror}") from None
                    slide_rejected.append(f"{path}: failed while reading or translating ({exc})")
                    continue
                except Exception as exc:  # a tile that does not decode: tifffile / imagecodecs raise their own types
                    slide_rejected.append(f"{path}: failed while reading or translating "
                                          f"({type(exc).__name__}: {exc})")
                    continue
                slide_out.append(res)
        except TileSizeError as exc:  # a --tile the network cannot take
            raise fail(str(exc)) from None
    written = (result.written if result else []) + [r.path for r in slide_out]
    rejected = missing + (result.rejected if result else []) + slide_rejected
    for r in slide_out:
        typer.echo(f"{r.path.name}: {r.width} x {r.height} px, {len(r.levels)} levels, "
                   f"{r.windows - r.skipped} of {r.windows} windows run ({r.skipped} background skipped)")
    for line in rejected:
        console.print(f"[yellow]rejected:[/] {line}", soft_wrap=True)
    typer.echo(f"translated {len(written)} image(s) into {out}")
    if rejected:
        raise typer.Exit(EXIT_REJECTED)
