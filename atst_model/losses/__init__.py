"""Training losses of ATST-Net: CycleGAN's adversarial, cycle and SSIM terms (:mod:`.gan`) and the
auxiliary losses L1-L5 (:mod:`.aux`)."""

from .aux import TERMS, AuxLossConfig, AuxLosses, count_loss, dab_loss, mask_losses, patch_losses
from .gan import cycle_loss, lsgan, ssim

__all__ = ["TERMS", "AuxLossConfig", "AuxLosses", "count_loss", "cycle_loss", "dab_loss", "lsgan", "mask_losses",
           "patch_losses", "ssim"]
