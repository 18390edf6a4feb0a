"""The atst command line: help, the used-by commands as written, errors as one line."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest
from typer.testing import CliRunner

from atst_prep.build import read_manifest
from atst_prep.preview import NUCLEUS_COLOUR
from atst_prep.shards import iter_samples
from atst_prep.synth import SynthConfig, write_dataset
from cli.main import app

from .badfiles import add_bad_pairs

runner = CliRunner()
ATST = [sys.executable, "-m", "cli.main"]
REPO = Path(__file__).resolve().parents[1]


def _run(args, cwd, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    return subprocess.run(ATST + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, **kwargs)


@pytest.mark.parametrize("args", [[], ["prep"], ["data"], ["prep", "build-masks"], ["prep", "count-nuclei"],
                                  ["prep", "preview"], ["prep", "verify"], ["data", "synth"]])
def test_every_command_has_help(args):
    result = runner.invoke(app, args + ["--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_build_masks_as_written_from_the_readme_data_folder(tmp_path, synth_data):
    shutil.copytree(synth_data, tmp_path / "data")  # the README's place for datasets
    result = _run(["prep", "build-masks", "--closing-radius", "5"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(tmp_path / "shards" / "mist-her2")
    assert manifest["params"]["mask"]["closing_radius"] == 5
    assert sum(s["samples"] for s in manifest["splits"].values()) == 8
    assert "pairs/s" in result.stderr
    assert manifest["params"]["nuclei"]["counter"] == "classical"  # counted by default
    for sample in iter_samples(tmp_path / "shards" / "mist-her2" / "val" / "shard-00000.h5", arrays=()):
        assert sample["centroids"].shape == (sample["areas"].shape[0], 2) and len(sample["areas"]) > 0


def test_count_nuclei_after_a_build_without_counting_then_preview_shows_them_and_verify_passes(tmp_path, synth_data):
    out = tmp_path / "shards"
    result = runner.invoke(app, ["prep", "build-masks", "--data", str(synth_data), "--out", str(out), "-r", "5",
                                 "--shard-size", "4", "--counter", "none", "-j", "1"])
    assert result.exit_code == 0, result.output
    shard = out / "mist-her2" / "train" / "shard-00000.h5"
    assert "centroids" not in next(iter_samples(shard, arrays=()))
    result = runner.invoke(app, ["prep", "count-nuclei", "--shards", str(out), "-j", "1"])
    assert result.exit_code == 0, result.output
    assert "8 pairs counted in 3 shards (0 already counted)" in result.output and "pairs/s" in result.output
    assert all(len(s["centroids"]) > 0 for s in iter_samples(shard, arrays=()))
    result = runner.invoke(app, ["prep", "count-nuclei", "--shards", str(out), "-j", "1"])
    assert result.exit_code == 0 and "0 pairs counted in 0 shards (3 already counted)" in result.output
    result = runner.invoke(app, ["prep", "verify", "--shards", str(out)])
    assert result.exit_code == 0 and "3 shards OK, 0 problems" in result.output
    result = runner.invoke(app, ["prep", "preview", "--shards", str(out), "--n", "2"])
    assert result.exit_code == 0, result.output
    sheet = cv2.cvtColor(cv2.imread(str(out / "mist-her2" / "preview.png")), cv2.COLOR_BGR2RGB)
    assert (sheet == NUCLEUS_COLOUR).all(axis=-1).sum() > 20  # cyan centroid dots


def test_build_preview_verify_with_flags(tmp_path, synth_data):
    out = tmp_path / "shards"
    result = runner.invoke(app, ["prep", "build-masks", "--data", str(synth_data), "--out", str(out),
                                 "--closing-radius", "5", "--shard-size", "4", "-j", "1"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["prep", "preview", "--shards", str(out), "--n", "3"])
    assert result.exit_code == 0, result.output
    sheet = cv2.imread(str(out / "mist-her2" / "preview.png"))
    assert sheet is not None and sheet.shape[1] == 4 * 256 and sheet.shape[0] > 3 * 256
    result = runner.invoke(app, ["prep", "verify", "--shards", str(out)])
    assert result.exit_code == 0 and "3 shards OK, 0 problems" in result.output


def test_verify_finds_a_corrupted_shard(tmp_path, synth_data):
    out = tmp_path / "shards"
    runner.invoke(app, ["prep", "build-masks", "--data", str(synth_data), "--out", str(out), "-r", "5", "-j", "1"])
    shard = out / "mist-her2" / "train" / "shard-00000.h5"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    result = runner.invoke(app, ["prep", "verify", "--shards", str(out)])
    assert result.exit_code == 1 and "checksum mismatch" in result.output


def test_rejected_inputs_give_one_line_each_and_exit_code_3(tmp_path, synth_data):
    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    root = data / "MIST" / "HER2" / "TrainValAB"
    bad = add_bad_pairs(root / "trainA", root / "trainB", root / "trainA" / "synth_00000.jpg",
                        root / "trainB" / "synth_00000.jpg")
    result = _run(["prep", "build-masks", "--data", str(data), "--out", str(tmp_path / "out"), "-r", "5"],
                  cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("rejected ")]
    assert len(lines) == len(bad) + 1
    for name in bad:
        assert sum(name in line for line in lines) == 1
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args, message", [
    (["prep", "build-masks", "--data", "no/such/folder"], "no/such/folder"),
    (["prep", "build-masks", "--closing-radius", "-4"], "closing_radius"),
    (["prep", "verify", "--shards", "nothing-here"], "no manifest.json"),
    (["prep", "build-masks", "--backend", "spark"], "unknown backend"),
    (["prep", "build-masks", "--counter", "cppnet", "--nuclei-weights", "missing.pt"], "missing.pt"),
    (["prep", "count-nuclei", "--counter", "cppnet", "--nuclei-weights", "missing.pt"], "missing.pt"),
    (["prep", "count-nuclei", "--counter", "cppnet", "--nuclei-weights", "data"], "data"),
    (["prep", "count-nuclei", "--counter", "nope"], "unknown nucleus counter 'nope'"),
    (["prep", "count-nuclei", "--shards", "nothing-here"], "no manifest.json"),
])
def test_user_errors_are_one_line_without_traceback(tmp_path, synth_data, args, message):
    shutil.copytree(synth_data, tmp_path / "data")
    result = _run(args, cwd=tmp_path)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("error:")]) == 1


def test_synth_command_writes_a_mist_like_tree(tmp_path):
    result = runner.invoke(app, ["data", "synth", "--out", str(tmp_path), "--n-train", "2", "--n-val", "1",
                                 "--size", "128", "--marker", "ER"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "MIST" / "ER" / "TrainValAB" / "trainB").glob("*.jpg"))) == 2
    assert (tmp_path / "MIST" / "ER" / "truth_val.npz").is_file()


@pytest.fixture(scope="module")
def big_data(tmp_path_factory) -> Path:
    """Enough 1024 px pairs that a build takes a second or more: room to interrupt it."""
    out = tmp_path_factory.mktemp("big")
    write_dataset(out, n_train=10, n_val=0, config=SynthConfig(size=1024), seed=3)
    return out


def _interrupt_when_first_shard_appears(cmd_out: Path, proc: subprocess.Popen, sig: int) -> int:
    deadline = time.monotonic() + 120
    while not list(cmd_out.rglob("shard-*.h5")):
        assert proc.poll() is None, "build finished before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    os.killpg(proc.pid, sig)
    proc.wait(timeout=60)
    return len(list(cmd_out.rglob("shard-*.h5")))


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_build_resumes_to_the_same_shards(tmp_path, big_data, sig):
    args = ["prep", "build-masks", "--data", str(big_data), "-r", "30", "--shard-size", "1", "-j", "1"]
    reference = _run(args + ["--out", str(tmp_path / "ref")], cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr

    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(ATST + args + ["--out", str(out)], cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = _interrupt_when_first_shard_appears(out, proc, sig)
    assert 0 < done < 10
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "resume" in proc.stderr.read()
    resumed = _run(args + ["--out", str(out)], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    ref_files = sorted(p.relative_to(tmp_path / "ref") for p in (tmp_path / "ref").rglob("*.h5"))
    assert ref_files == sorted(p.relative_to(out) for p in out.rglob("*.h5"))
    for rel in ref_files:
        assert (out / rel).read_bytes() == (tmp_path / "ref" / rel).read_bytes(), rel
    assert not list(out.rglob("*.partial"))


@pytest.mark.slow
def test_dask_backend_without_a_scheduler_starts_a_local_cluster(tmp_path, synth_data):
    pytest.importorskip("distributed")
    out = tmp_path / "shards"
    result = runner.invoke(app, ["prep", "build-masks", "--data", str(synth_data), "--out", str(out), "-r", "5",
                                 "--backend", "dask", "-j", "2"])
    assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["prep", "verify", "--shards", str(out)]).exit_code == 0


@pytest.mark.slow
def test_count_nuclei_killed_mid_run_leaves_old_or_new_shards_and_resumes_to_the_same_bytes(tmp_path, big_data):
    build = _run(["prep", "build-masks", "--data", str(big_data), "--out", str(tmp_path / "pending"), "-r", "30",
                  "--shard-size", "1", "--counter", "none", "-j", "1"], cwd=tmp_path)
    assert build.returncode == 0, build.stderr
    for name in ("ref", "out"):
        shutil.copytree(tmp_path / "pending", tmp_path / name)
    reference = _run(["prep", "count-nuclei", "--shards", str(tmp_path / "ref"), "-j", "1"], cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr

    out = tmp_path / "out"
    shards = sorted(p.relative_to(out) for p in out.rglob("shard-*.h5"))
    inodes = {rel: (out / rel).stat().st_ino for rel in shards}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(ATST + ["prep", "count-nuclei", "--shards", str(out), "-j", "1"], cwd=tmp_path, env=env,
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while all((out / rel).stat().st_ino == inodes[rel] for rel in shards):  # until one shard is replaced
        assert proc.poll() is None, "count-nuclei finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    old = {rel: (tmp_path / "pending" / rel).read_bytes() for rel in shards}
    new = {rel: (tmp_path / "ref" / rel).read_bytes() for rel in shards}
    now = {rel: (out / rel).read_bytes() for rel in shards}
    assert all(now[rel] in (old[rel], new[rel]) for rel in shards)
    assert 0 < sum(now[rel] == new[rel] for rel in shards) < len(shards)

    resumed = _run(["prep", "count-nuclei", "--shards", str(out), "-j", "1"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    assert all((out / rel).read_bytes() == new[rel] for rel in shards)
    assert not list(out.rglob("*.partial"))
    verified = _run(["prep", "verify", "--shards", str(out)], cwd=tmp_path)
    assert verified.returncode == 0 and "10 shards OK, 0 problems" in verified.stdout
