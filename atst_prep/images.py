"""Reading and validating tile images; every rejection names the file and the reason.

Bad input is normal input: MIST and BCI downloads contain the odd truncated
or converted file, and a batch of thousands of pairs must not stop for one.
:func:`read_rgb` either returns an (H, W, 3) uint8 RGB array or raises
:class:`InputError` whose message is one line a person can act on.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .errors import UserError

# Byte patterns that open and close the formats we check for truncation.
_JPEG_SOI, _JPEG_EOI = b"\xff\xd8", b"\xff\xd9"
_PNG_SIGNATURE, _PNG_IEND = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"

#: Optical density (log10, summed over R, G, B) above which a pixel is tissue.
TISSUE_OD = 0.15


class InputError(UserError):
    """An input file that cannot be used; ``str()`` is ``"<path>: <reason>"``."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def _check_complete(path: Path, data: bytes) -> None:
    if data.startswith(_JPEG_SOI):
        # Scanners and converters may pad after the end marker; look near the end.
        if _JPEG_EOI not in data[-4096:]:
            raise InputError(path, "truncated JPEG (no end-of-image marker)")
    elif data.startswith(_PNG_SIGNATURE):
        if _PNG_IEND not in data[-64:]:
            raise InputError(path, "truncated PNG (no IEND chunk)")


def read_file(path: Path | str) -> bytes:
    """The bytes of an image file, or :class:`InputError` (missing, a folder, unreadable, empty)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except IsADirectoryError:
        raise InputError(path, "is a folder, not an image") from None
    except OSError as exc:
        raise InputError(path, f"cannot be read ({exc.strerror or exc})") from None
    if not data:
        raise InputError(path, "empty file (0 bytes)")
    return data


def decode_rgb(data: bytes | np.ndarray, path: Path | str = "<bytes>") -> np.ndarray:
    """Decode an image file's bytes to (H, W, 3) uint8 RGB and check it, or raise :class:`InputError`
    naming ``path``: what :func:`read_rgb` does after reading the file (shards keep these bytes)."""
    data = bytes(data) if isinstance(data, np.ndarray) else data
    _check_complete(Path(path), data)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InputError(path, "not a decodable image (corrupt, or not an image file)")
    channels = 1 if image.ndim == 2 else image.shape[2]
    if image.dtype != np.uint8:
        bits = image.dtype.itemsize * 8
        raise InputError(path, f"{bits}-bit image ({image.dtype}); expected 8-bit RGB")
    if channels == 1:
        raise InputError(path, "grayscale image (1 channel); expected RGB")
    if channels == 2:
        raise InputError(path, "grayscale+alpha image (2 channels); expected RGB")
    if channels == 4:
        raise InputError(path, "RGBA image (4 channels); expected RGB without alpha")
    if channels != 3:
        raise InputError(path, f"{channels}-channel image; expected RGB")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_rgb(path: Path | str) -> np.ndarray:
    """Read an 8-bit RGB image and check it, or raise :class:`InputError`.

    Parameters
    ----------
    path : path to a JPEG, PNG, TIFF or BMP file.

    Returns
    -------
    (H, W, 3) uint8 array, RGB order.

    Raises
    ------
    InputError
        Missing, unreadable, empty, truncated or undecodable file; grayscale,
        RGBA, 16-bit or otherwise not 8-bit RGB.
    """
    return decode_rgb(read_file(path), path)


# A pixel is tissue when sum_c -log10(I_c / 255) > TISSUE_OD, i.e. when the
# product of its three bytes is below 255^3 * 10^-TISSUE_OD: integer arithmetic.
_TISSUE_PRODUCT = int(255**3 * 10 ** (-TISSUE_OD))


def tissue_fraction(rgb: np.ndarray, step: int = 4) -> float:
    """Fraction of pixels that are tissue (summed log10 optical density > 0.15).

    Evaluated on every ``step``-th pixel in each axis, which is plenty for a
    fraction and keeps it cheap.
    """
    sub = rgb[::step, ::step].astype(np.int32)
    product = sub[..., 0] * sub[..., 1] * sub[..., 2]
    return float(np.count_nonzero(product < _TISSUE_PRODUCT) / product.size)


def tissue_mask(rgb: np.ndarray) -> np.ndarray:
    """(H, W) bool: the pixels :func:`tissue_fraction` counts as tissue (summed optical density > 0.15)."""
    a = rgb.astype(np.int32)
    return a[..., 0] * a[..., 1] * a[..., 2] < _TISSUE_PRODUCT


def blank_reason(rgb: np.ndarray, min_tissue: float) -> tuple[str | None, float]:
    """``(reason, tissue_fraction)``: why a tile counts as blank, or None if it is not.

    Blank means one flat colour (a failed scan, an empty frame) or less tissue
    than ``min_tissue``.
    """
    sub = rgb[::8, ::8]
    low, high = int(sub.min()), int(sub.max())
    if high - low <= 12:
        return f"blank tile (uniform colour, values {low}-{high})", 0.0
    fraction = tissue_fraction(rgb)
    if fraction < min_tissue:
        return f"blank tile ({fraction:.1%} tissue, below the minimum {min_tissue:.1%})", fraction
    return None, fraction


def write_rgb(path: Path | str, rgb: np.ndarray, *, quality: int = 95) -> None:
    """Write an RGB uint8 image (JPEG by extension, else PNG/TIFF); raises OSError on failure."""
    path = Path(path)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if path.suffix.lower() in {".jpg", ".jpeg"} else []
    if not cv2.imwrite(str(path), cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR), params):
        raise OSError(f"{path}: could not write image")
