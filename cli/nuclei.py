"""``atst prep train-nuclei``: train the CPP-Net nucleus model without human annotation."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from ._common import command, console, make_config, progress_bar, stopping, writable_folder
from .prep import app


@app.command("train-nuclei")
@command
def train_nuclei(
    out: Path = typer.Option(Path("nuclei-cppnet.pt"), "--out", help="Checkpoint to write (use it with "
                             "--counter cppnet --nuclei-weights OUT)."),
    synthetic: int = typer.Option(32, help="Synthetic IHC tiles with exact nucleus labels (both DAB patterns)."),
    synthetic_size: int = typer.Option(256, help="Side of each synthetic tile in px."),
    shards: Optional[Path] = typer.Option(None, "--shards", help="Also train on the real IHC tiles of these "
                                          "shards, labelled by the classical detector (pseudo-labels)."),
    max_pseudo: int = typer.Option(64, help="At most this many pseudo-labelled tiles."),
    config: str = typer.Option("small", help="Network size: tiny, small or base."),
    steps: int = typer.Option(1500, help="Optimiser steps."),
    batch: int = typer.Option(8, help="Crops per step."),
    crop: int = typer.Option(128, help="Crop side in px (a multiple of 2**depth)."),
    lr: float = typer.Option(1e-3, help="Adam learning rate (cosine decay to 5 %)."),
    seed: int = typer.Option(0, help="Seed for tiles, crops and initial weights."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 ... (default: a GPU when there is one)."),
    calibrate: int = typer.Option(6, help="Held-out synthetic tiles (512 px) on which the probability and NMS "
                                  "thresholds are chosen after training; 0 keeps the defaults."),
) -> None:
    """Train CPP-Net (probability, 32 rays, context enhancement, density head) on synthetic tiles and pseudo-labels."""
    from atst_model.cppnet import CONFIGS
    from atst_model.cppnet.train import TrainConfig
    from atst_model.cppnet.train import train_nuclei as run_training

    if config not in CONFIGS:
        raise typer.BadParameter(f"unknown config {config!r}; choose {', '.join(CONFIGS)}", param_hint="--config")
    writable_folder(out.parent)  # before training, not after
    train_config = make_config(TrainConfig, steps=steps, batch=batch, crop=crop, lr=lr, seed=seed)
    bar = progress_bar("steps")
    task = None

    def on_start(total: int) -> None:
        nonlocal task
        task = bar.add_task("train-nuclei", total=total, t0=time.perf_counter())
        bar.start()

    def on_step(step: int, record: dict) -> None:
        bar.update(task, completed=step, description=f"train-nuclei loss {record['total']:.3f}")
        if step == steps:
            bar.stop()  # before the calibration's lines

    with stopping(bar):
        run_training(out, config, train_config, synthetic=synthetic, synthetic_size=synthetic_size, shards=shards,
                     max_pseudo=max_pseudo, calibrate=calibrate, device=device, on_message=console.print,
                     on_start=on_start, on_step=on_step)
    typer.echo(f"nucleus model: {out}  (use: --counter cppnet --nuclei-weights {out})")
