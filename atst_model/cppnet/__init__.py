"""CPP-Net (Chen et al., IEEE TIP 2023) in PyTorch, with a density head for differentiable counts.

A StarDist-style network: for every pixel, the probability of being inside
a nucleus and the distances to the nucleus boundary along ``n_rays``
directions; CPP-Net's context enhancement refines each distance from the
predictions at points sampled along the ray. Instances come from polygon
non-maximum suppression (StarDist's C++ implementation). A third head
predicts a nucleus density map whose integral over a region is the number of
nuclei centred there: the differentiable count of ATST-Net's L5.
"""

from .model import CONFIGS, CppNet, CppNetConfig, load_checkpoint, save_checkpoint

__all__ = ["CONFIGS", "CppNet", "CppNetConfig", "load_checkpoint", "save_checkpoint"]
