"""``atst check-targets``: a perfect fake must score ~0 on every auxiliary loss."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._common import command, console, fail, make_config, progress_bar


@command
def check_targets(
    shards: Path = typer.Option(..., "--shards", help="Shard folder (its training split is read, as by atst train)."),
    n: int = typer.Option(64, "--n", help="Crops to check (windows, flips as the trainer draws them)."),
    crop: Optional[int] = typer.Option(None, "--crop", help="Crop side in px (default: the shards' window)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the report here as JSON."),
    keep_list: Optional[Path] = typer.Option(None, help="Keep-list CSV, as for atst train."),
    nuclei_weights: Optional[Path] = typer.Option(None, help="CPP-Net checkpoint of L5 (default: bundled)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
) -> None:
    """Run the trainer's data path and L1-L5 with fake = the real IHC crop; every term must be ~0.

    Tolerances: L1-L4 <= 1e-3, L5 relative count difference <= 2 %. Exit 1 when one is exceeded.
    """
    import time

    from atst_model.train.check import check_targets as run_check
    from atst_model.train.check import write_report

    bar = progress_bar("crops")
    task = bar.add_task("check-targets", total=n, t0=time.perf_counter())
    with bar:
        check = make_config(run_check, shards, n=n, crop=crop, keep_list=keep_list,
                            nuclei_weights=str(nuclei_weights) if nuclei_weights else None, device=device,
                            on_item=lambda i: bar.update(task, completed=i))
    for k, v in check.terms.items():
        extra = f"  rel_max {v['rel_max']:.3g}" if "rel_max" in v else ""
        typer.echo(f"{k}: mean {v['mean']:.3g}  max {v['max']:.3g}{extra}")
    if json_path is not None:
        write_report(check, json_path)
        console.print(f"report: {json_path}")
    if not check.ok:
        raise fail(f"{shards}: a perfect fake does not score ~0 ({'; '.join(check.failures)}); "
                   "the targets are not the same function of the IHC as the fake's")
    typer.echo(f"ok: {check.n} crops of {check.crop} px, every term within tolerance")
