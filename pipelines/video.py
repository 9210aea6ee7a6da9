"""DVC stage `video`: the scene-adaptive protocol (paper Section 4.2) for every scene of
experiments.video_targets -> results/video/<scene>/{model/, metrics.json, scores.csv}."""
from __future__ import annotations

import sys

from pipelines._entry import main


def run(args) -> None:
    from orchestrator.stages.pipeline import load_params
    from orchestrator.evaluation.video import stage_video

    for scene, record in stage_video(load_params(args.params), progress=args.progress).items():
        for k, values in record["shots"].items():
            print(f"{scene} {k}: frame AUROC {values['frame_auroc']:.3f} ± {values['frame_auroc_std']:.3f} "
                  f"({record['test_frames']} frames)")


if __name__ == "__main__":
    sys.exit(main(run, __doc__))
