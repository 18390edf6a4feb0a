"""Training logs: a CSV a spreadsheet opens, TensorBoard when it is installed, sample-grid PNGs."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import cv2
import numpy as np
import torch

log = logging.getLogger(__name__)


class RunLog:
    """Append one row per logged step to ``<run>/log.csv`` (and TensorBoard scalars)."""

    def __init__(self, folder: Path, tensorboard: bool = True) -> None:
        self.path = Path(folder) / "log.csv"
        self.columns: list[str] | None = None
        if self.path.is_file():
            with open(self.path, newline="") as f:
                self.columns = next(csv.reader(f), None)
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(Path(folder) / "tensorboard"))
            except ImportError:  # the tensorboard package is optional
                log.info("tensorboard not installed: logging to CSV only")

    def write(self, row: dict) -> None:
        if self.columns is None:
            self.columns = list(row)
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerow(self.columns)
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([_fmt(row.get(c, "")) for c in self.columns])
        if self.writer is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, row["step"])

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after ``step`` (a resumed run logs them again)."""
        if not self.path.is_file():
            return
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f))
        if not rows:
            return
        keep = [rows[0]] + [r for r in rows[1:] if r and int(float(r[0])) <= step]
        with open(self.path, "w", newline="") as f:
            csv.writer(f).writerows(keep)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _fmt(value):
    return f"{value:.6g}" if isinstance(value, float) else value


def _to_rgb(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) uint8."""
    return ((image.detach().float().clamp(-1, 1).cpu().permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)


def _mask_pair(soft: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """M' (green, soft) over M (magenta): agreement looks white, misses magenta, extras green."""
    s = soft.detach().float().cpu()[0].numpy()
    t = target.detach().float().cpu()[0].numpy()
    rgb = np.stack([t, s, t], axis=-1)
    return (rgb * 255).round().astype(np.uint8)


def sample_grid(path: Path, he, fake_ihc, real_ihc, soft_mask, mask, n: int = 4) -> Path:
    """H&E | fake IHC | real IHC | M' vs M, one row per crop (at most ``n``), as a PNG."""
    rows = []
    for i in range(min(n, he.shape[0])):
        row = [_to_rgb(he[i]), _to_rgb(fake_ihc[i]), _to_rgb(real_ihc[i]), _mask_pair(soft_mask[i], mask[i])]
        rows.append(np.concatenate([np.pad(p, ((2, 2), (2, 2), (0, 0)), constant_values=255) for p in row], axis=1))
    grid = np.concatenate(rows, axis=0)
    header = np.full((24, grid.shape[1], 3), 255, np.uint8)
    width = grid.shape[1] // 4
    for i, title in enumerate(("H&E", "fake IHC", "real IHC", "M' (green) vs M (magenta)")):
        cv2.putText(header, title, (i * width + 6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate([header, grid], axis=0), cv2.COLOR_RGB2BGR))
    return path
