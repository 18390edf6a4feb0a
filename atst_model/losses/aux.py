"""ATST-Net's five auxiliary losses L1-L5 on the fake IHC ``FI = G1(H&E)``, all with gradients.

The fake is unmixed into DAB ``D'`` and hematoxylin ``H'`` and thresholded into
a mask ``M'`` by :mod:`atst_model.stain_torch`: prep's Eq. 1 in value (so the
real IHC as the fake gives ``M' = M`` exactly) with a soft pipeline's gradient.
Each target is the same function of the real IHC crop that its prediction is
of the fake, on the same extent: ``M`` is Eq. 1 of the training window
(stored by prep, :func:`atst_prep.mask.window_masks`), the L4 target is the
mean darkness inside ``M`` of that crop, and the L5 target is counted on the
real crop by the same frozen counter that counts the fake. With ``n`` the
number of patches:

- L1 = mean (M' - M)^2 over the crop;
- L2 = mean (M' - M)^2 over the n/4 patches of M with the largest positive area;
- L3 = the same over the n/4 patches with the smallest positive area;
- L4 = (mean of d' weighted by M' - mean of d inside M)^2, with d the darkness
  ``1 - dab_gray(D)`` of the DAB-only rendering in [0, 1] (``dab_units="gray"``,
  the public code's units and the quantity Eq. 1 thresholds) or the DAB
  density itself (``"od"``, rgb2hed units, ~14x smaller). Both means add
  ``eps`` (1 % of the crop's area) to the mask's area: a speck of M' cannot
  command a huge gradient, and the two sides stay the same function;
- L5 = | c(H', M') - c(H, M) | / sqrt(max(c(H, 1), 1)): the count of a frozen
  CPP-Net's density map integrated over each mask
  (:func:`atst_model.cppnet.count.soft_count`), in units of the Poisson
  standard deviation of the real crop's nuclei (``count_form="poisson"``);
  ``"relative"`` divides by the crop's nuclei instead, ``"absolute"`` does not
  divide (the paper's and public code's form).

Why these units (``benchmarks/aux_balance.py``, RESULTS.md): the absolute
count difference grows with the crop's area and its gradient does not shrink
as the gap closes; L4 in optical density is ~14x weaker than in gray units;
a mean over a few pixels of M' has a gradient of 1/area. The forms above keep
every term's gradient into G1 within 10x of the others at the paper's weights.

Unlike the public code, every term passes gradient to the fake image: M' takes
its gradient from a sigmoid of the gray level with a temperature in gray units
(not slope-100 sigmoids of integer sums, which are exactly 0 or 1 in float32),
morphology by min/max pooling (sub-gradients), and the count is taken with
gradient through the frozen counter to its input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from atst_prep.mask import MaskConfig

from ..cppnet.count import density_of, soft_count
from ..cppnet.model import CppNet, load_checkpoint
from ..stain_torch import DEFAULT_TEMPERATURE, dab_gray, soft_mask, unmix

__all__ = ["AuxLossConfig", "AuxLosses", "mask_losses", "patch_losses", "dab_loss", "count_loss", "darkness",
           "TERMS", "DAB_UNITS", "COUNT_FORMS"]

#: Units of L4: "gray" (darkness 1 - dab_gray, in [0, 1]) or "od" (DAB optical density, rgb2hed units).
DAB_UNITS = ("gray", "od")
#: Forms of L5: |difference| / sqrt(nuclei of the real crop) ("poisson"), / nuclei ("relative"), or in nuclei.
COUNT_FORMS = ("poisson", "relative", "absolute")

#: Names of the five terms, in the paper's order (keys of :meth:`AuxLosses.forward`'s dict).
TERMS = ("l1", "l2", "l3", "l4", "l5")


@dataclass(frozen=True)
class AuxLossConfig:
    """Parameters of L1-L5; the defaults are the paper's.

    Attributes
    ----------
    weights : (b1, b2, b3, b4, b5)
        Weights of L1..L5 in the generator's total (paper: 60, 10, 10, 20, 1).
    n_patches : int
        Patches of the L2/L3 grid (a square of an even number: 4, 16, 36, ...);
        crop sides must be multiples of its side.
    mask : MaskConfig
        Eq. 1's parameters; must be those prep used for the target masks
        (the shards' ``params["mask"]``).
    temperature : float
        Width in gray units of the threshold's gradient (see :func:`atst_model.stain_torch.soft_mask`);
        the mask's value is the hard Eq. 1 whatever it is.
    counter_weights : str or None
        CPP-Net checkpoint for L5 (``atst prep train-nuclei``); None: the bundled one.
    eps : float
        Added to both masks' areas in L4's means, as a fraction of the crop's area.
    dab_units : {"gray", "od"}
        L4's units (see the module docstring).
    count_form : {"relative", "absolute"}
        L5's form (see the module docstring).
    """

    weights: tuple[float, float, float, float, float] = (60.0, 10.0, 10.0, 20.0, 1.0)
    n_patches: int = 16
    mask: MaskConfig = field(default_factory=MaskConfig)
    temperature: float = DEFAULT_TEMPERATURE
    counter_weights: str | None = None
    eps: float = 0.01
    dab_units: str = "gray"
    count_form: str = "poisson"

    def __post_init__(self) -> None:
        problems = []
        if len(self.weights) != 5 or any(not math.isfinite(w) or w < 0 for w in self.weights):
            problems.append(f"weights must be 5 finite numbers >= 0, got {self.weights}")
        side = math.isqrt(max(self.n_patches, 0))
        if side * side != self.n_patches or side % 2 or side == 0:
            problems.append(f"n_patches must be the square of an even number (4, 16, 36, ...), got {self.n_patches}")
        if not (0 < self.temperature <= 1):
            problems.append(f"temperature must be in (0, 1] gray units, got {self.temperature}")
        if not (0 < self.eps <= 1):
            problems.append(f"eps must be in (0, 1] (a fraction of the crop's area), got {self.eps}")
        if self.dab_units not in DAB_UNITS:
            problems.append(f"dab_units must be one of {', '.join(DAB_UNITS)}, got {self.dab_units!r}")
        if self.count_form not in COUNT_FORMS:
            problems.append(f"count_form must be one of {', '.join(COUNT_FORMS)}, got {self.count_form!r}")
        if not isinstance(self.mask, MaskConfig):
            problems.append(f"mask must be a MaskConfig, got {type(self.mask).__name__}")
        if problems:
            raise ValueError("invalid auxiliary-loss parameters: " + "; ".join(problems))
        object.__setattr__(self, "weights", tuple(float(w) for w in self.weights))


def mask_losses(fake_mask: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L1: mean squared error of the masks over the whole crop and batch; (B, 1, H, W) each -> scalar."""
    return (fake_mask.float() - mask.float()).square().mean()


def patch_losses(fake_mask: torch.Tensor, mask: torch.Tensor, n_patches: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """L2 and L3: mean squared error inside the n/4 most and n/4 least positive patches of ``mask``.

    Parameters
    ----------
    fake_mask, mask : (B, 1, H, W), values in [0, 1]; H and W multiples of ``sqrt(n_patches)``.
    n_patches : int, a square of an even number.

    Returns
    -------
    l2, l3 : scalars, averaged over the selected pixels of every image.
        Patches are ranked by positive area of ``mask`` with a stable sort, so
        ties (e.g. many empty patches) go to the lower patch index (row-major).
    """
    b, _, h, w = mask.shape
    g = math.isqrt(n_patches)
    if g * g != n_patches or h % g or w % g:
        raise ValueError(f"a {h}x{w} crop does not split into {n_patches} equal patches ({g}x{g} grid)")
    k = n_patches // 4
    err = (fake_mask.float() - mask.float()).square().view(b, g, h // g, g, w // g).mean(dim=(2, 4)).flatten(1)
    area = mask.detach().float().view(b, g, h // g, g, w // g).sum(dim=(2, 4)).flatten(1)  # (B, n)
    largest = torch.sort(area, dim=1, descending=True, stable=True).indices[:, :k]
    smallest = torch.sort(area, dim=1, stable=True).indices[:, :k]
    # patches are equal in size, so the mean of patch means is the mean over their pixels
    return err.gather(1, largest).mean(), err.gather(1, smallest).mean()


def darkness(dab: torch.Tensor) -> torch.Tensor:
    """``1 - dab_gray(dab)``: how dark the DAB-only rendering is, in [0, 1); L4's gray units."""
    return 1.0 - dab_gray(dab)


def dab_loss(fake_value: torch.Tensor, fake_mask: torch.Tensor, target: torch.Tensor, eps: float = 1e-3,
             mask: torch.Tensor | None = None) -> torch.Tensor:
    """L4: squared difference of the fake's mask-weighted mean DAB and the target's, averaged over the batch.

    Parameters
    ----------
    fake_value : (B, 1, H, W) DAB of the fake, in L4's units (darkness or density).
    fake_mask : (B, 1, H, W) mask M' in [0, 1], the weights of the mean.
    target : (B,) the plain mean of the same quantity of the real IHC inside M (0 for an empty M).
    eps : px added to the area of M' (and of M, when ``mask`` is given) in the means.
    mask : (B, 1, H, W) M; when given, the target is damped as the fake's mean is,
        ``target * |M| / (|M| + eps)``, so the real IHC as the fake scores 0.
    """
    m = fake_mask.float()
    mean = (fake_value.float() * m).flatten(1).sum(1) / (m.flatten(1).sum(1) + eps)
    target = target.float().view(-1)
    if mask is not None:
        area = mask.float().flatten(1).sum(1)
        target = target * (area / (area + eps))
    return (mean - target).square().mean()


def count_loss(counter: CppNet, fake_hema: torch.Tensor, fake_mask: torch.Tensor, hema: torch.Tensor,
               mask: torch.Tensor, form: str = "relative") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L5: the count of ``fake_hema`` inside ``fake_mask`` against the real crop's inside ``mask``, same counter.

    Parameters
    ----------
    counter : frozen CPP-Net (hematoxylin input); gradients pass through it to its input.
    fake_hema, hema : (B, 1, H, W) hematoxylin density of the fake and of the real IHC crop (rgb2hed units).
    fake_mask, mask : (B, 1, H, W) M' and M.
    form : "poisson" (|difference| / sqrt of the real crop's nuclei), "relative" (/ the nuclei) or
        "absolute" (|difference|); the divisor is at least 1.

    Returns
    -------
    loss : scalar, averaged over the batch.
    counts : dict of (B,) tensors ``fake`` (c(H', M')), ``target`` (c(H, M)) and ``crop`` (c(H, 1)).
    """
    with torch.no_grad():  # one pass of the counter over the real crop serves both sums
        density = density_of(counter, hema).float()
        crop, target = density.flatten(1).sum(1), (density * mask.float()).flatten(1).sum(1)
    fake = soft_count(counter, fake_hema, fake_mask).float()
    diff = (fake - target).abs()
    if form == "relative":
        diff = diff / crop.clamp_min(1.0)
    elif form == "poisson":
        diff = diff / crop.clamp_min(1.0).sqrt()
    return diff.mean(), {"fake": fake.detach(), "target": target, "crop": crop}


class AuxLosses(nn.Module):
    """L1-L5 and their weighted sum; holds the frozen CPP-Net of L5.

    Parameters
    ----------
    config : AuxLossConfig
    counter : CppNet, optional
        The nucleus model of L5; by default loaded from ``config.counter_weights``
        (or the bundled checkpoint). It is frozen: no parameter requires grad
        and it stays in eval mode whatever ``.train()`` is called with.

    Examples
    --------
    >>> aux = AuxLosses(AuxLossConfig()).to("cuda")              # doctest: +SKIP
    >>> out = aux(fake, batch["ihc"], batch["mask"], batch["dab_darkness_in_mask"])  # doctest: +SKIP
    >>> out["total"].backward()                                 # doctest: +SKIP
    """

    def __init__(self, config: AuxLossConfig = AuxLossConfig(), counter: CppNet | None = None) -> None:
        super().__init__()
        self.config = config
        if counter is None:
            from ..cppnet.counter import BUNDLED_WEIGHTS

            counter, _ = load_checkpoint(Path(config.counter_weights or BUNDLED_WEIGHTS), "cpu")
        if counter.config.in_channels != 1:
            raise ValueError(f"L5 needs a hematoxylin-only CPP-Net (in_channels=1), this one takes "
                             f"{counter.config.in_channels} channels")
        counter.requires_grad_(False)
        self.counter = counter.eval()

    def train(self, mode: bool = True) -> "AuxLosses":
        super().train(mode)
        self.counter.eval()  # batch-norm statistics of the frozen counter must not move
        return self

    def fake_stains(self, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """D', H' and M' of a fake IHC (B, 3, H, W) in [-1, 1]: three (B, 1, H, W) float32 tensors."""
        dab, hema = unmix(fake)
        return dab, hema, soft_mask(dab, self.config.mask, self.config.temperature)

    def dab_target(self, ihc: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """L4's target of real IHC crops (B, 3, H, W) in [-1, 1] with masks M: (B,), in ``dab_units``.

        The loader gives the same value from the bytes (``dab_darkness_in_mask``,
        ``dab_mean_in_mask``); this is for callers without a loader.
        """
        with torch.no_grad():
            dab, _ = unmix(ihc)
            value = darkness(dab) if self.config.dab_units == "gray" else dab
            m = mask.float()
            area = m.flatten(1).sum(1)
            return torch.where(area > 0, (value * m).flatten(1).sum(1) / area.clamp_min(1), area * 0)

    def forward(self, fake: torch.Tensor, ihc: torch.Tensor, mask: torch.Tensor,
                dab_target: torch.Tensor) -> dict[str, torch.Tensor]:
        """The five terms and their weighted sum.

        Parameters
        ----------
        fake : (B, 3, H, W) fake IHC in [-1, 1] (G1's output; any float dtype, autocast is fine).
        ihc : (B, 3, H, W) the real IHC crop in [-1, 1] (paired with the fake's H&E): L5's count target.
        mask : (B, 1, H, W) real IHC's mask M (Eq. 1 of the window), {0, 1}.
        dab_target : (B,) mean DAB of the real IHC inside M, in ``config.dab_units``
            (the loader's ``dab_darkness_in_mask`` for "gray", ``dab_mean_in_mask`` for "od").

        Returns
        -------
        dict with float32 scalars ``l1`` .. ``l5`` (unweighted), ``total`` = sum b_i * L_i,
        and, detached, ``count_fake``, ``count_target``, ``count_crop`` (B,) (L5's counts).
        A term of weight 0 is still computed and returned, without an autograd
        graph: it costs no backward pass (ablations train faster).
        """
        weights = dict(zip(TERMS, self.config.weights))
        grad = torch.is_grad_enabled()

        def graded(*keys: str):  # a term of weight 0 is still computed and logged, but without a graph
            return torch.set_grad_enabled(grad and any(weights[k] != 0 for k in keys))

        with graded(*TERMS):
            dab, hema, fake_mask = self.fake_stains(fake)
        mask = mask.to(fake_mask.dtype)
        with graded("l2", "l3"):
            l2, l3 = patch_losses(fake_mask, mask, self.config.n_patches)
        terms = {"l2": l2, "l3": l3}
        with graded("l1"):
            terms["l1"] = mask_losses(fake_mask, mask)
        with graded("l4"):
            value = darkness(dab) if self.config.dab_units == "gray" else dab
            eps = self.config.eps * mask.shape[-2] * mask.shape[-1]
            terms["l4"] = dab_loss(value, fake_mask, dab_target, eps, mask)
        with graded("l5"):
            real_hema = unmix(ihc)[1]
            terms["l5"], counts = count_loss(self.counter, hema, fake_mask, real_hema, mask, self.config.count_form)
        out = {k: terms[k] for k in TERMS}
        zero = fake.new_zeros((), dtype=torch.float32)
        out["total"] = sum((w * out[k] for k, w in weights.items() if w != 0), zero)
        out.update({f"count_{k}": v for k, v in counts.items()})
        return out
