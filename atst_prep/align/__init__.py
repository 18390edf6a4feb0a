"""Misaligned H&E/IHC pairs: score the alignment, select, register the targets.

- :mod:`.score`: translation, rotation, similarity, overlap and the score of
  one pair from the two hematoxylin densities (pure functions).
- :mod:`.select`: which pairs to keep (threshold rules or a rank cut).
- :mod:`.register`: move IHC-frame targets into the H&E frame.
- :mod:`.store`: ``atst prep filter-misaligned`` over shards (I/O, parallel).
- :mod:`.pictures`: the score histogram and the gallery of the worst pairs.
- :mod:`.realpairs`: pairs with a known misalignment made from a real H&E.
"""

from .score import AlignConfig, Alignment, align_pair, estimate_alignment
from .select import Decision, Selection, select

__all__ = ["AlignConfig", "Alignment", "Decision", "Selection", "align_pair", "estimate_alignment", "select"]
