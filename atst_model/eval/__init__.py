"""``atst eval``: paired metrics and feature-distribution metrics of a folder of fakes against reals.

:mod:`.pairs` matches files by stem, :mod:`.features` runs the feature networks
(Inception for FID/KID, ResNet-50 for PHV), :mod:`.run` writes the outputs.
"""
