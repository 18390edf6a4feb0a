"""``atst prep``: offline preparation (masks, shards, checks)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from ._common import EXIT_REJECTED, command, console, default_jobs, fail, progress_bar, stopping

app = typer.Typer(help="Offline preparation: masks and stain channels into HDF5 shards.", no_args_is_help=True)


@app.command("build-masks")
@command
def build_masks(
    data: Path = typer.Option(Path("data"), "--data", help="Folder holding MIST, BCI or a folder of H&E/IHC pairs "
                              "(several datasets side by side are all built)."),
    out: Path = typer.Option(Path("shards"), "--out", help="Output folder; shards go to OUT/<dataset>/<split>/."),
    dataset: Optional[list[str]] = typer.Option(None, "--dataset", help="Only these dataset ids (e.g. mist-her2, bci)."),
    split: Optional[list[str]] = typer.Option(None, "--split", help="Only these splits (e.g. train)."),
    closing_radius: Optional[int] = typer.Option(None, "--closing-radius", "-r", help="Radius in px of the mask's "
                                                 "closing disk (Eq. 1). Default: the dataset descriptor's, else 30."),
    sigma: float = typer.Option(1.0, help="Gaussian sigma in px before Otsu."),
    min_dab: float = typer.Option(0.03, help="DAB density below which nothing is foreground (blank tiles give "
                                  "empty masks); 0 reproduces the public script exactly."),
    min_tissue: float = typer.Option(0.01, help="Reject tiles with a smaller tissue fraction as blank."),
    window: int = typer.Option(512, "--window", help="Side in px of the fixed training windows whose own Eq. 1 "
                               "masks are stored as the auxiliary targets; training crops are these windows "
                               "(atst train --crop must equal it)."),
    window_stride: Optional[int] = typer.Option(None, "--window-stride", help="Step in px between training "
                                                "windows (default: half a window, 9 windows per 1024 tile; "
                                                "equal to --window: 4 non-overlapping windows)."),
    shard_size: int = typer.Option(32, help="Pairs per shard file."),
    no_images: bool = typer.Option(False, "--no-images", help="Do not copy H&E/IHC pixels into the shards."),
    layout: str = typer.Option("compact", "--layout", help="compact: keep the source image files' bytes (about the "
                               "source's size; the densities are unmixed again when read); raw: decoded pixels and "
                               "densities (~9 MB per 1024 px pair, the fastest loader)."),
    image_compression: str = typer.Option("none", help="HDF5 filter for images of the raw layout: none (fastest), lzf, "
                                          "gzip."),
    jobs: int = typer.Option(0, "--jobs", "-j", help="Parallel workers (0 = all cores; 1 with --counter cppnet, "
                             "whose network already uses every core or the GPU)."),
    backend: str = typer.Option("joblib", help="joblib (this machine) or dask (a Dask cluster)."),
    scheduler: Optional[str] = typer.Option(None, help="Dask scheduler address, e.g. tcp://host:8786 "
                                            "(default with --backend dask: a local cluster)."),
    counter: str = typer.Option("classical", "--counter", help="Nucleus counter run on every pair: classical "
                                "(no weights), cppnet (needs --nuclei-weights), or none (nuclei left pending)."),
    nuclei_weights: Optional[Path] = typer.Option(None, "--nuclei-weights", help="Weights of the nucleus counter "
                                                  "(cppnet: a checkpoint from 'atst prep train-nuclei')."),
    nuclei_channel: str = typer.Option("auto", help="What the classical counter detects nuclei on: hema, "
                                       "hema+dab, or auto (hema+dab for nuclear markers ER/PR/Ki67, whose "
                                       "positive nuclei are brown; hema otherwise)."),
    overwrite: bool = typer.Option(False, help="Replace shards built with other parameters."),
) -> None:
    """Turn H&E/IHC pairs into HDF5 shards of images, DAB/hematoxylin densities, masks and nuclei.

    Resumable: re-running skips finished shards. Exit codes: 0 done, 1 error,
    3 done but some inputs were rejected (listed, and in the manifest), 130 interrupted.
    """
    from atst_prep.build_masks import build_masks

    jobs = jobs or (1 if counter == "cppnet" else default_jobs())

    def on_note(line: str) -> None:
        console.print(f"[yellow]warning:[/]{line.removeprefix('warning:')}" if line.startswith("warning:") else line)

    def on_ready(ids: list[str], radius: int) -> None:
        console.print(f"building {', '.join(ids)} -> {out}  (closing radius {radius} px, nuclei: {counter}, "
                      f"{jobs} {backend} worker{'s' * (jobs > 1)})")

    bar = progress_bar("pairs")
    task = bar.add_task("build-masks", total=None)

    def on_start(total: int, done: int) -> None:
        if done:
            console.print(f"resuming: {done} of {total} pairs are already in finished shards")
        state = bar.tasks[0]
        bar.update(task, total=(state.total or 0) + total, completed=state.completed + done,
                   skipped=state.fields.get("skipped", 0) + done, t0=state.fields.get("t0", time.perf_counter()))
        bar.start()  # only now: an error while planning stays one line, without a bar above it

    def on_reject(record: dict) -> None:
        console.print(f"[yellow]rejected[/] {record['file']}: {record['reason']}")

    with stopping(bar):
        summary = build_masks(
            data, out, datasets=dataset, splits=split, closing_radius=closing_radius, sigma=sigma, min_dab=min_dab,
            min_tissue=min_tissue, window=window, window_stride=window_stride, shard_size=shard_size,
            store_images=not no_images, image_compression=image_compression, layout=layout, counter=counter,
            nuclei_weights=nuclei_weights, nuclei_channel=nuclei_channel, jobs=jobs, backend=backend,
            scheduler=scheduler, overwrite=overwrite, on_note=on_note, on_ready=on_ready, on_start=on_start,
            on_reject=on_reject, on_shard=lambda e: bar.advance(task, e["n_pairs"]))
    typer.echo(f"{summary.samples} pairs in shards ({summary.shards_built} shards built, "
               f"{summary.shards_reused} already done); {len(summary.rejected)} inputs rejected")
    for manifest in summary.manifests:
        typer.echo(f"manifest: {manifest}")
    if summary.rejected:
        console.print(f"[yellow]{len(summary.rejected)} inputs were rejected[/] (reasons above and in the manifest)")
        raise typer.Exit(EXIT_REJECTED)


@app.command("count-nuclei")
@command
def count_nuclei(
    shards: Path = typer.Option(Path("shards"), "--shards", help="Shard folder (as --out of build-masks) or one "
                                "dataset's folder."),
    counter: str = typer.Option("classical", "--counter", help="Nucleus counter: classical (no weights) or cppnet "
                                "(needs --nuclei-weights)."),
    nuclei_weights: Optional[Path] = typer.Option(None, "--nuclei-weights", help="Weights of the nucleus counter "
                                                  "(cppnet: a checkpoint from 'atst prep train-nuclei')."),
    jobs: int = typer.Option(0, "--jobs", "-j", help="Parallel workers (0 = all cores; 1 with --counter cppnet, "
                             "whose network already uses every core or the GPU)."),
    backend: str = typer.Option("joblib", help="joblib (this machine) or dask (a Dask cluster)."),
    scheduler: Optional[str] = typer.Option(None, help="Dask scheduler address, e.g. tcp://host:8786 "
                                            "(default with --backend dask: a local cluster)."),
    overwrite: bool = typer.Option(False, help="Recount shards whose nuclei came from another counter."),
) -> None:
    """Detect nuclei in every sample of existing shards: centroids and areas into each sample's nuclei/.

    Each shard is rewritten whole (copy, count, rename) and its manifest checksum
    updated; shards already counted by this counter are skipped, so an
    interrupted run resumes. Exit codes: 0 done, 1 error, 130 interrupted.
    """
    from atst_prep.nuclei.store import count_nuclei as run_count

    jobs = jobs or (1 if counter == "cppnet" else default_jobs())
    console.print(f"counting nuclei in {shards} with {counter} ({jobs} {backend} worker{'s' * (jobs > 1)})")
    bar = progress_bar("pairs")
    task = bar.add_task("count-nuclei", total=None)

    def on_start(total: int, done: int) -> None:
        if done:
            console.print(f"resuming: {done} of {total} pairs are already counted by {counter}")
        bar.update(task, total=total, completed=done, skipped=done, t0=time.perf_counter())
        bar.start()  # only once the counter is made and the shards are checked

    with stopping(bar):
        summary = run_count(shards, counter, nuclei_weights, jobs=jobs, backend=backend, scheduler=scheduler,
                            overwrite=overwrite, on_start=on_start,
                            on_shard=lambda e: bar.advance(task, e["n_samples"]))
    typer.echo(f"{summary.samples} pairs counted in {summary.shards_counted} shards "
               f"({summary.shards_skipped} already counted); {summary.nuclei} nuclei found")
    for manifest in summary.manifests:
        typer.echo(f"manifest: {manifest}")


@app.command()
@command
def preview(
    shards: Path = typer.Option(Path("shards"), "--shards", help="Shard folder (as --out of build-masks) or one "
                                "dataset's folder."),
    n: int = typer.Option(8, "--n", help="Samples to show."),
    out: Optional[Path] = typer.Option(None, "--out", help="PNG to write (default: <dataset folder>/preview.png)."),
    thumb: int = typer.Option(256, help="Thumbnail side in px."),
) -> None:
    """Write a PNG contact sheet per dataset: H&E | IHC | DAB | mask outline and nuclei over IHC."""
    import cv2

    from atst_prep.build import read_manifest
    from atst_prep.preview import preview_shards
    from atst_prep.verify import find_manifests

    for manifest_path in find_manifests(shards):
        manifest = read_manifest(manifest_path)
        folder = manifest_path.parent
        paths = [folder / s["file"] for info in manifest["splits"].values() for s in info["shards"]
                 if s["n_samples"] > 0]
        if not paths:
            console.print(f"[yellow]warning:[/] {folder}: no samples to preview")
            continue
        sheet = preview_shards(paths, n=n, thumb=thumb)
        target = out if out is not None else folder / "preview.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(target), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
            raise fail(f"{target}: could not write PNG")
        typer.echo(f"preview: {target}")


@app.command()
@command
def verify(
    shards: Path = typer.Option(Path("shards"), "--shards", help="Shard folder or one dataset's folder."),
) -> None:
    """Check every shard: listed in its manifest, checksum, schema, complete splits. Exit 1 on any problem."""
    from atst_prep.verify import verify as run_verify

    report = run_verify(shards)
    for problem in report.problems:
        console.print(f"[red]problem[/] {problem}", soft_wrap=True)
    typer.echo(f"{report.shards_ok} shards OK, {len(report.problems)} problems "
               f"({len(report.manifests)} manifest{'s' * (len(report.manifests) != 1)})")
    if report.problems:
        raise fail(f"{shards}: {len(report.problems)} problem(s), the first: {report.problems[0]}")


@app.command("export-annotations")
@command
def export_annotations(
    shards: Path = typer.Option(..., "--shards", help="Shard folder (as --out of build-masks) or one dataset's "
                                "folder."),
    out: Path = typer.Option(..., "--out", help="Output folder: OUT/<dataset>/<name>.geojson per sample "
                             "(OUT/<dataset>/<split>/<name>.geojson for a dataset with a name in several splits)."),
    register: bool = typer.Option(False, "--register", help="Export the registered mask and nuclei, in the H&E "
                                  "tile's frame (needs 'atst prep filter-misaligned --register'); default: the "
                                  "IHC tile's frame."),
    simplify: float = typer.Option(0.5, "--simplify", help="Outline simplification tolerance in px (0: every "
                                   "vertex, the outline rasterises back to the mask exactly)."),
) -> None:
    """Write each sample's DAB-positive mask and nuclei as GeoJSON that QuPath imports.

    Open the IHC tile in QuPath (the H&E tile with --register) and drag its
    .geojson onto the viewer, or use File > Import objects from file. The mask
    is one annotation "DAB-positive" (area in px in its measurements); each
    nucleus a detection classified "Nucleus (DAB-positive region)" or
    "Nucleus". Exit codes: 0 done, 1 error, 3 done but some samples were
    skipped (listed).
    """
    from atst_prep.annotations import export_annotations as run_export

    bar = progress_bar("samples")
    task = bar.add_task("export-annotations", total=None)

    def on_start(total: int) -> None:
        bar.update(task, total=total, t0=time.perf_counter())
        bar.start()  # only once the shards are found and checked

    with stopping(bar):
        summary = run_export(shards, out, register=register, simplify=simplify, on_start=on_start,
                             on_sample=lambda n: bar.advance(task, n))
    for line in summary.skipped:
        console.print(f"[yellow]skipped[/] {line}", soft_wrap=True)
    typer.echo(f"{len(summary.written)} GeoJSON files in {out} ({summary.nuclei} nuclei); "
               f"{len(summary.skipped)} skipped")
    if summary.nuclei_pending:
        typer.echo(f"  {len(summary.nuclei_pending)} without nuclei (mask only; run 'atst prep count-nuclei')")
    if summary.skipped:
        raise typer.Exit(EXIT_REJECTED)
