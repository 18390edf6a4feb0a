"""Model size and cost: parameter counts and FLOPs of one forward pass."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, input_shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> int:
    """FLOPs (multiply and add counted separately) of one forward pass on an input of ``input_shape``.

    Counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls,
    convolutions, attention; element-wise ops are not counted). The input is
    zeros on the model's device: build the model under ``torch.device("meta")``
    to count a large network without memory or compute. The model is run in
    eval mode under ``no_grad`` and its training flag restored.
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(input_shape, device=device, dtype=dtype))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())
