"""Shared fixtures: real IHC images, a small synthetic MIST-like dataset."""

from __future__ import annotations

import os
import signal

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach a model hub

# A suite started in the background by a non-interactive shell (`nohup make test &`) gets SIGINT ignored,
# and every process it starts inherits that: the Ctrl-C tests need a foreground run's disposition (a
# handled signal, unlike an ignored one, is reset to the default in the children).
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

from pathlib import Path

import numpy as np
import pytest
from skimage import data

from atst_prep.synth import SynthConfig, write_dataset

#: Small tiles keep the suite fast; the mask's closing radius is scaled with them.
SYNTH_SIZE = 256


@pytest.fixture(scope="session")
def real_ihc() -> np.ndarray:
    """scikit-image's real IHC sample (DAB + hematoxylin, 512x512)."""
    return data.immunohistochemistry()


@pytest.fixture(scope="session")
def real_ihc_1024(real_ihc) -> np.ndarray:
    """The real IHC sample tiled to a MIST-sized 1024x1024 tile (mirrored, so no seams)."""
    top = np.concatenate([real_ihc, real_ihc[:, ::-1]], axis=1)
    return np.ascontiguousarray(np.concatenate([top, top[::-1]], axis=0))


@pytest.fixture(scope="session")
def real_ihc_crops(real_ihc) -> list[np.ndarray]:
    """Varied real IHC views: crops, rotations, a non-square one."""
    return [
        real_ihc[:256, :256], real_ihc[256:, 256:], np.ascontiguousarray(np.rot90(real_ihc[100:400, 50:450])),
        real_ihc[::-1, :].copy(), real_ihc[37:499, 11:300],
    ]


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """A MIST-like HER2 dataset of 6 train + 2 val synthetic pairs (256 px), built once."""
    out = tmp_path_factory.mktemp("synth")
    write_dataset(out, n_train=6, n_val=2, config=SynthConfig(size=SYNTH_SIZE), marker="HER2", seed=11)
    return out
