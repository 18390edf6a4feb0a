"""Training losses of ATST-Net: the auxiliary losses L1-L5 (:mod:`.aux`)."""

from .aux import TERMS, AuxLossConfig, AuxLosses, count_loss, dab_loss, mask_losses, patch_losses

__all__ = ["TERMS", "AuxLossConfig", "AuxLosses", "count_loss", "dab_loss", "mask_losses", "patch_losses"]
