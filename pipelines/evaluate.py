"""DVC stage `evaluate@<target>`: every method at every K on the splits' draws -> results/metrics/<target>.json,
ROC/PRO curves in results/plots/, details and overlays in results/eval/<target>/."""
from __future__ import annotations

import sys

from pipelines._entry import main


def run(args) -> None:
    from orchestrator.pipeline import load_params, stage_evaluate

    record = stage_evaluate(load_params(args.params), args.target, progress=args.progress)
    print(f"{args.target}: " + ", ".join(f"{m} {k} image AUROC {v.get('image_auroc', float('nan')):.3f}"
                                        for m, ks in record.items() if isinstance(ks, dict) and m != "config"
                                        for k, v in ks.items()))


if __name__ == "__main__":
    sys.exit(main(run, __doc__, target=True))
