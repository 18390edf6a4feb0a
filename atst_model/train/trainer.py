"""The ATST-Net training loop: CycleGAN plus the auxiliary losses L1-L5.

One step reads like the paper: the generator step with the discriminators
frozen (adversarial + cycle + identity + sum b_i L_i on G1's fake IHC), then
the discriminator step on real images and pooled fakes. bf16 autocast and
channels-last on a GPU, DDP under ``torchrun``, checkpoints that resume
exactly, CSV/TensorBoard logs and sample-grid PNGs.
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from atst_prep.errors import UserError

from ..losses import TERMS, cycle_loss, lsgan
from . import state as st
from .config import TrainerConfig
from .log import RunLog, sample_grid
from .pool import ImagePool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dist:
    """Where this process sits in a (possibly single-process) run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    """Join the process group ``torchrun`` describes in the environment (a no-op when run alone)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    return Dist(rank, world, local)


def _set_requires_grad(modules, flag: bool) -> None:
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(flag)


@contextmanager
def frozen_norm_stats(*modules):
    """Batch-norm layers of ``modules`` normalise with batch statistics but leave their running ones alone.

    G1's running statistics are used at inference on real H&E, so only G1(real
    H&E) may move them: the cycle pass G1(G2(IHC)) and the identity pass G1(IHC)
    run inside this block (likewise G2 on anything but real IHC). A momentum of
    0 keeps ``running = (1 - 0) * running + 0 * batch`` unchanged.
    """
    layers = [m for mod in modules for m in mod.modules()
              if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.training]
    saved = [m.momentum for m in layers]
    for m in layers:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(layers, saved):
            m.momentum = momentum


def _unwrap(model):
    model = getattr(model, "module", model)  # DDP
    return getattr(model, "_orig_mod", model)  # torch.compile


class Trainer:
    """Build everything from a :class:`TrainerConfig`; :meth:`run` trains, :meth:`step` does one step."""

    def __init__(self, config: TrainerConfig, *, device: str | None = None, resume: str | Path | None = "auto",
                 dist_info: Dist | None = None) -> None:
        from atst_prep.mask import MaskConfig

        from ..data import ShardPairs
        from ..losses import AuxLossConfig, AuxLosses
        from ..networks import create_network

        self.config = c = config
        self.dist = dist_info or init_distributed()
        cuda = torch.cuda.is_available() and device != "cpu"
        self.device = torch.device(device or (f"cuda:{self.dist.local_rank}" if cuda else "cpu"))
        self.autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16)
                         if c.precision == "bf16" else nullcontext())
        self.out = Path(c.out)
        torch.manual_seed(c.seed)
        resume_path = None
        if resume:
            resume_path = st.latest(self.out / "checkpoints") if resume == "auto" else Path(resume)

        paths = shard_paths(c.shards)  # before anything heavy: a missing folder is the commonest mistake
        # resuming replaces every weight: the PathoDuet file is only read for a fresh start
        self.g1 = create_network(c.g1, mode=c.g1_mode, encoder_weights=None if resume_path else c.encoder_weights)
        self.g2, self.d_ihc, self.d_he = (create_network(name) for name in (c.g2, c.d, c.d))
        self.nets = {"g1": self.g1, "g2": self.g2, "d_ihc": self.d_ihc, "d_he": self.d_he}
        for name, net in self.nets.items():
            net.to(self.device)
            if c.channels_last and self.device.type == "cuda":
                net.to(memory_format=torch.channels_last)
        # M' must be the same function as prep's M: take Eq. 1's parameters from the shards
        mask_params = _shard_mask_params(paths)
        self.aux = AuxLosses(AuxLossConfig(weights=c.aux_weights, n_patches=c.aux_patches,
                                           mask=MaskConfig(**mask_params), counter_weights=c.nuclei_weights,
                                           temperature=c.aux_temperature, dab_units=c.aux_dab_units,
                                           count_form=c.aux_count_form))
        self.aux.to(self.device)
        self.dataset = ShardPairs(paths, crop=c.crop, keep_list=c.keep_list, seed=c.seed, unpaired=True, raw=True,
                                  flips=c.flips, windows=c.windows)
        if c.init_g1 and not resume_path:
            try:
                self.g1.load_state_dict(load_g1_state(c.init_g1))
            except RuntimeError:
                raise UserError(f"{c.init_g1}: its G1 weights do not fit {c.g1} (another network config)") from None
        self.sampler = st.EpochOrder(len(self.dataset), seed=c.seed, rank=self.dist.rank, world=self.dist.world,
                                      partners=True)  # an item's unpaired IHC: the next pair's, decoded once
        self.steps_per_epoch = max(self.sampler.per_process() // c.batch, 1)
        self.total_steps = c.epochs * self.steps_per_epoch

        betas = (c.beta1, c.beta2)
        self.opt_g = torch.optim.Adam(list(self.g1.parameters()) + list(self.g2.parameters()), lr=c.lr, betas=betas)
        self.opt_d = torch.optim.Adam(list(self.d_ihc.parameters()) + list(self.d_he.parameters()), lr=c.lr,
                                      betas=betas)
        half = self.total_steps / 2
        decay = lambda step: 1.0 if step < half else max(0.0, 1.0 - (step - half) / max(half, 1))  # noqa: E731
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, decay)
        self.sched_d = torch.optim.lr_scheduler.LambdaLR(self.opt_d, decay)
        self.pool_ihc = ImagePool(c.pool_size, seed=c.seed * 2 + 1)
        self.pool_he = ImagePool(c.pool_size, seed=c.seed * 2 + 2)
        self.step_count, self.epoch, self.step_in_epoch = 0, 0, 0

        if self.dist.world > 1:
            ddp = torch.nn.parallel.DistributedDataParallel
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.g1_train, self.g2_train = (ddp(m, device_ids=ids) for m in (self.g1, self.g2))
            self.d_ihc_train, self.d_he_train = (ddp(m, device_ids=ids) for m in (self.d_ihc, self.d_he))
        else:
            self.g1_train, self.g2_train, self.d_ihc_train, self.d_he_train = self.g1, self.g2, self.d_ihc, self.d_he
        if c.compile:
            self.g1_train, self.g2_train = torch.compile(self.g1_train), torch.compile(self.g2_train)

        self.resumed_from = None
        if resume_path is not None:
            self.load(resume_path)
            self.resumed_from = resume_path

    # ------------------------------------------------------------------ one step

    def _batch(self, batch: dict) -> dict:
        from ..data import to_unit

        batch = to_unit(batch, self.device)  # bytes -> [-1, 1] on the device, where it is cheap
        if self.config.channels_last and self.device.type == "cuda":
            batch = {k: v.contiguous(memory_format=torch.channels_last) if isinstance(v, torch.Tensor) and v.dim() == 4
                     else v for k, v in batch.items()}
        return batch

    def step(self, batch: dict) -> dict[str, float]:
        """One generator step (discriminators frozen), then one discriminator step; returns the losses."""
        c = self.config
        b = self._batch(batch)
        he, ihc_unpaired = b["he"], b["ihc_unpaired"]

        _set_requires_grad([self.d_ihc, self.d_he], False)
        with self.autocast:
            # running statistics: G1's from real H&E only, G2's from real IHC only
            fake_ihc = self.g1_train(he)
            fake_he = self.g2_train(ihc_unpaired)
            with frozen_norm_stats(self.g1, self.g2):
                rec_he = self.g2_train(fake_ihc)
                rec_ihc = self.g1_train(fake_he)
            # the frozen discriminators run unwrapped: DDP must not wait for their (absent) gradients
            adv_g1 = lsgan(self.d_ihc(fake_ihc), True)
            adv_g2 = lsgan(self.d_he(fake_he), True)
        cyc = cycle_loss(rec_he, he) + cycle_loss(rec_ihc, ihc_unpaired)
        idt = torch.zeros((), device=self.device)
        if c.lambda_identity > 0:
            with self.autocast, frozen_norm_stats(self.g1, self.g2):
                idt = (self.g1_train(b["ihc"]) - b["ihc"]).abs().float().mean() + \
                      (self.g2_train(he) - he).abs().float().mean()
        aux = self.aux(fake_ihc, b["ihc"], b["mask"], self.dab_target(b))
        loss_g = adv_g1 + adv_g2 + c.lambda_cycle * cyc + c.lambda_identity * idt + self.aux_factor() * aux["total"]
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()

        _set_requires_grad([self.d_ihc, self.d_he], True)
        with self.autocast:
            pooled_ihc = self.pool_ihc.query(fake_ihc.detach())
            pooled_he = self.pool_he.query(fake_he.detach())
            loss_d_ihc = 0.5 * (lsgan(self.d_ihc_train(ihc_unpaired), True) +
                                lsgan(self.d_ihc_train(pooled_ihc), False))
            loss_d_he = 0.5 * (lsgan(self.d_he_train(he), True) + lsgan(self.d_he_train(pooled_he), False))
        self.opt_d.zero_grad(set_to_none=True)
        (loss_d_ihc + loss_d_he).backward()
        self.opt_d.step()
        self.sched_g.step()
        self.sched_d.step()
        self.step_count += 1
        self._last = {"he": he, "fake": fake_ihc.detach(), "ihc": b["ihc"], "mask": b["mask"]}
        losses = {"adv_g1": adv_g1, "adv_g2": adv_g2, "cycle": cyc, "identity": idt, "g_total": loss_g,
                  "d_ihc": loss_d_ihc, "d_he": loss_d_he}
        losses.update({f"aux_{k}": aux[k] for k in (*TERMS, "total")})
        return {k: float(v.detach()) for k, v in losses.items()}

    def aux_factor(self) -> float:
        """The auxiliary losses' weight factor at this step: ``aux_scale``, ramped up over ``aux_warmup`` steps."""
        c = self.config
        ramp = min(1.0, self.step_count / c.aux_warmup) if c.aux_warmup else 1.0
        return c.aux_scale * ramp

    def dab_target(self, batch: dict) -> torch.Tensor:
        """L4's target from a batch, in the auxiliary losses' units."""
        return batch["dab_darkness_in_mask"] if self.config.aux_dab_units == "gray" else batch["dab_mean_in_mask"]

    # ------------------------------------------------------------------ the loop

    def loader(self):
        """This epoch's batches, from the current position (``config.loader``: threads or processes)."""
        from torch.utils.data import DataLoader

        from ..loader import ThreadedLoader

        c = self.config
        self.sampler.set_position(self.epoch, self.step_in_epoch * c.batch)
        self.dataset.set_epoch(self.epoch)
        pin = self.device.type == "cuda"
        if c.loader == "threads":
            return ThreadedLoader(self.dataset, batch_size=c.batch, sampler=self.sampler, threads=c.num_workers,
                                  drop_last=True, pin_memory=pin)
        return DataLoader(self.dataset, batch_size=c.batch, sampler=self.sampler, drop_last=True,
                          num_workers=c.num_workers, pin_memory=pin, persistent_workers=False)

    def run(self, on_step: Callable[[int, dict], None] | None = None) -> list[dict]:
        """Train until the last epoch or ``max_steps``; returns the logged rows of this process."""
        c = self.config
        limit = min(self.total_steps, c.max_steps or self.total_steps)
        runlog = RunLog(self.out) if self.dist.main else None
        if runlog is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            runlog.truncate_after(self.step_count)
        history, start, crops = [], time.perf_counter(), 0
        try:
            while self.step_count < limit:
                for batch in self.loader():
                    losses = self.step(batch)
                    self.step_in_epoch += 1
                    crops += c.batch * self.dist.world
                    row = {"step": self.step_count, "epoch": self.epoch, "lr": self.sched_g.get_last_lr()[0],
                           **losses, "crops_per_s": crops / (time.perf_counter() - start)}
                    history.append(row)
                    if on_step:
                        on_step(self.step_count, row)
                    if runlog is not None and self.step_count % c.log_every == 0:
                        runlog.write(row)
                    if self.dist.main and (self.step_count % c.sample_every == 0 or self.step_count == limit):
                        self.save_samples()
                    if self.step_count % c.checkpoint_every == 0 or self.step_count == limit:
                        self.save()
                    if self.step_count >= limit:
                        break
                if self.step_in_epoch >= self.steps_per_epoch:
                    self.epoch, self.step_in_epoch = self.epoch + 1, 0
        finally:
            if runlog is not None:
                runlog.close()
        return history

    # ------------------------------------------------------------------ state

    def save_samples(self) -> Path:
        s = self._last
        with torch.no_grad():
            soft = self.aux.fake_stains(s["fake"])[2]
        return sample_grid(self.out / "samples" / f"step-{self.step_count:07d}.png", s["he"], s["fake"], s["ihc"],
                           soft, s["mask"])

    def state(self) -> dict:
        return {"config": self.config.to_dict(), "step": self.step_count, "epoch": self.epoch,
                "step_in_epoch": self.step_in_epoch,
                "models": {k: _unwrap(v).state_dict() for k, v in self.nets.items()},
                "optimizers": {"g": self.opt_g.state_dict(), "d": self.opt_d.state_dict()},
                "schedulers": {"g": self.sched_g.state_dict(), "d": self.sched_d.state_dict()},
                "pools": {"ihc": self.pool_ihc.state_dict(), "he": self.pool_he.state_dict()},
                "rng": st.rng_state()}

    def save(self) -> Path | None:
        """Checkpoint (rank 0 writes; every rank waits so none runs ahead of a file being written)."""
        path = self.out / "checkpoints" / f"step-{self.step_count:07d}.pt"
        if self.dist.main:
            st.save(path, self.state())
        if self.dist.world > 1:
            dist.barrier()
        return path if self.dist.main else None

    def load(self, path: Path) -> None:
        payload = st.load(path)
        for k, net in self.nets.items():
            _unwrap(net).load_state_dict(payload["models"][k])
        self.opt_g.load_state_dict(payload["optimizers"]["g"])
        self.opt_d.load_state_dict(payload["optimizers"]["d"])
        self.sched_g.load_state_dict(payload["schedulers"]["g"])
        self.sched_d.load_state_dict(payload["schedulers"]["d"])
        self.pool_ihc.load_state_dict(payload["pools"]["ihc"])
        self.pool_he.load_state_dict(payload["pools"]["he"])
        self.step_count, self.epoch = int(payload["step"]), int(payload["epoch"])
        self.step_in_epoch = int(payload["step_in_epoch"])
        if self.step_in_epoch >= self.steps_per_epoch:
            self.epoch, self.step_in_epoch = self.epoch + 1, 0
        st.set_rng_state(payload["rng"])
        log.info("resumed from %s (step %d, epoch %d)", path, self.step_count, self.epoch)


