"""The networks of the ATST trainer: G1 (H&E -> IHC, ViT + CellViT decoder), G2 (IHC -> H&E), PatchGANs.

Images cross every boundary as ``(B, 3, H, W)`` float tensors in [-1, 1].
Build them by name (``create_network("g1-vitb")``, ``list_networks()``);
PathoDuet weights for G1's encoder come from a user-supplied file
(``encoder_weights=PATH``), never from the network.
"""

from .flops import count_flops, count_parameters
from .g1 import G1, G1Config
from .g2 import G2, G2Config
from .patchgan import PatchGan, PatchGanConfig
from .pathoduet import EncoderWeightsWarning, checkpoint_filter_fn, create_encoder, load_pathoduet
from .registry import create_network, list_networks, network_config, register_network

__all__ = [
    "G1", "G1Config", "G2", "G2Config", "PatchGan", "PatchGanConfig", "EncoderWeightsWarning",
    "checkpoint_filter_fn", "count_flops", "count_parameters", "create_encoder", "create_network",
    "list_networks", "load_pathoduet", "network_config", "register_network",
]
