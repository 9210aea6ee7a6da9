"""DVC stage `evaluate@<target>`: every method at every K on the splits' draws -> results/metrics/<target>.json,
ROC/PRO curves in results/plots/, details and overlays in results/eval/<target>/."""
from __future__ import annotations

import sys

from pipelines._entry import main


def run(args) -> None:
    from orchestrator.stages.pipeline import load_params, stage_evaluate

    cfg = load_params(args.params)
    record = stage_evaluate(cfg, args.target, progress=args.progress)
    for method in cfg.pipeline.methods:
        for k, values in record[method].items():
            print(f"{args.target} {method} {k}: image AUROC {values.get('image_auroc', float('nan')):.3f}")


if __name__ == "__main__":
    sys.exit(main(run, __doc__, target=True))
