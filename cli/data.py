"""``atst data``: synthetic paired data with exact ground truth."""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import command, make_config, progress_bar

app = typer.Typer(help="Datasets: synthetic H&E/IHC pairs for tests and the demo.", no_args_is_help=True)


@app.command()
@command
def synth(
    out: Path = typer.Option(Path("demo/data"), "--out", help="Folder to write into (a MIST-like tree is created)."),
    n_train: int = typer.Option(16, help="Training pairs."),
    n_val: int = typer.Option(4, help="Validation (test) pairs."),
    size: int = typer.Option(1024, help="Tile side in px (MIST tiles are 1024)."),
    marker: str = typer.Option("HER2", help="HER2 (membranous DAB) or ER, PR, Ki67 (nuclear DAB)."),
    max_shift: float = typer.Option(16.0, help="Largest H&E/IHC translation in px."),
    seed: int = typer.Option(0, help="Random seed; the same arguments give identical files."),
) -> None:
    """Render MIST-like H&E/IHC pairs (Beer-Lambert, known misalignment) plus ground truth."""
    from atst_prep.synth import SynthConfig, write_dataset

    config = make_config(SynthConfig, size=size, max_shift=max_shift,
                         pattern="membranous" if marker.upper() == "HER2" else "nuclear")
    bar = progress_bar("pairs")
    with bar:
        task = bar.add_task("synth", total=n_train + n_val, t0=__import__("time").perf_counter())
        root = write_dataset(out, n_train=n_train, n_val=n_val, config=config, marker=marker, seed=seed,
                             progress=lambda n: bar.update(task, completed=n))
    typer.echo(f"synthetic pairs: {root}")
