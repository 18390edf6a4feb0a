"""Every command turns the bad inputs users really produce into one unwrapped line and a non-zero exit.

Table-driven: each row is a command line with one mistake, the text the error
line must name (the file or option), and the rule that nothing already
written changes. The terminal is 40 columns wide, so a wrapped line would
split the culprit and fail the row.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from atst_prep.build import BuildConfig, build
from atst_prep.mask import MaskConfig
from atst_prep.sources import detect
from cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def world(tmp_path_factory, synth_data) -> dict[str, Path]:
    """Shards, a copy with a truncated shard, one with a manifest of another schema, and bad files."""
    root = tmp_path_factory.mktemp("user-errors")
    build(detect(synth_data), root / "shards", BuildConfig(mask=MaskConfig(closing_radius=5), shard_size=4,
                                                            counter="classical", window=128), jobs=1)
    good = root / "shards" / "mist-her2"
    truncated = root / "truncated" / "mist-her2"
    shutil.copytree(good, truncated)
    victim = sorted(truncated.rglob("shard-*.h5"))[0]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    other = root / "other-schema" / "mist-her2"
    shutil.copytree(good, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["schema_version"] = 99
    del manifest["splits"]
    (other / "manifest.json").write_text(json.dumps(manifest))
    image = root / "image.png"
    cv2.imwrite(str(image), np.full((32, 32, 3), 200, np.uint8))
    wrong_columns = root / "keep.csv"
    wrong_columns.write_text("pair,ok\nsynth_00000,1\n")
    foreign = root / "foreign.pt"  # a checkpoint whose G1 is another network
    from atst_model.networks import create_network
    from atst_model.train import state as st

    st.save(foreign, {"g1": create_network("g1-tiny", embed_dim=32).state_dict()})
    a_file = root / "a-file"
    a_file.write_text("not a folder")
    return {"root": root, "good": good, "truncated": truncated, "other": other, "image": image,
            "keep": wrong_columns, "foreign": foreign, "file": a_file, "victim": victim}


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


CASES = [
    # (id, args with {placeholders}, text the error line must contain)
    ("build-masks missing data", "prep build-masks --data {root}/nowhere --out {root}/o1", "nowhere"),
    ("build-masks bad radius", "prep build-masks --data {synth} --closing-radius -4", "closing_radius"),
    ("build-masks bad window", "prep build-masks --data {synth} --out {root}/o2 --window 8", "window"),
    ("build-masks out under a file", "prep build-masks --data {synth} --out {file}/shards -j 1", "a-file"),
    ("count-nuclei missing", "prep count-nuclei --shards {root}/nowhere", "nowhere"),
    ("count-nuclei other schema", "prep count-nuclei --shards {other} --overwrite", "schema version"),
    ("filter-misaligned other schema", "prep filter-misaligned --shards {other}", "schema version"),
    ("filter-misaligned truncated", "prep filter-misaligned --shards {truncated} -j 1", "shard-00000.h5"),
    ("preview missing", "prep preview --shards {root}/nowhere", "nowhere"),
    ("verify truncated", "prep verify --shards {truncated}", "shard-00000.h5"),
    ("train-nuclei bad weights out", "prep train-nuclei --out {file}/w.pt --steps 1 --synthetic 1 --calibrate 0", "a-file"),
    ("synth out of range", "data synth --out {root}/s --n-train -1", "n_train"),
    ("train keep-list columns", "train --preset demo --g1-mode native --shards {good} --out {root}/r1 --crop 128 --keep-list {keep}", "keep.csv"),
    ("train missing keep-list", "train --preset demo --g1-mode native --shards {good} --out {root}/r2 --crop 128 --keep-list {root}/no.csv",
     "no.csv"),
    ("train resume an image", "train --preset demo --g1-mode native --shards {good} --out {root}/r3 --crop 128 --resume {image}", "image.png"),
    ("train other schema", "train --preset demo --g1-mode native --shards {other} --out {root}/r4 --crop 128", "schema version"),
    ("train truncated shard", "train --preset demo --g1-mode native --shards {truncated} --out {root}/r5 --crop 128", "shard-00000.h5"),
    ("train crop is not the window", "train --preset demo --g1-mode native --shards {good} --out {root}/r6 --crop 96", "--window 96"),
    ("train g1 of another config", "train --preset demo --g1-mode native --shards {good} --out {root}/r7 --crop 128 --init-g1 {foreign}",
     "foreign.pt"),
    ("train bad lr", "train --preset demo --g1-mode native --shards {good} --out {root}/r8 --crop 128 --lr 5", "lr=5"),
    ("translate an image as checkpoint", "translate {image} {image} --out {root}/t1", "image.png"),
    ("translate a foreign checkpoint", "translate {foreign} {image} --out {root}/t2", "foreign.pt"),
    ("eval missing fakes", "eval --fake {root}/nofake --real {root} --out {root}/e1", "nofake"),
    ("eval unknown table", "eval --fake {root} --real {root} --out {root}/e2 --compare nope", "nope"),
    ("check-targets missing", "check-targets --shards {root}/nowhere", "nowhere"),
    ("check-targets bad n", "check-targets --shards {good} --n 0", "--n"),
    ("check-targets truncated", "check-targets --shards {truncated} --n 2", "shard-00000.h5"),
]


@pytest.mark.parametrize("case, args, culprit", CASES, ids=[c[0] for c in CASES])
def test_a_user_error_is_one_line_naming_the_culprit(world, synth_data, case, args, culprit):
    before = {k: _digest(world[k]) for k in ("good", "truncated", "other")}
    line = args.format(**{k: str(v) for k, v in world.items()}, synth=synth_data)
    result = runner.invoke(app, line.split(), env={"COLUMNS": "40", "HF_HUB_OFFLINE": "1"})
    out = result.output
    assert result.exit_code not in (0, None), out
    assert "Traceback" not in out and not isinstance(result.exception, (AssertionError, KeyError, TypeError)), out
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, out
    assert culprit in errors[0], out
    assert {k: _digest(world[k]) for k in before} == before  # nothing already written changed
    torch.set_num_threads(torch.get_num_threads())  # (keeps the import used: runs import torch for the rows)
