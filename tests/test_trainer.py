"""The ATST trainer on CPU with the tiny networks: one step, exact resume, DDP, logs and pictures."""

from __future__ import annotations

import os
import socket
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from atst_model.train.config import PRESETS, TrainerConfig, preset, resolve_preset
from atst_model.train.trainer import Dist, Trainer
from atst_prep.build import BuildConfig, build
from atst_prep.mask import MaskConfig
from atst_prep.sources import detect


@pytest.fixture(scope="module")
def shards(tmp_path_factory, synth_data) -> Path:
    out = tmp_path_factory.mktemp("train-shards")
    build(detect(synth_data), out, BuildConfig(mask=MaskConfig(closing_radius=5), shard_size=4, window=128,
                                               window_stride=64,
                                               counter="classical"))
    return out / "mist-her2"


def _config(shards: Path, out: Path, **kw) -> TrainerConfig:
    base = replace(preset("demo"), shards=str(shards), out=str(out), crop=128, g1_mode="native", max_steps=4,
                   checkpoint_every=2, sample_every=2, log_every=1, num_workers=0, pool_size=2, epochs=3)
    return replace(base, **kw)


def test_one_training_step_runs_and_every_loss_is_finite(shards, tmp_path):
    trainer = Trainer(_config(shards, tmp_path, max_steps=1), device="cpu", resume=None, dist_info=Dist())
    history = trainer.run()
    assert len(history) == 1
    row = history[0]
    for key in ("adv_g1", "adv_g2", "cycle", "d_ihc", "d_he", "aux_l1", "aux_l2", "aux_l3", "aux_l4", "aux_l5"):
        assert np.isfinite(row[key]), key
    assert (tmp_path / "checkpoints" / "step-0000001.pt").is_file()
    assert (tmp_path / "log.csv").read_text().count("\n") == 2


def test_training_reads_the_train_split_only(shards, tmp_path):
    import h5py

    from atst_model.train.trainer import shard_paths

    trainer = Trainer(_config(shards, tmp_path, max_steps=1), device="cpu", resume=None, dist_info=Dist())
    every, train = shard_paths(shards, splits=None), shard_paths(shards)
    assert set(train) < set(every) and all(p.parent.name == "train" for p in train)  # MIST's val is its test set
    train_names = set()
    for path in train:
        with h5py.File(path, "r") as f:
            train_names |= {str(g.attrs["name"]) for g in f["samples"].values()}
    assert set(trainer.dataset.names()) == train_names
    with pytest.raises(FileNotFoundError, match="splits present: train, val"):
        shard_paths(shards, splits=("test",))


def test_resumed_run_computes_the_same_losses_as_an_uninterrupted_one(shards, tmp_path):
    straight = Trainer(_config(shards, tmp_path / "a", max_steps=4), device="cpu", resume=None,
                       dist_info=Dist()).run()
    first = Trainer(_config(shards, tmp_path / "b", max_steps=2), device="cpu", resume=None, dist_info=Dist())
    first.run()
    second = Trainer(_config(shards, tmp_path / "b", max_steps=4), device="cpu", resume="auto", dist_info=Dist())
    assert second.step_count == 2
    resumed = second.run()
    assert [r["step"] for r in resumed] == [3, 4]
    for a, b in zip(straight[2:], resumed):
        for key in ("g_total", "d_ihc", "d_he", "aux_total", "cycle"):
            assert a[key] == b[key], (key, a[key], b[key])


def test_sample_grid_and_logs_are_written(shards, tmp_path):
    Trainer(_config(shards, tmp_path, max_steps=2), device="cpu", resume=None, dist_info=Dist()).run()
    import cv2

    grid = cv2.imread(str(tmp_path / "samples" / "step-0000002.png"))
    assert grid is not None and grid.shape[1] >= 4 * 128
    header = (tmp_path / "log.csv").read_text().splitlines()[0].split(",")
    assert {"step", "g_total", "aux_l5", "crops_per_s", "lr"} <= set(header)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, shards: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    config = _config(Path(shards), Path(out), max_steps=2, checkpoint_every=2)
    trainer = Trainer(config, device="cpu", resume=None, dist_info=Dist(rank, world, rank))
    trainer.run()
    flat = torch.cat([p.detach().flatten() for p in trainer.g1.parameters()])
    torch.save(flat, Path(out) / f"g1-rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ddp_with_two_gloo_processes_keeps_the_replicas_identical(shards, tmp_path):
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), str(shards), str(tmp_path)), nprocs=2)
    a, b = (torch.load(tmp_path / f"g1-rank{r}.pt") for r in (0, 1))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (tmp_path / "checkpoints" / "step-0000002.pt").is_file()


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_valid(name):
    assert isinstance(preset(name), TrainerConfig)


