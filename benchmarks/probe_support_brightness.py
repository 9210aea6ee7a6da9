"""One-off probe (docs/benchmarks.md, "Exposure"): ours with brightness-shifted copies of each shot in the
dictionary. Usage: python -m benchmarks.probe_support_brightness -0.06,0.06 loo --data ... (any fsad command
after the offsets)."""
import sys
import torch
from model.methods import ours
from orchestrator.cli import main

OFFSETS = [float(v) for v in sys.argv[1].split(",")]
plain_adapt = ours.OursScorer.adapt


def adapt(self, support):
    copies = [support] + [(support + o).clamp(0, 1) for o in OFFSETS]  # (K·(1+n), C, H, W)
    return plain_adapt(self, torch.cat(copies))


ours.OursScorer.adapt = adapt
sys.exit(main(sys.argv[2:]))
