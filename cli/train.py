"""``atst train``: the ATST-Net trainer (CycleGAN + L1-L5) on prep shards."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from ._common import command, console, fail, make_config, progress_bar


@command
def train(
    preset: str = typer.Option("her2", "--preset", "-p", help="her2, er, pr, ki67, bci (MIST/BCI shards under "
                               "shards/, the paper's hyper-parameters) or demo (tiny networks, CPU, demo shards)."),
    shards: Optional[Path] = typer.Option(None, help="Shard folder (default: the preset's, e.g. shards/mist-her2)."),
    out: Optional[Path] = typer.Option(None, help="Run folder: checkpoints/, samples/, log.csv, tensorboard/."),
    g1: Optional[str] = typer.Option(None, help="Generator H&E->IHC (g1-vitb, g1-tiny)."),
    g1_mode: Optional[str] = typer.Option(None, help="tiles224 (nine 224 tiles per 512 crop, as the paper) or native."),
    g2: Optional[str] = typer.Option(None, help="Generator IHC->H&E (g2-resunet, g2-tiny)."),
    d: Optional[str] = typer.Option(None, help="Discriminators (d-patchgan, d-tiny)."),
    encoder_weights: Optional[Path] = typer.Option(None, help="PathoDuet checkpoint_HE.pth for G1's encoder."),
    nuclei_weights: Optional[Path] = typer.Option(None, help="CPP-Net checkpoint for L5 (default: bundled)."),
    keep_list: Optional[Path] = typer.Option(None, help="Keep-list CSV from 'atst prep filter-misaligned'."),
    crop: Optional[int] = typer.Option(None, help="Crop side in px (512 in the paper)."),
    batch: Optional[int] = typer.Option(None, help="Crops per step per process (1 in the paper)."),
    epochs: Optional[int] = typer.Option(None, help="Epochs; the learning rate decays linearly over the second half."),
    max_steps: Optional[int] = typer.Option(None, help="Stop after this many steps."),
    lr: Optional[float] = typer.Option(None, help="Adam learning rate (2e-4), betas (0.5, 0.999)."),
    lambda_cycle: Optional[float] = typer.Option(None, help="Cycle loss weight (5)."),
    lambda_identity: Optional[float] = typer.Option(None, help="Identity loss weight (0)."),
    recipe: str = typer.Option("paper", help="paper (b = 60,10,10,20,1, no identity loss, random windows with "
                               "flips; L4 in gray units, L5 in Poisson sd) or public-code (b = 50,100,100,1 and "
                               "|count difference|, identity 10, 40 epochs over 4 fixed crops per tile). "
                               "Options given below override it."),
    aux_weights: Optional[str] = typer.Option(None, help="b1..b5 of L1..L5 as 'b1,b2,b3,b4,b5' (the recipe's)."),
    aux_warmup: Optional[int] = typer.Option(None, help="Steps over which L1-L5's weight ramps from 0 to 1 "
                                             "(0: full weight from the start)."),
    init_g1: Optional[Path] = typer.Option(None, help="Start G1 from these weights (a run's checkpoint or a "
                                           "G1 file), e.g. to fine-tune; ignored when resuming."),
    precision: Optional[str] = typer.Option(None, help="bf16 (autocast, GPU) or fp32."),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the generators."),
    checkpoint_every: Optional[int] = typer.Option(None, help="Steps between checkpoints."),
    sample_every: Optional[int] = typer.Option(None, help="Steps between sample-grid PNGs."),
    loader: Optional[str] = typer.Option(None, help="threads (fast default: batches built by threads of this "
                                         "process) or processes (a torch DataLoader with worker processes)."),
    num_workers: Optional[int] = typer.Option(None, help="Loader threads (or processes) per training process; "
                                              "0 loads in the training loop."),
    seed: Optional[int] = typer.Option(None, help="Seed of data order, crops, pools and initial weights."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda (default: the GPU of this rank when there is one)."),
    resume: str = typer.Option("auto", help="auto (the run folder's latest checkpoint), a checkpoint path, or none."),
) -> None:
    """Train ATST-Net: CycleGAN (G1 H&E->IHC, G2 IHC->H&E, PatchGAN D_IHC, D_HE) plus L1-L5 from the shards.

    Multi-GPU / multi-node: run under torchrun (e.g. 'torchrun --nproc-per-node 8 -m atst_cli.main train ...').
    Resumes from the run folder's latest checkpoint unless --resume none.
    """
    from atst_model.train.config import preset as named_preset
    from atst_model.train.config import resolve_preset, with_recipe
    from atst_model.train.trainer import Trainer

    if shards is None:  # the preset's own shards: adapt to what is on disk, and say so
        base, note = make_config(resolve_preset, preset)
        if note:
            console.print(f"[yellow]note:[/] {note}")
    else:
        base = make_config(named_preset, preset)
    weights = None
    if aux_weights is not None:
        try:
            weights = tuple(float(x) for x in aux_weights.split(","))
        except ValueError:
            raise fail(f"--aux-weights must be five numbers separated by commas, got {aux_weights!r}") from None
    base = make_config(with_recipe, base, recipe)
    overrides = dict(aux_warmup=aux_warmup, init_g1=init_g1, shards=shards, out=out, g1=g1, g1_mode=g1_mode, g2=g2, d=d, encoder_weights=encoder_weights,
                     nuclei_weights=nuclei_weights, keep_list=keep_list, crop=crop, batch=batch, epochs=epochs,
                     max_steps=max_steps, lr=lr, lambda_cycle=lambda_cycle, lambda_identity=lambda_identity,
                     aux_weights=weights, precision=precision, compile=compile, checkpoint_every=checkpoint_every,
                     sample_every=sample_every, loader=loader, num_workers=num_workers, seed=seed)
    overrides = {k: (str(v) if isinstance(v, Path) else v) for k, v in overrides.items()}
    config = make_config(base.with_overrides, **overrides)
    trainer = Trainer(config, device=device, resume=None if resume == "none" else resume)
    if trainer.dist.main:
        where = f"resuming {trainer.resumed_from}" if trainer.resumed_from else "from scratch"
        console.print(f"training {config.g1}/{config.g2}/{config.d} on {config.shards} ({len(trainer.dataset)} "
                      f"pairs), {where}; run folder {config.out}")
    limit = min(trainer.total_steps, config.max_steps or trainer.total_steps)
    bar = progress_bar("crops")
    task = bar.add_task("train", total=limit * config.batch * trainer.dist.world,
                        completed=trainer.step_count * config.batch * trainer.dist.world,
                        skipped=trainer.step_count * config.batch * trainer.dist.world, t0=time.perf_counter())

    def on_step(step: int, row: dict) -> None:
        bar.update(task, completed=step * config.batch * trainer.dist.world,
                   description=f"train G {row['g_total']:.3f} D {row['d_ihc'] + row['d_he']:.3f} "
                               f"L1-5 {row.get('aux_total', 0.0):.3f}")

    if trainer.dist.main:
        with bar:
            trainer.run(on_step)
    else:
        trainer.run()
    if trainer.dist.main:
        samples = sorted((Path(config.out) / "samples").glob("*.png"))
        typer.echo(f"run folder: {config.out}  (log.csv, checkpoints/, samples/)")
        if samples:
            typer.echo(f"latest sample grid: {samples[-1]}")
