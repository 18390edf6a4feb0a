"""Networks, losses, trainer, inference and metrics (not yet implemented)."""
