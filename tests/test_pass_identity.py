"""The shard passes give the same shards and manifests as before the shard-pass engine (issue 14).

``tests/data/pass_digests.json`` holds the content digests of what build-masks, count-nuclei and
filter-misaligned --register wrote on the session's synthetic pairs, recorded with the code before the
passes moved onto :mod:`atst_prep.engine`. Every dataset and attribute is digested except those that
name this run's folders (``source_root``, the keep-list path) or hash file bytes that contain them.
Regenerate only for an intended change of the shard format: ``ATST_REGEN_DIGESTS=1 pytest`` this file.
(Regenerated once, for schema 3: the root ``layout`` attribute and ``params["layout"]``; every dataset and
other attribute of the raw layout was checked equal to the code before, value by value.)
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from atst_prep.align.score import AlignConfig
from atst_prep.align.select import Selection
from atst_prep.align.store import filter_misaligned
from atst_prep.build import BuildConfig, build
from atst_prep.mask import MaskConfig
from atst_prep.nuclei.store import count_nuclei
from atst_prep.sources import detect
from atst_prep.verify import content_digest

GOLDEN = Path(__file__).parent / "data" / "pass_digests.json"
#: attributes / manifest keys that name this run's folders or hash bytes holding them
VOLATILE = {"source_root", "nuclei_source_sha256", "alignment_source_sha256", "package_version", "sha256", "bytes",
            "keep_list", "root"}


def shard_digest(path: Path) -> str:
    return content_digest(path, exclude=frozenset(VOLATILE))


def _scrub(obj):
    if isinstance(obj, dict):
        return {k: _scrub(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_scrub(v) for v in obj]
    return obj


def digests(out: Path) -> dict[str, str]:
    result = {str(p.relative_to(out)): shard_digest(p) for p in sorted(out.rglob("shard-*.h5"))}
    for m in sorted(out.rglob("manifest.json")):
        text = json.dumps(_scrub(json.loads(m.read_text())), sort_keys=True)
        result[str(m.relative_to(out))] = hashlib.sha256(text.encode()).hexdigest()
    return result


def test_build_count_and_filter_give_the_recorded_shards(synth_data, tmp_path):
    out = tmp_path / "shards"
    config = BuildConfig(mask=MaskConfig(closing_radius=5), shard_size=3, window=128, counter=None, layout="raw")
    build(detect(synth_data), out, config)
    stages = {"build": digests(out)}
    count_nuclei(out, "classical")
    stages["count"] = digests(out)
    filter_misaligned(out, AlignConfig(), Selection(), register=True, keep_list=tmp_path / "keep.csv")
    stages["filter"] = digests(out)
    stages["keep_list"] = hashlib.sha256((tmp_path / "keep.csv").read_bytes()).hexdigest()
    if os.environ.get("ATST_REGEN_DIGESTS"):
        GOLDEN.write_text(json.dumps(stages, indent=1, sort_keys=True) + "\n")
    assert stages == json.loads(GOLDEN.read_text())


def test_the_build_masks_command_is_its_library_call(synth_data, tmp_path):
    from typer.testing import CliRunner

    from atst_prep.build_masks import build_masks
    from cli.main import app

    args = dict(closing_radius=5, window=128, shard_size=3, counter="classical", jobs=1)
    result = build_masks(synth_data, tmp_path / "lib", **args)
    cli = CliRunner().invoke(app, ["prep", "build-masks", "--data", str(synth_data), "--out", str(tmp_path / "cli"),
                                   "-r", "5", "--window", "128", "--shard-size", "3", "--jobs", "1"])
    assert cli.exit_code == 0, cli.output
    assert result.closing_radius == 5 and result.samples == 8
    assert digests(tmp_path / "lib") == digests(tmp_path / "cli")
