"""``atst prep build-masks`` as one call: the datasets under a folder, each with its descriptor's defaults.

:func:`build_masks` finds the datasets (:func:`atst_prep.sources.detect`), takes the closing radius from
their descriptors unless one is given (30, the public script's, when they disagree or have none), gives
the classical nucleus counter the channel that suits each marker (hematoxylin + DAB for nuclear markers,
whose positive nuclei are brown), warns where a split holds another number of pairs than the dataset
publishes, and builds (:func:`atst_prep.build.build`) the datasets that share one configuration together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .build import BuildConfig, BuildSummary, build
from .errors import ConfigError, checked
from .mask import MaskConfig
from .nuclei.store import NO_COUNTER
from .sources import NUCLEAR_MARKERS, SourceError, count_mismatch, detect, load_descriptor
from .synth import is_synthetic

#: Eq. 1's closing radius when neither the command nor the datasets' descriptors say one (the public script's).
DEFAULT_RADIUS = 30
NUCLEI_CHANNELS = ("auto", "hema", "hema+dab")


@dataclass
class BuildMasksResult(BuildSummary):
    """A build's summary, with the closing radius used and the notes made before building."""

    closing_radius: int = DEFAULT_RADIUS
    notes: list[str] = field(default_factory=list)


def nuclei_channel_for(marker: str | None, channel: str = "auto") -> str:
    """The classical counter's channel: ``channel``, or for ``auto`` hema+dab for nuclear markers, else hema."""
    if channel not in NUCLEI_CHANNELS:
        raise ConfigError(f"--nuclei-channel must be auto, hema or hema+dab, got {channel!r}")
    return channel if channel != "auto" else ("hema+dab" if marker in NUCLEAR_MARKERS else "hema")


def build_masks(data: Path, out: Path, *, datasets: Sequence[str] | None = None,
                splits: Sequence[str] | None = None, closing_radius: int | None = None, sigma: float = 1.0,
                min_dab: float = 0.03, min_tissue: float = 0.01, window: int = 512, window_stride: int | None = None,
                shard_size: int = 32, store_images: bool = True, image_compression: str = "none", layout: str = "compact",
                counter: str = "classical", nuclei_weights: Path | str | None = None, nuclei_channel: str = "auto",
                jobs: int = 1, backend: str = "joblib", scheduler: str | None = None, overwrite: bool = False,
                on_note: Callable[[str], None] | None = None, on_ready: Callable[[list[str], int], None] | None = None,
                on_start: Callable[[int, int], None] | None = None, on_shard: Callable[[dict], None] | None = None,
                on_reject: Callable[[dict], None] | None = None) -> BuildMasksResult:
    """Build the shards of every dataset under ``data`` into ``out/<dataset>/<split>/``.

    Parameters are those of ``atst prep build-masks``. ``on_note(line)`` gets each warning or remark
    before building, ``on_ready(dataset_ids, radius)`` what is about to be built; ``on_start``, ``on_shard`` and
    ``on_reject`` are :func:`atst_prep.build.build`'s. Raises a :class:`~atst_prep.errors.UserError`
    (one line) for unknown datasets or invalid parameters.
    """
    nuclei_channel_for(None, nuclei_channel)  # an invalid choice fails before any work
    sources = detect(data)
    if datasets:
        unknown = sorted(set(datasets) - {s.id for s in sources})
        if unknown:
            raise SourceError(f"{data}: no dataset {', '.join(unknown)} (found: {', '.join(s.id for s in sources)})")
        sources = [s for s in sources if s.id in datasets]
    descriptors = {s.id: load_descriptor(s.id) for s in sources}
    radii = {d.closing_radius for d in descriptors.values() if d is not None}
    radius = closing_radius if closing_radius is not None else (radii.pop() if len(radii) == 1 else DEFAULT_RADIUS)
    mask = checked(MaskConfig, sigma=sigma, closing_radius=radius, min_dab=min_dab)
    groups: dict[tuple, list] = {}  # datasets that share one configuration are built together
    for source in sources:
        options = (("channel", nuclei_channel_for(source.marker, nuclei_channel)),) if counter == "classical" else ()
        groups.setdefault(options, []).append(source)
    configs = {options: checked(
        BuildConfig, mask=mask, shard_size=shard_size, store_images=store_images, min_tissue=min_tissue,
        image_compression=image_compression, window=window, window_stride=window_stride, layout=layout,
        counter=None if counter == NO_COUNTER else counter,
        counter_weights=str(nuclei_weights) if nuclei_weights is not None else None, counter_options=options)
        for options in groups}
    result = BuildMasksResult(closing_radius=radius)

    def note(line: str) -> None:
        result.notes.append(line)
        if on_note:
            on_note(line)

    for source in sources:
        if source.kind == "mist" and is_synthetic(source.root.parent):
            note(f"{source.id}: synthetic data (atst data synth), not checked against published counts")
            continue
        for name in source.splits:
            if not splits or name in splits:
                warning = count_mismatch(source, source.list_split(name), descriptors[source.id])
                if warning:
                    note(f"warning: {warning}")
    if on_ready:
        on_ready([s.id for s in sources], radius)
    for options, group in groups.items():
        result.merge(build(group, out, configs[options], splits=splits, jobs=jobs, backend=backend,
                           scheduler=scheduler, overwrite=overwrite, on_start=on_start, on_reject=on_reject,
                           on_shard=on_shard))
    return result


__all__ = ["BuildMasksResult", "DEFAULT_RADIUS", "build_masks", "nuclei_channel_for"]
