"""``atst translate`` as a library call: images, folders and whole slides in, stained files out.

:func:`translate_inputs` sorts its inputs into images (:data:`.translate.IMAGE_SUFFIXES`, written as
``<stem>.<fmt>``) and slides (:func:`.slide_io.is_slide`, written as pyramidal ``<stem>.tif``, with
``<stem>.geojson`` when ``annotations``), and runs each through the generator. Bad inputs are normal:
each is rejected with one ``"<path>: <reason>"`` line and the rest go on. Two inputs that would write
the same output file are never both run (:class:`.translate.NameClaims`). What stops the whole run is a
user error that every input would hit: a ``tile`` the network cannot take (:class:`.translate.TileSizeError`)
or an output folder that cannot be written (:class:`OutputError`).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from torch import nn

from atst_prep.errors import UserError

from .slide import SLIDE_SUFFIXES, SlideResult, count_slide_windows, is_slide, translate_slide
from .translate import NameClaims, TileSizeError, expand_inputs, translate_folder

#: errno values that mean the output cannot be written (disk full, quota, read-only, permission).
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES}


class OutputError(UserError):
    """The output side cannot be written (disk full, read-only, no permission): no later input could be."""


@dataclass
class TranslateResult:
    """Files written, inputs rejected (one line each) and what each slide's run measured."""

    written: list[Path] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    slides: list[SlideResult] = field(default_factory=list)


def find_inputs(inputs: Iterable[Path | str]) -> tuple[list[Path], list[Path], list[str]]:
    """``(images, slides, rejected)``: files named or found in named folders (not recursive)."""
    inputs = [Path(p) for p in inputs]
    files, missing = expand_inputs(inputs)
    seen = set(files)
    for folder in (p for p in inputs if p.is_dir()):  # scanner formats are not image suffixes
        files += sorted(q for q in folder.iterdir() if q.is_file() and q.suffix.lower() in SLIDE_SUFFIXES
                        and q not in seen)
    slides = [p for p in files if is_slide(p)]
    return [p for p in files if p not in slides], slides, missing


def translate_inputs(net: nn.Module, inputs: Iterable[Path | str], out: Path | str, *, fmt: str = "png",
                     tile: int = 512, overlap: int = 64, batch: int = 8, device=None, reader: str = "auto",
                     mpp: float | None = None, annotations: bool = False, mask_config=None,
                     on_work: Callable[[int], None] | None = None,
                     on_tiles: Callable[[int], None] | None = None) -> TranslateResult:
    """Translate every input into ``out``; see the module docstring.

    ``on_work(n)`` announces ``n`` more windows to run (an image's or a slide's, as each is opened);
    ``on_tiles(n)`` reports ``n`` windows done. Slide options: ``reader``, ``mpp``, ``annotations`` and
    ``mask_config`` as :func:`.slide.translate_slide`.
    """
    out = Path(out)
    images, slides, rejected = find_inputs(inputs)
    result = TranslateResult(rejected=rejected)
    claims = NameClaims()
    try:
        if images:
            folder = translate_folder(net, images, out, fmt, tile=tile, overlap=overlap, batch=batch, device=device,
                                      on_image=on_work, on_tiles=on_tiles, claims=claims)
            result.written += folder.written
            result.rejected += folder.rejected
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if exc.errno in WRITE_ERRNOS:
            raise OutputError(f"cannot write into {out}: {exc.strerror}") from None
        raise
    for path in slides:
        clash = claims.claim(path, "tif")
        if clash:
            result.rejected.append(clash)
            continue
        target = out / f"{path.stem}.tif"
        try:
            n = count_slide_windows(path, tile, overlap, net, reader)
        except TileSizeError:
            raise
        except Exception as exc:  # an unreadable slide: OpenSlide, tifffile and imagecodecs raise their own types
            result.rejected.append(f"{path}: cannot read as a slide ({type(exc).__name__}: {exc})")
            continue
        if on_work:
            on_work(n)
        try:
            res = translate_slide(net, path, target, tile=tile, overlap=overlap, batch=batch, device=device,
                                  on_tiles=on_tiles, reader=reader, mpp=mpp, mask_config=mask_config,
                                  annotations=out / f"{path.stem}.geojson" if annotations else None)
        except TileSizeError:
            raise
        except ValueError as exc:
            result.rejected.append(f"{path}: {exc}")
            continue
        except OSError as exc:
            if exc.errno in WRITE_ERRNOS:  # the output side: no later slide can be written either
                raise OutputError(f"cannot write {target}: {exc.strerror}") from None
            result.rejected.append(f"{path}: failed while reading or translating ({exc})")
            continue
        except Exception as exc:  # a tile that does not decode: the readers raise their own types
            result.rejected.append(f"{path}: failed while reading or translating ({type(exc).__name__}: {exc})")
            continue
        result.slides.append(res)
        result.written.append(res.path)
    return result


__all__ = ["OutputError", "TranslateResult", "WRITE_ERRNOS", "find_inputs", "translate_inputs"]
