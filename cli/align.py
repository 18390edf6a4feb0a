"""``atst prep filter-misaligned``: score how well each H&E/IHC pair lines up, keep the good ones."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from ._common import command, console, default_jobs, make_config, progress_bar, stopping
from .prep import app

_RULE_TEXT = {"unscorable": "could not be scored", "shift": "shift beyond the limit",
              "rotation": "rotation beyond the limit", "score": "score below the floor", "rank": "rank cut"}


@app.command("filter-misaligned")
@command
def filter_misaligned(
    shards: Path = typer.Option(Path("shards"), "--shards", help="Shard folder (as --out of build-masks) or one "
                                "dataset's folder."),
    split: Optional[list[str]] = typer.Option(None, "--split", help="Only these splits (e.g. train)."),
    keep: Optional[int] = typer.Option(None, "--keep", help="Keep the N best-scoring pairs of each split "
                                       "(replaces the rules)."),
    drop_fraction: Optional[float] = typer.Option(None, "--drop-fraction", help="Drop the worst fraction F of "
                                                  "each split, e.g. 0.04 (replaces the rules)."),
    max_shift: Optional[float] = typer.Option(None, "--max-shift", help="Drop pairs shifted by more than PX px "
                                              "(default: 32 px at 1024 px tiles, scaled with the tile)."),
    max_rotation: float = typer.Option(5.0, "--max-rotation", help="Drop pairs rotated by more than this, deg."),
    min_score: float = typer.Option(0.1, "--min-score", help="Drop pairs scoring below S (0-1)."),
    register: bool = typer.Option(False, "--register", help="Also store mask, DAB and nucleus centroids moved by "
                                  "the measured shift into the H&E frame (the originals are kept)."),
    keep_list: Optional[Path] = typer.Option(None, "--keep-list", help="Keep-list CSV to write (default: "
                                             "data_manifests/keep-<dataset>.csv in the repository)."),
    search_rotation: float = typer.Option(10.0, "--search-rotation", help="Rotations up to this are searched, "
                                          "deg (0: translation only, faster)."),
    worst: int = typer.Option(8, "--worst", help="Pairs shown in the gallery of the worst."),
    jobs: int = typer.Option(0, "--jobs", "-j", help="Parallel workers (0 = all cores)."),
    backend: str = typer.Option("joblib", help="joblib (this machine) or dask (a Dask cluster)."),
    scheduler: Optional[str] = typer.Option(None, help="Dask scheduler address, e.g. tcp://host:8786 "
                                            "(default with --backend dask: a local cluster)."),
) -> None:
    """Score the alignment of every pair in the shards, write the results and a keep-list CSV.

    The score (0-1) multiplies the hematoxylin similarity at the best alignment,
    the tissue overlap and penalties that halve it at 32 px (at 1024 px) and at
    5 deg. By default a pair is dropped when its shift exceeds 32 px (at 1024 px,
    scaled), its rotation 5 deg, or its score is below 0.1. Rerunning with the
    same options changes nothing. Exit codes: 0 done, 1 error, 130 interrupted.
    """
    from atst_prep.align.score import AlignConfig
    from atst_prep.align.select import Selection
    from atst_prep.align.store import filter_misaligned as run_filter

    config = make_config(AlignConfig, max_rotation=search_rotation)
    selection = make_config(Selection, max_shift=max_shift, max_rotation=max_rotation, min_score=min_score,
                            keep=keep, drop_fraction=drop_fraction)
    jobs = jobs or default_jobs()
    console.print(f"scoring alignment in {shards} ({jobs} {backend} worker{'s' * (jobs > 1)})")
    bar = progress_bar("pairs")
    scoring = bar.add_task("filter-misaligned", total=None)
    writing = None

    def on_start(total: int, done: int) -> None:
        bar.update(scoring, total=total, completed=done, t0=time.perf_counter())
        bar.start()  # only once the shards are found and locked

    def on_write_start(n: int) -> None:
        nonlocal writing
        if n:
            writing = bar.add_task("writing shards", total=n, t0=time.perf_counter())

    with stopping(bar):
        summary = run_filter(shards, config, selection, register=register, keep_list=keep_list, splits=split,
                             worst=worst, jobs=jobs, backend=backend, scheduler=scheduler, on_start=on_start,
                             on_shard=lambda r: bar.advance(scoring, len(r["samples"])),
                             on_write_start=on_write_start, on_write=lambda e: bar.advance(writing, e["n_samples"]))
    for row in summary.unscorable:
        console.print(f"[yellow]unscorable[/] {row['split']}/{row['name']} ({row['shard']}): "
                      f"{row['reason'].removeprefix('unscorable: ')}")
    dropped = summary.pairs - summary.kept
    typer.echo(f"{summary.pairs} pairs ({summary.computed} scored now, {summary.pairs - summary.computed} "
               f"already scored): {summary.kept} kept, {dropped} dropped; {summary.shards_written} shards written")
    for rule, n in summary.dropped.items():
        if n:
            typer.echo(f"  dropped {n}: {_RULE_TEXT[rule]} ({rule})")
    typer.echo(f"  rule: {_describe(selection)}")
    for path in summary.keep_lists:
        typer.echo(f"keep-list: {path}")
    for manifest in summary.manifests:
        for picture in summary.pictures:
            if picture.parent == manifest.parent:
                typer.echo(f"picture: {picture}")
        typer.echo(f"manifest: {manifest}")


def _describe(selection) -> str:
    if selection.keep is not None:
        return f"keep the {selection.keep} best scores of each split"
    if selection.drop_fraction is not None:
        return f"drop the worst {selection.drop_fraction:.1%} of each split"
    shift = f"{selection.max_shift:g} px" if selection.max_shift is not None else \
        f"{selection.reference_shift:g} px at 1024 px (scaled with the tile)"
    return f"drop if shift > {shift}, rotation > {selection.max_rotation:g} deg or score < {selection.min_score:g}"