def test_paper_defaults():
    c = TrainerConfig()
    assert (c.lr, c.beta1, c.beta2, c.lambda_cycle, c.aux_weights, c.crop, c.batch) == \
        (2e-4, 0.5, 0.999, 5.0, (60.0, 10.0, 10.0, 20.0, 1.0), 512, 1)


def test_crop_too_small_for_224_tiles_is_refused_up_front():
    with pytest.raises(ValueError, match="crop=128"):
        TrainerConfig(crop=128, g1_mode="tiles224")


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ValueError, match="her2"):
        preset("lung")


def test_biomarker_preset_on_synthetic_shards_trains_the_demo_configuration(shards, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shards").symlink_to(shards.parent)
    config, note = resolve_preset("her2")
    assert config.g1 == "g1-tiny" and config.shards == "shards/mist-her2" and "synthetic" in note


def test_biomarker_preset_without_shards_falls_back_to_the_demo_shards(shards, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo" / "shards").mkdir(parents=True)
    (tmp_path / "demo" / "shards" / "mist-her2").symlink_to(shards)
    config, note = resolve_preset("her2")
    assert config.shards == "demo/shards/mist-her2" and config.out == "runs/her2" and config.g1 == "g1-tiny"
    assert "no shards in shards/mist-her2" in note


def test_train_command_runs_a_few_steps(shards, tmp_path):
    from cli.main import app

    result = CliRunner().invoke(app, ["train", "--preset", "demo", "--shards", str(shards), "--out",
                                      str(tmp_path / "run"), "--max-steps", "2", "--crop", "128", "--g1-mode", "native",
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "sample grid" in result.output and (tmp_path / "run" / "log.csv").is_file()


def test_each_active_aux_term_reaches_g1s_parameters(shards, tmp_path):
    from atst_model.losses import TERMS

    trainer = Trainer(_config(shards, tmp_path, max_steps=1, batch=2, init_g1=None), device="cpu", resume=None,
                      dist_info=Dist())
    params = [p for p in trainer.g1.parameters() if p.requires_grad]
    reached = set()
    for batch in list(trainer.loader())[:3]:  # a term is exactly 0 (no gradient) where M' already equals M
        b = trainer._batch(batch)
        out = trainer.aux(trainer.g1(b["he"]), b["ihc"], b["mask"], trainer.dab_target(b))
        for k in TERMS:
            assert out[k].requires_grad, k
            if out[k] > 0:
                grads = torch.autograd.grad(out[k], params, retain_graph=True, allow_unused=True)
                norm = torch.stack([g.norm() for g in grads if g is not None]).norm()
                assert torch.isfinite(norm) and norm > 0, f"{k} does not reach G1"
                reached.add(k)
    assert reached == set(TERMS), f"never non-zero: {set(TERMS) - reached}"


def test_g1s_running_statistics_describe_real_he_only(shards, tmp_path):
    import copy

    trainer = Trainer(_config(shards, tmp_path, max_steps=1, lambda_identity=1.0), device="cpu", resume=None,
                      dist_info=Dist())
    norms = [m for m in trainer.g1.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms, "the test needs a G1 with batch norm"
    batch = next(iter(trainer.loader()))
    reference = copy.deepcopy(trainer.g1).train()
    with torch.no_grad():
        reference(trainer._batch(batch)["he"])  # one forward on the real H&E: what the statistics must see
    trainer.step(batch)  # also runs G1 on fake H&E (cycle) and on real IHC (identity)
    want = dict(reference.named_buffers())
    for name, buf in trainer.g1.named_buffers():
        if "running_" in name:
            torch.testing.assert_close(buf, want[name], msg=f"{name} moved by a pass on something else than H&E")


def test_recipes_set_what_they_say():
    from atst_model.train.config import RECIPES, with_recipe

    paper = with_recipe(TrainerConfig(), "paper")
    assert (paper.aux_weights, paper.lambda_identity, paper.aux_count_form) == ((60, 10, 10, 20, 1), 0, "poisson")
    public = with_recipe(TrainerConfig(), "public-code")
    assert (public.aux_weights, public.lambda_identity, public.aux_count_form, public.windows, public.epochs) == \
        ((50, 100, 100, 1, 1), 10, "absolute", "tiled", 40)
    assert set(RECIPES) == {"paper", "public-code"}
    with pytest.raises(ValueError, match="paper, public-code"):
        with_recipe(TrainerConfig(), "mine")


def test_aux_warmup_ramps_the_auxiliary_weight_linearly():
    from types import SimpleNamespace

    config = TrainerConfig(aux_warmup=4, aux_scale=0.5)
    factors = [Trainer.aux_factor(SimpleNamespace(config=config, step_count=s)) for s in range(7)]
    assert factors == [0.0, 0.125, 0.25, 0.375, 0.5, 0.5, 0.5]
    assert Trainer.aux_factor(SimpleNamespace(config=TrainerConfig(), step_count=0)) == 1.0
