"""Build speed of two revisions of this repository, measured in one run, interleaved.

Run: ``python benchmarks/ab_build.py [--base REV] [--pairs 16] [--rounds 3] [--layout compact]``.

This VM's speed wanders by 20-40 % between minutes (and fsync's with the disk), so two builds timed
in separate runs cannot show a change of a few tens of ms per pair. Here the base revision (a git
worktree in a temporary folder) and the working tree build the same real 1024 px pairs
(:func:`benchmarks.prep_scale.write_pairs`) alternately, ``--rounds`` times each, each build in a
fresh process on one core (r = 30, 512 px windows every 256 px, classical counter); the best time
per pair of each is kept and their ratio printed. Both must write the same shards (checked by the
manifests' sample lists and the pass digests' test, not here).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BUILD = """
import json, sys, time
from pathlib import Path
import cv2
cv2.setNumThreads(1)
from atst_prep.build import BuildConfig, build
from atst_prep.mask import MaskConfig
from atst_prep.sources import detect
data, out, layout = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
config = BuildConfig(mask=MaskConfig(closing_radius=30), shard_size=4, counter="classical", layout=layout)
start = time.perf_counter()
summary = build(detect(data), out, config, jobs=1)
print(json.dumps({"ms": 1e3 * (time.perf_counter() - start), "samples": summary.samples}))
"""


def build_ms_per_pair(tree: Path, data: Path, out: Path, layout: str) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-c", BUILD, str(data), str(out), layout], cwd=tree, env=env,
                          check=True, capture_output=True, text=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["ms"] / result["samples"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="0f538ce", help="revision to compare the working tree with")
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--layout", default="compact", choices=("compact", "raw"))
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from benchmarks.prep_scale import write_pairs

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = tmp / "base"
        subprocess.run(["git", "worktree", "add", "--detach", str(base), args.base], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            write_pairs(tmp / "data", args.pairs)
            times: dict[str, list[float]] = {"base": [], "head": []}
            for r in range(args.rounds):
                for name, tree in (("base", base), ("head", ROOT)):
                    out = tmp / f"out-{name}-{r}"
                    times[name].append(build_ms_per_pair(tree, tmp / "data", out, args.layout))
                    print(f"round {r + 1} {name}: {times[name][-1]:.0f} ms per pair", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=False)
    best = {k: min(v) for k, v in times.items()}
    print(f"\n{args.layout}, {args.pairs} real 1024 px pairs, one core, best of {args.rounds} "
          f"(whole build, imports excluded): base {args.base} {best['base']:.0f} ms per pair, "
          f"working tree {best['head']:.0f} ms per pair: {best['base'] / best['head']:.2f}x")


if __name__ == "__main__":
    main()
