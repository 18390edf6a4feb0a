"""Named network configurations: ``create_network("g1-vitb")`` and friends.

Each entry is a function returning a frozen, validated config dataclass
(G1Config, G2Config, PatchGanConfig, ...; each has ``build()``);
``create_network(name, **overrides)`` replaces fields and builds. Register
more with :func:`register_network`.

Entries
-------
g1-vitb     G1 as in the paper: ViT-B/16 at 224 (PathoDuet's shape), 9 blended 224 tiles per 512 crop.
g1-vitb-native  the same network, ViT at the crop's size (interpolated position embedding).
g1-tiny     G1 for CPU tests and the demo: ViT embed 64, depth 4, heads 2, narrow decoder.
g2-resunet  G2: ResNet-U-Net, 64 -> 256 channels, 3 down-samplings, 6 bottleneck blocks.
g2-tiny     G2 for CPU tests and the demo.
d-patchgan  D_IHC / D_HE: 70x70 PatchGAN (C64-C128-C256-C512, InstanceNorm).
d-tiny      PatchGAN with 8 base channels (still 70x70) for CPU tests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from torch import nn

from .g1 import G1Config
from .g2 import G2Config
from .patchgan import PatchGanConfig

_REGISTRY: dict[str, Callable[[], Any]] = {}


def register_network(name: str) -> Callable[[Callable[[], Any]], Callable[[], Any]]:
    """Decorator: register a zero-argument function returning a config dataclass with a ``build()`` method."""
    def wrap(fn: Callable[[], Any]) -> Callable[[], Any]:
        if name in _REGISTRY:
            raise ValueError(f"a network named {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn
    return wrap


def list_networks() -> list[str]:
    """Registered names, sorted."""
    return sorted(_REGISTRY)


def network_config(name: str, **overrides: Any) -> Any:
    """The config of entry ``name`` with fields replaced by ``overrides`` (validated, nothing built).

    Raises
    ------
    ValueError
        Unknown name (the message lists the valid ones), unknown field (lists the fields), or a
        value the config rejects (names the field).
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown network {name!r}; valid: {', '.join(list_networks())}")
    config = _REGISTRY[name]()
    fields = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"{name}: unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(fields))}")
    return dataclasses.replace(config, **overrides)


def create_network(name: str, **overrides: Any) -> nn.Module:
    """Build entry ``name`` (see the module docstring) with config fields replaced by ``overrides``.

    Example: ``create_network("g1-vitb", encoder_weights="checkpoint_HE.pth", mode="native")``.
    """
    return network_config(name, **overrides).build()


@register_network("g1-vitb")
def _g1_vitb() -> G1Config:
    return G1Config()


@register_network("g1-vitb-native")
def _g1_vitb_native() -> G1Config:
    return G1Config(mode="native")


@register_network("g1-tiny")
def _g1_tiny() -> G1Config:
    return G1Config(embed_dim=64, depth=4, num_heads=2, decoder_channels=(8, 8, 16, 32), bottleneck_blocks=2)


@register_network("g2-resunet")
def _g2_resunet() -> G2Config:
    return G2Config()


@register_network("g2-tiny")
def _g2_tiny() -> G2Config:
    return G2Config(base_channels=8, max_channels=32, n_down=2, blocks_per_level=1, bottleneck_blocks=2)


@register_network("d-patchgan")
def _d_patchgan() -> PatchGanConfig:
    return PatchGanConfig()


@register_network("d-tiny")
def _d_tiny() -> PatchGanConfig:
    return PatchGanConfig(base_channels=8)
