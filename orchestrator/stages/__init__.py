"""The library code of the DVC stages that pipelines/*.py call: the pipeline folds, ingest, experiments."""
