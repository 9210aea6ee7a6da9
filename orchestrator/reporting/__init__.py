"""Reporting: docs/results.md, its figures, the anomaly-map gallery and the results browser."""
