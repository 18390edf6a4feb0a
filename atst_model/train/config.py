"""The trainer's settings (one frozen, validated dataclass) and the per-biomarker presets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from atst_prep.errors import UserError

PRECISIONS = ("bf16", "fp32")

#: The small G1 that ships with the package (``benchmarks/train_demo_g1.py``): g1-tiny trained on
#: synthetic HER2-like pairs, so the demo shows a stain after a few CPU steps. Not for diagnosis.
DEMO_G1 = Path(__file__).resolve().parents[1] / "weights" / "g1-tiny-synthetic.pt"


@dataclass(frozen=True)
class TrainerConfig:
    """Everything a training run depends on; the defaults are the paper's.

    Attributes
    ----------
    shards : folder of prep shards (``shards/<dataset>`` or a folder holding several).
    out : run folder (checkpoints, logs, sample grids).
    g1, g2, d : registered network names (``atst_model.networks``).
    g1_mode : ``"tiles224"`` (nine 224 tiles per 512 crop, as the paper) or ``"native"``.
    encoder_weights : PathoDuet ``checkpoint_HE.pth`` for G1's encoder (None: random init, with a warning).
    crop : training crop side in px (512 crops of 1024 tiles in the paper).
    batch : crops per step per process (the paper uses 1).
    epochs : passes over the kept pairs; the learning rate decays linearly to 0 over the second half.
    max_steps : stop after this many steps (None: all epochs) — short runs, demos, tests.
    lr, beta1, beta2 : Adam, for all four networks.
    lambda_cycle : weight of the cycle loss (L1 + 1 - SSIM), 5 in the paper.
    lambda_identity : weight of the identity loss (0: off, as in the paper).
    aux_weights : b1..b5 of L1..L5 (60, 10, 10, 20, 1 in the paper).
    aux_patches : n, the number of patches L2/L3 split the mask into.
    aux_dab_units : L4's units, "gray" (darkness of the DAB rendering) or "od" (see :mod:`atst_model.losses.aux`).
    aux_count_form : L5's form, "poisson" (in standard deviations of the crop's count), "relative"
        (fraction of the crop's nuclei) or "absolute" (nuclei).
    aux_temperature : width in gray units of the mask threshold's gradient.
    aux_warmup : steps over which the auxiliary losses' weight rises linearly from 0 to 1
        (0: full weight from the first step).
    aux_scale : one factor on all five auxiliary weights (1: the weights as given).
    recipe : the named recipe these settings came from (:data:`RECIPES`), for the record.
    flips : draw one of the eight symmetries of the square per crop (H&E, IHC and mask together).
    windows : "all" the shards' training windows, or "tiled" (non-overlapping ones only: the public
        code's four fixed 512 crops per 1024 tile).
    init_g1 : a checkpoint (``atst train`` run, or a file with a ``g1`` state dict) whose G1 weights
        start a fresh run (fine-tuning; ignored when resuming).
    nuclei_weights : CPP-Net checkpoint for L5 (None: the bundled one).
    pool_size : image pool of the discriminators.
    precision : ``"bf16"`` (autocast on CUDA) or ``"fp32"``.
    channels_last, compile : memory format and ``torch.compile``.
    checkpoint_every, sample_every, log_every : in steps.
    loader : ``"threads"`` (batches built by threads of the training process, the
        fast default; see :mod:`atst_model.loader`) or ``"processes"`` (a
        ``torch.utils.data.DataLoader`` with worker processes).
    num_workers : loader threads (or processes) per training process; 0 loads in the training loop.
    keep_list : CSV from ``atst prep filter-misaligned`` (None: every pair).
    seed : seeds data order, crops, pools and initial weights.
    """

    shards: str = "shards/mist-her2"
    out: str = "runs/her2"
    g1: str = "g1-vitb"
    g2: str = "g2-resunet"
    d: str = "d-patchgan"
    g1_mode: str = "tiles224"
    encoder_weights: str | None = None
    crop: int = 512
    batch: int = 1
    epochs: int = 100
    max_steps: int | None = None
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    lambda_cycle: float = 5.0
    lambda_identity: float = 0.0
    aux_weights: tuple[float, float, float, float, float] = (60.0, 10.0, 10.0, 20.0, 1.0)
    aux_patches: int = 16
    aux_dab_units: str = "gray"
    aux_count_form: str = "poisson"
    aux_temperature: float = 0.2
    aux_warmup: int = 0
    aux_scale: float = 1.0
    recipe: str = "paper"
    flips: bool = True
    windows: str = "all"
    init_g1: str | None = None
    nuclei_weights: str | None = None
    pool_size: int = 50
    precision: str = "bf16"
    channels_last: bool = True
    compile: bool = False
    checkpoint_every: int = 1000
    sample_every: int = 500
    log_every: int = 10
    loader: str = "threads"
    num_workers: int = 2
    keep_list: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "aux_weights", tuple(float(w) for w in self.aux_weights))
        checks = {
            "g1_mode": self.g1_mode in ("tiles224", "native"),
            # tiles224 needs room for one 224 tile; native mode needs whole 16 px ViT patches
            "crop": 64 <= self.crop <= 4096 and (self.crop >= 224 if self.g1_mode == "tiles224"
                                                 else self.crop % 16 == 0),
            "batch": self.batch >= 1, "epochs": self.epochs >= 1,
            "max_steps": self.max_steps is None or self.max_steps >= 1, "lr": 0 < self.lr < 1,
            "beta1": 0 <= self.beta1 < 1, "beta2": 0 <= self.beta2 < 1, "lambda_cycle": self.lambda_cycle >= 0,
            "lambda_identity": self.lambda_identity >= 0,
            "aux_weights": len(self.aux_weights) == 5 and min(self.aux_weights) >= 0,
            "aux_patches": self.aux_patches >= 4, "pool_size": self.pool_size >= 0,
            "aux_dab_units": self.aux_dab_units in ("gray", "od"),
            "aux_count_form": self.aux_count_form in ("poisson", "relative", "absolute"),
            "aux_temperature": 0 < self.aux_temperature <= 1, "recipe": self.recipe in RECIPES,
            "windows": self.windows in ("all", "tiled"), "aux_warmup": self.aux_warmup >= 0,
            "aux_scale": 0 <= self.aux_scale < 1e6,
            "precision": self.precision in PRECISIONS, "checkpoint_every": self.checkpoint_every >= 1,
            "sample_every": self.sample_every >= 1, "log_every": self.log_every >= 1,
            "loader": self.loader in ("threads", "processes"), "num_workers": self.num_workers >= 0,
        }
        bad = [f"{k}={getattr(self, k)!r}" for k, ok in checks.items() if not ok]
        if bad:
            raise UserError(f"invalid training settings: {', '.join(bad)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainerConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def with_overrides(self, **overrides) -> "TrainerConfig":
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


#: Named training recipes: the paper's text and the public ATST-Net code disagree, and nobody
#: knows which produced Table 1, so both are offered (``atst train --recipe``).
#:
#: - ``paper`` (default): b = 60, 10, 10, 20, 1; no identity loss; random training windows
#:   (nine 512 windows per 1024 tile) with flips; L4 in gray units, L5 in Poisson standard
#:   deviations of the crop's count (our units, chosen so that no term drowns the others:
#:   RESULTS.md, aux balance).
#: - ``public-code``: b = 50, 100, 100, 1 and L5 = 100 x |count difference| / 100 (i.e. b5 = 1 on
#:   the absolute difference); identity loss 10; 40 epochs over the four fixed 512 crops of each
#:   tile, no flips.
RECIPES: dict[str, dict] = {
    "paper": dict(aux_weights=(60.0, 10.0, 10.0, 20.0, 1.0), lambda_identity=0.0, aux_dab_units="gray",
                  aux_count_form="poisson", flips=True, windows="all", epochs=100),
    "public-code": dict(aux_weights=(50.0, 100.0, 100.0, 1.0, 1.0), lambda_identity=10.0, aux_dab_units="gray",
                        aux_count_form="absolute", flips=False, windows="tiled", epochs=40),
}


def with_recipe(config: TrainerConfig, name: str) -> TrainerConfig:
    """``config`` with the settings of recipe ``name`` (an unknown name lists the valid ones)."""
    if name not in RECIPES:
        raise UserError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return replace(config, recipe=name, **RECIPES[name])


def _preset(dataset: str, name: str) -> TrainerConfig:
    keep = Path("data_manifests") / f"keep-{dataset}.csv"
    return TrainerConfig(shards=f"shards/{dataset}", out=f"runs/{name}",
                         keep_list=str(keep) if keep.is_file() else None)


#: ``make train BIOMARKER=<name>``: where the shards are, where the run goes; the paper's hyper-parameters.
PRESETS = {
    "her2": lambda: _preset("mist-her2", "her2"),
    "er": lambda: _preset("mist-er", "er"),
    "pr": lambda: _preset("mist-pr", "pr"),
    "ki67": lambda: _preset("mist-ki67", "ki67"),
    "bci": lambda: _preset("bci", "bci"),
    # the demo's synthetic shards, tiny networks, a few CPU steps fine-tuning the shipped synthetic-trained G1
    "demo": lambda: TrainerConfig(shards="demo/shards/mist-her2", out="demo/run", g1="g1-tiny", g2="g2-tiny",
                                  d="d-tiny", crop=256, max_steps=20, precision="fp32", checkpoint_every=10,
                                  sample_every=10, log_every=1, num_workers=0, pool_size=10,
                                  init_g1=str(DEMO_G1), aux_warmup=10),
}


def preset(name: str) -> TrainerConfig:
    """The preset ``name`` (her2, er, pr, ki67, bci, demo); an unknown name lists the valid ones."""
    key = name.lower()
    if key not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[key]()


def _synthetic(shards: Path) -> bool:
    """Shards built from ``atst data synth`` output (its truth files sit beside the source tiles)."""
    import json

    manifest = shards / "manifest.json"
    if not manifest.is_file():
        return False
    root = Path(json.loads(manifest.read_text()).get("source_root", ""))
    return any(root.parent.glob("truth_*.npz"))


def resolve_preset(name: str) -> tuple[TrainerConfig, str | None]:
    """The preset, adapted to what is on disk, and a note saying how (None when used as is).

    A biomarker preset whose shards hold synthetic pairs (the demo's data, or
    ``atst data synth`` output built into ``shards/``), or whose shards are
    missing while the demo's exist, trains the demo configuration instead:
    tiny networks, a few CPU steps. Real shards always get the paper's setup.
    """
    config = preset(name)
    if name.lower() == "demo":
        return config, None
    demo = preset("demo")
    shards = Path(config.shards)
    if _synthetic(shards):
        return replace(demo, shards=config.shards, out=config.out, keep_list=config.keep_list), (
            f"{shards} holds synthetic pairs: training the demo configuration (tiny networks, "
            f"{demo.max_steps} CPU steps)")
    if not shards.exists() and Path(demo.shards).exists():
        return replace(demo, out=config.out), (
            f"no shards in {shards} (build them with 'atst prep build-masks'); training the demo configuration "
            f"instead on {demo.shards}, into {config.out}")
    return config, None


__all__ = ["TrainerConfig", "PRESETS", "RECIPES", "preset", "with_recipe", "field"]
