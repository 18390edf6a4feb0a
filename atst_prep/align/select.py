"""Which pairs to keep, from their alignments: threshold rules or a rank cut.

Default (what a MIST user expects: the paper drops ~4 % of MIST ER as
poorly aligned, 4153 -> 4000, and the issue calls a pair misaligned beyond
32 px at 1024 px or 5 degrees), a pair is dropped when, in this order:

1. it cannot be scored (blank, no hematoxylin contrast, unreadable);
2. ``|shift| > max_shift`` px (default 32 px at a 1024 px tile, scaled with
   the tile's long side: 16 px at 512);
3. ``|rotation| > max_rotation`` deg (default 5);
4. ``score < min_score`` (default 0.1: little structure in common even at
   the best alignment; unrelated tiles reach a similarity of 0.03-0.24 and a
   score near 0, well-aligned synthetic and re-stained real tiles 0.75-0.9).

The first rule a pair breaks is its ``rule``; ``reason`` names every rule it
breaks, with the numbers. Alternatively ``keep`` (the N best scores) or
``drop_fraction`` (the worst F) rank the pairs of each group (split) by score
and replace the rules; unscorable pairs are dropped either way.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

from .score import REFERENCE_SIDE, Alignment

#: Rule names, in the order they are checked (and reported).
RULES = ("unscorable", "shift", "rotation", "score", "rank")


@dataclass(frozen=True)
class Selection:
    """How pairs are kept; see the module docstring.

    Attributes
    ----------
    max_shift : float or None
        px of the tile as stored; None: ``reference_shift`` scaled with the tile.
    reference_shift : float
        px at a 1024 px tile, used when ``max_shift`` is None.
    max_rotation : float
        deg.
    min_score : float
        Score floor, in [0, 1].
    keep : int or None
        Keep the ``keep`` best-scoring pairs of each split (replaces the rules).
    drop_fraction : float or None
        Drop the worst ``drop_fraction`` of each split, rounded up (replaces the rules).
    """

    max_shift: float | None = None
    reference_shift: float = 32.0
    max_rotation: float = 5.0
    min_score: float = 0.1
    keep: int | None = None
    drop_fraction: float | None = None

    def __post_init__(self) -> None:
        if self.keep is not None and self.drop_fraction is not None:
            raise ValueError("choose either keep (--keep) or drop_fraction (--drop-fraction), not both")
        if self.keep is not None and self.keep < 0:
            raise ValueError(f"keep must be >= 0, got {self.keep}")
        if self.drop_fraction is not None and not 0 <= self.drop_fraction <= 1:
            raise ValueError(f"drop_fraction must be in [0, 1], got {self.drop_fraction}")
        if self.max_shift is not None and not self.max_shift >= 0:
            raise ValueError(f"max_shift must be >= 0 px, got {self.max_shift}")
        if not (self.reference_shift > 0 and self.max_rotation >= 0):
            raise ValueError("reference_shift must be > 0 and max_rotation >= 0")
        if not 0 <= self.min_score <= 1:
            raise ValueError(f"min_score must be in [0, 1], got {self.min_score}")

    @property
    def ranked(self) -> bool:
        return self.keep is not None or self.drop_fraction is not None

    def shift_limit(self, side: int) -> float:
        """The shift limit, px, for a tile whose long side is ``side`` px."""
        return self.max_shift if self.max_shift is not None else self.reference_shift * side / REFERENCE_SIDE

    def params(self) -> dict:
        """The rule as recorded in shards, manifest and summary (only what applies)."""
        if self.keep is not None:
            return {"keep": self.keep}
        if self.drop_fraction is not None:
            return {"drop_fraction": self.drop_fraction}
        params = asdict(self)
        for key in ("keep", "drop_fraction"):
            del params[key]
        return params


@dataclass(frozen=True)
class Decision:
    """``kept``; ``rule``: the first rule broken ("" when kept); ``reason``: every rule broken, with numbers."""

    kept: bool
    rule: str = ""
    reason: str = ""


def _broken(a: Alignment, side: int, selection: Selection) -> list[tuple[str, str]]:
    limit = selection.shift_limit(side)
    broken = []
    if a.shift > limit:
        broken.append(("shift", f"shift {a.shift:.1f} px > {limit:.1f} px"))
    if abs(a.rotation) > selection.max_rotation:
        broken.append(("rotation", f"rotation {a.rotation:+.1f} deg beyond +-{selection.max_rotation:g} deg"))
    if a.score < selection.min_score:
        broken.append(("score", f"score {a.score:.3f} < {selection.min_score:g}"))
    return broken


def select(alignments: Sequence[Alignment], sides: Sequence[int], groups: Sequence[str],
           selection: Selection = Selection()) -> list[Decision]:
    """Decide every pair.

    Parameters
    ----------
    alignments : one per pair.
    sides : the long side, px, of each pair's tile (scales the default shift limit).
    groups : the group (split) of each pair; rank cuts apply per group.
    selection : the rule.

    Returns
    -------
    list of Decision, in the input order.
    """
    if not len(alignments) == len(sides) == len(groups):
        raise ValueError("alignments, sides and groups must have one entry per pair")
    decisions: list[Decision | None] = [None] * len(alignments)
    for i, a in enumerate(alignments):
        if not a.scored:
            decisions[i] = Decision(False, "unscorable", f"unscorable: {a.reason}")
        elif not selection.ranked:
            broken = _broken(a, sides[i], selection)
            decisions[i] = Decision(not broken, broken[0][0] if broken else "", "; ".join(r for _, r in broken))
    if selection.ranked:
        for group in sorted(set(groups)):
            members = [i for i, g in enumerate(groups) if g == group]
            scored = sorted((i for i in members if alignments[i].scored), key=lambda i: (-alignments[i].score, i))
            n_keep = selection.keep if selection.keep is not None else \
                len(members) - math.ceil(selection.drop_fraction * len(members) - 1e-9)
            for rank, i in enumerate(scored):
                if rank < n_keep:
                    decisions[i] = Decision(True)
                else:
                    what = f"keep {selection.keep}" if selection.keep is not None else \
                        f"drop fraction {selection.drop_fraction:g}"
                    decisions[i] = Decision(False, "rank", f"score {alignments[i].score:.3f} ranks "
                                                           f"{rank + 1} of {len(members)} in {group} ({what})")
    return decisions  # type: ignore[return-value]
