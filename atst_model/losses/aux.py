"""ATST-Net's five auxiliary losses L1-L5 on the fake IHC ``FI = G1(H&E)``, all with gradients.

The fake is unmixed into DAB ``D'`` and hematoxylin ``H'`` and thresholded into
a soft mask ``M'`` by :mod:`atst_model.stain_torch`, the same function prep
used for the real IHC's targets (mask ``M``, the mean DAB inside ``M``, the
nucleus count inside ``M``, all precomputed in the shards and cropped by
:class:`atst_model.data.ShardPairs`). With ``n`` the number of patches:

- L1 = mean (M' - M)^2 over the crop;
- L2 = mean (M' - M)^2 over the n/4 patches of M with the largest positive area;
- L3 = the same over the n/4 patches with the smallest positive area;
- L4 = (mean of D' weighted by M' - mean of D inside M)^2;
- L5 = | soft_count(H', M') - count of nuclei inside M |, the count of a frozen CPP-Net's
  density map integrated over M' (:func:`atst_model.cppnet.count.soft_count`).

Unlike the public code, every term passes gradient to the fake image: M' uses
a sigmoid of the gray level with a temperature in gray units (not slope-100
sigmoids of integer sums, which are exactly 0 or 1 in float32), morphology
by min/max pooling (sub-gradients), and the count is taken with gradient
through the frozen counter to its input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from atst_prep.mask import MaskConfig

from ..cppnet.count import soft_count
from ..cppnet.model import CppNet, load_checkpoint
from ..stain_torch import soft_mask, unmix

__all__ = ["AuxLossConfig", "AuxLosses", "mask_losses", "patch_losses", "dab_loss", "count_loss", "TERMS"]

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
        Soft-threshold width in gray units (see :func:`atst_model.stain_torch.soft_mask`).
    counter_weights : str or None
        CPP-Net checkpoint for L5 (``atst prep train-nuclei``); None: the bundled one.
    eps : float
        Added to the soft mask's area in L4 (px), so an empty M' gives a mean of 0.
    """

    weights: tuple[float, float, float, float, float] = (60.0, 10.0, 10.0, 20.0, 1.0)
    n_patches: int = 16
    mask: MaskConfig = field(default_factory=MaskConfig)
    temperature: float = 0.02
    counter_weights: str | None = None
    eps: float = 1e-3

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
            problems.append(f"eps must be in (0, 1] px, got {self.eps}")
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


def dab_loss(fake_dab: torch.Tensor, fake_mask: torch.Tensor, dab_mean: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """L4: squared difference of the fake's soft-masked mean DAB and the target's, averaged over the batch.

    Parameters
    ----------
    fake_dab : (B, 1, H, W) DAB density of the fake (rgb2hed units).
    fake_mask : (B, 1, H, W) soft mask M' in [0, 1], the weights of the mean.
    dab_mean : (B,) mean DAB density of the real IHC inside M (0 for an empty M).
    """
    m = fake_mask.float()
    mean = (fake_dab.float() * m).flatten(1).sum(1) / (m.flatten(1).sum(1) + eps)
    return (mean - dab_mean.float().view(-1)).square().mean()


def count_loss(counter: CppNet, fake_hema: torch.Tensor, fake_mask: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """L5: | soft count of nuclei of ``fake_hema`` inside ``fake_mask`` - ``count`` |, averaged over the batch.

    Parameters
    ----------
    counter : frozen CPP-Net (hematoxylin input); gradients pass through it to its input.
    fake_hema : (B, 1, H, W) hematoxylin density of the fake (rgb2hed units).
    fake_mask : (B, 1, H, W) soft mask M' in [0, 1].
    count : (B,) nuclei of the real IHC inside M (from the shard's centroids).
    """
    soft = soft_count(counter, fake_hema, fake_mask).float()
    return (soft - count.float().view(-1)).abs().mean()


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
    >>> out = aux(fake, batch["mask"], batch["dab_mean_in_mask"], batch["count_in_mask"])  # doctest: +SKIP
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

    def forward(self, fake: torch.Tensor, mask: torch.Tensor, dab_mean: torch.Tensor,
                count: torch.Tensor) -> dict[str, torch.Tensor]:
        """The five terms and their weighted sum.

        Parameters
        ----------
        fake : (B, 3, H, W) fake IHC in [-1, 1] (G1's output; any float dtype, autocast is fine).
        mask : (B, 1, H, W) real IHC's mask M, {0, 1}.
        dab_mean : (B,) mean DAB density of the real IHC inside M.
        count : (B,) nuclei of the real IHC inside M.

        Returns
        -------
        dict with float32 scalars ``l1`` .. ``l5`` (unweighted) and ``total`` = sum b_i * L_i.
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
            terms["l4"] = dab_loss(dab, fake_mask, dab_mean, self.config.eps)
        with graded("l5"):
            terms["l5"] = count_loss(self.counter, hema, fake_mask, count)
        terms = {k: terms[k] for k in TERMS}
        zero = fake.new_zeros((), dtype=torch.float32)
        terms["total"] = sum((w * terms[k] for k, w in weights.items() if w != 0), zero)
        return terms
