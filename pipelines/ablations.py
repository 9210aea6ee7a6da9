"""DVC stage `ablations` (experiments/dvc.yaml): `ours` retrained with one change per experiments.ablations on
each of experiments.ablation_targets, evaluated on the splits' draws -> results/ablations/."""
from __future__ import annotations

import sys

from pipelines._entry import main


def run(args) -> None:
    from orchestrator.stages.experiments import stage_ablations
    from orchestrator.stages.pipeline import load_params

    for row in stage_ablations(load_params(args.params), progress=args.progress):
        print(f"{row['target']} {row['ablation']}: image AUROC {row['image_auroc']['mean']:.3f}, "
              f"pixel AUROC {(row['pixel_auroc'] or {}).get('mean', float('nan')):.3f}")


if __name__ == "__main__":
    sys.exit(main(run, __doc__))
