"""Console, error handling and progress shared by the commands."""

from __future__ import annotations

import functools
import os
import time
import warnings
from contextlib import contextmanager
from typing import Callable, Iterator

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from atst_prep import errors as _errors
from atst_prep.errors import UserError

#: Messages and progress go to stderr so stdout stays clean for results.
console = Console(stderr=True, highlight=False)

EXIT_ERROR = 1
EXIT_REJECTED = 3
EXIT_INTERRUPTED = 130


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one yellow line, without the source line Python prints by default."""
    console.print(f"[yellow]warning:[/] {message}")


warnings.showwarning = _show_warning


#: Invalid parameters: what :func:`make_config` raises (one line, exit 1).
ConfigError = _errors.ConfigError
make_config = _errors.checked


def fail(message: str, code: int = EXIT_ERROR) -> typer.Exit:
    # soft_wrap: one line whatever the terminal's width, so a path in it can be copied whole
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    return typer.Exit(code)


def command(func: Callable) -> Callable:
    """Turn user errors into one red line and exit 1, Ctrl-C into exit 130; no traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except UserError as exc:
            raise fail(str(exc)) from None
        except OSError as exc:  # unwritable folder, disk full: the user's to fix, no traceback
            where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            raise fail(f"{where}{exc.strerror or exc}") from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]: finished work is kept; run the same command again to resume")
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return wrapper


def writable_folder(folder) -> None:
    """Create ``folder`` (and its parents) now and check a file can be written in it, before any long work.

    Raises OSError naming the folder (one line through :func:`command`).
    """
    import tempfile
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".atst-write-check-"):
        pass


def default_jobs() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class RateColumn(TextColumn):
    """Items per second since the bar started (not counting work found done)."""

    def __init__(self, unit: str) -> None:
        super().__init__("")
        self.unit = unit

    def render(self, task):
        start = task.fields.get("t0")
        done = task.completed - task.fields.get("skipped", 0)
        rate = done / (time.perf_counter() - start) if start and done > 0 else 0.0
        return f"{rate:6.1f} {self.unit}/s"


@contextmanager
def stopping(bar: Progress) -> Iterator[Progress]:
    """Run a library call that starts ``bar`` itself (from its ``on_start``, once planning is done, so an
    error while planning stays one line with no bar above it); the bar is stopped however the call ends."""
    try:
        yield bar
    finally:
        if bar.live.is_started:
            bar.stop()


def progress_bar(unit: str) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(unit),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
    )
