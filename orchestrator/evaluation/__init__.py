"""Evaluation: the few-shot protocol, leave-one-out, calibrated verdicts, prediction and video."""
