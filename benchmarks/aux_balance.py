"""Does any term drown the others? Each weighted loss's gradient norm into G1's parameters, for both recipes.

Run: ``python benchmarks/aux_balance.py [--steps 100] [--forms] [--out benchmarks/aux_balance.json]``
(CPU, tiny networks, the synthetic ablation task of :mod:`atst_model.eval.ablation`; ~5 min on 2 cores).

For each recipe (``paper``, ``public-code``; :data:`atst_model.train.config.RECIPES`)
a trainer is built on the task's shards; at initialisation and after
``--steps`` training steps, the generator loss is split into its terms
(adversarial G1, b_cycle x cycle, b_identity x identity, b_i x L_i) and the
norm of each term's gradient with respect to G1's parameters is measured,
averaged over ``--batches`` batches. ``--forms`` also measures the rejected
alternatives at the paper's weights (L4 in optical density, L5 absolute).
Prints one table per recipe and writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atst_model.eval import ablation as A  # noqa: E402
from atst_model.losses import TERMS, cycle_loss, lsgan  # noqa: E402
from atst_model.train.config import TrainerConfig, with_recipe  # noqa: E402
from atst_model.train.trainer import Dist, Trainer, frozen_norm_stats  # noqa: E402

ROWS = ("adversarial", "cycle", "identity", *TERMS)


def term_losses(trainer: Trainer, batch: dict) -> dict[str, torch.Tensor]:
    """The weighted terms of the generator loss that depend on G1, as the trainer's step forms them."""
    c = trainer.config
    b = trainer._batch(batch)
    he, unpaired = b["he"], b["ihc_unpaired"]
    fake_ihc = trainer.g1(he)
    fake_he = trainer.g2(unpaired)
    with frozen_norm_stats(trainer.g1, trainer.g2):
        rec_he, rec_ihc = trainer.g2(fake_ihc), trainer.g1(fake_he)
        idt = (trainer.g1(b["ihc"]) - b["ihc"]).abs().mean()
    aux = trainer.aux(fake_ihc, b["ihc"], b["mask"], trainer.dab_target(b))
    out = {"adversarial": lsgan(trainer.d_ihc(fake_ihc), True),
           "cycle": c.lambda_cycle * (cycle_loss(rec_he, he) + cycle_loss(rec_ihc, unpaired)),
           "identity": c.lambda_identity * idt}
    out.update({k: w * aux[k] for k, w in zip(TERMS, trainer.aux.config.weights)})
    return out


def grad_norms(trainer: Trainer, batches: list[dict]) -> dict[str, float]:
    """Mean over ``batches`` of ||d term / d G1's parameters|| per row (0 for a term of weight 0)."""
    params = [p for p in trainer.g1.parameters() if p.requires_grad]
    sums = dict.fromkeys(ROWS, 0.0)
    for batch in batches:
        losses = term_losses(trainer, batch)
        for k in ROWS:
            if not losses[k].requires_grad:
                continue
            grads = torch.autograd.grad(losses[k], params, retain_graph=True, allow_unused=True)
            sums[k] += float(torch.stack([g.norm() for g in grads if g is not None]).norm())
    return {k: v / len(batches) for k, v in sums.items()}


def table(name: str, results: dict[str, dict[str, float]]) -> str:
    cols = list(results)
    lines = [f"| {name}: weighted term | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for k in ROWS:
        lines.append(f"| {k} | " + " | ".join(f"{results[c][k]:.3g}" for c in cols) + " |")
    for c in cols:
        live = [v for v in results[c].values() if v > 0]
        results[c]["max_over_min"] = max(live) / min(live)
    lines.append("| largest / smallest (non-zero) | " + " | ".join(f"{results[c]['max_over_min']:.1f}" for c in cols)
                 + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="training steps between the two measurements")
    parser.add_argument("--batches", type=int, default=4, help="batches averaged per measurement")
    parser.add_argument("--forms", action="store_true", help="also L4 in OD and L5 absolute at the paper's weights")
    parser.add_argument("--temperatures", default="", help="also measure the paper recipe at these mask-threshold "
                        "temperatures (comma-separated, gray units)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "aux_balance.json")
    args = parser.parse_args()
    budget = A.CPU_BUDGET
    recipes = {"paper": {}, "public-code": {}}
    if args.forms:
        recipes["paper, L4 in OD"] = {"aux_dab_units": "od"}
        recipes["paper, L5 absolute"] = {"aux_count_form": "absolute"}
    report, start = {"budget": str(budget), "steps": args.steps, "recipes": {}}, time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = A.write_task(Path(tmp) / "data", budget)
        shards = A.build_shards(root, Path(tmp) / "shards", budget)
        for name, extra in recipes.items():
            g1, g2, d = budget.networks
            base = TrainerConfig(shards=str(shards), out=str(Path(tmp) / name), g1=g1, g2=g2, d=d,
                                 g1_mode=budget.g1_mode, crop=budget.crop, batch=budget.batch, lr=budget.lr,
                                 precision=budget.precision, num_workers=1, pool_size=10, seed=0,
                                 checkpoint_every=10_000, sample_every=10_000, log_every=10)
            config = replace(with_recipe(base, name.split(",")[0]), max_steps=args.steps, **extra)
            trainer = Trainer(config, device="cpu", resume=None, dist_info=Dist())
            batches = [b for _, b in zip(range(args.batches), trainer.loader())]
            taus = [float(t) for t in args.temperatures.split(",") if t] if name == "paper" else []

            def measure(when: str) -> None:
                results[when] = grad_norms(trainer, batches)
                for tau in taus:
                    trainer.aux.config = replace(trainer.aux.config, temperature=tau)
                    results[f"{when}, temperature {tau}"] = grad_norms(trainer, batches)
                trainer.aux.config = replace(trainer.aux.config, temperature=config.aux_temperature)

            results: dict[str, dict[str, float]] = {}
            measure("init")
            trainer.run()
            measure(f"after {args.steps} steps")
            text = table(name, results)
            print(text + "\n", flush=True)
            report["recipes"][name] = {"config": {k: getattr(config, k) for k in (
                "aux_weights", "lambda_cycle", "lambda_identity", "aux_dab_units", "aux_count_form",
                "aux_temperature")}, "grad_norms": results, "table": text}
    report["minutes"] = (time.perf_counter() - start) / 60
    args.out.write_text(json.dumps(report, indent=1, default=list) + "\n")
    print(f"{report['minutes']:.1f} min; {args.out}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
