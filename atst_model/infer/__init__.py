"""Inference: seamless tiled translation of images with a trained generator (:mod:`.translate`, :mod:`.stitch`)."""
