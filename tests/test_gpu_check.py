"""``benchmarks/gpu_check.py --smoke``: the device script runs end to end on a CPU with tiny sizes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_section_and_writes_json_and_markdown(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(["--smoke", "--json", str(tmp_path / "g.json"), "--md", str(tmp_path / "g.md")])
    sections = results["sections"]
    assert set(sections) == {"train", "aux", "translate", "cppnet"}
    for name, out in sections.items():
        assert "error" not in out and "skipped" not in out, (name, out)
    assert sections["aux"]["perfect_fake_ok"] is True
    assert sections["train"]["compiled"]["ms_per_crop"] > 0 and sections["train"]["eager"]["ratio"] > 0
    assert json.loads((tmp_path / "g.json").read_text())["smoke"] is True
    md = (tmp_path / "g.md").read_text()
    assert "| translate native, Mpx/s |" in md and "compile warm-up" in md
