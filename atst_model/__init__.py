"""ATST-Net in PyTorch: subpackages networks, losses, train, infer, eval, metrics, cppnet; data, loader, stain_torch."""
