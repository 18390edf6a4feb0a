"""Inference with a trained generator.

:mod:`.translate` (images and folders, seamless blended tiling via :mod:`.stitch`), :mod:`.slide` (whole
slides, streamed through the threads of :mod:`.pipeline` into the pyramidal BigTIFF writer of :mod:`.pyramid`).
"""