def load_g1_state(path: str | Path) -> dict:
    """G1's state dict from a training checkpoint (``models.g1``) or a file holding ``g1`` or the state dict."""
    payload = st.load(Path(path))
    if isinstance(payload, dict) and "models" in payload:
        return payload["models"]["g1"]
    if isinstance(payload, dict) and "g1" in payload:
        return payload["g1"]
    return payload


def _shard_mask_params(paths: list[Path]) -> dict:
    """Eq. 1's parameters the shards were built with (all shards must agree)."""
    from atst_prep.shards import read_header

    found = {json_key(read_header(p)["params"]["mask"]) for p in paths}
    if len(found) != 1:
        raise UserError(f"the shards were built with {len(found)} different mask settings; train on one set")
    return dict(json.loads(found.pop()))


def json_key(value) -> str:
    return json.dumps(value, sort_keys=True)


#: Splits a training run reads by default: MIST's and BCI's "train", a plain folder's "all".
#: MIST's "val" and BCI's "test" are the published test sets and are never trained on.
TRAIN_SPLITS = ("train", "all")


def shard_paths(folder: str | Path, splits: tuple[str, ...] | None = TRAIN_SPLITS) -> list[Path]:
    """The non-empty training shards listed by the manifests at or below ``folder``
    (:func:`atst_prep.manifest.shard_paths` with the splits training reads)."""
    from atst_prep.manifest import shard_paths as listed

    return listed(folder, splits)
