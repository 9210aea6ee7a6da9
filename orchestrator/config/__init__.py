"""One config schema (nested dataclasses) for the CLI, params.yaml, tuning and tracking.

    schema.py        the dataclasses; their field defaults are the only defaults (params.yaml spells them out)
    loading.py       YAML / dict / overrides -> Config (validated once), save_config, parse_overrides
    validation.py    every range check, run once at load
    search_space.py  TuneSpace, TUNE_KEYS, validate_tune
    profiles.py      PROFILES and ABLATIONS as typed {dotted key: value} changes
    specs.py         model-side specs (BackboneSpec, SparseSpec, AESpec) built by keyword from the schema
"""
from orchestrator.config.loading import (
    config_from_dict,
    load_config,
    parse_override,
    parse_overrides,
    save_config,
    with_values,
)
from orchestrator.config.profiles import ABLATIONS, PROFILES, describe
from orchestrator.config.schema import (
    BackboneConfig,
    Config,
    DataConfig,
    DistributedConfig,
    EvalConfig,
    ExperimentsConfig,
    InpaintConfig,
    LangevinConfig,
    MamlConfig,
    ModelConfig,
    PipelineConfig,
    TrackingConfig,
    TrainConfig,
    RUNTIME_KEYS,
    TuneConfig,
    flatten,
    key_in,
)
from orchestrator.config.search_space import TUNE_KEYS, FloatRange, IntChoices, TuneSpace, validate_tune
from orchestrator.config.specs import autoencoder_spec, backbone_spec, sparse_spec
from orchestrator.config.validation import validate

__all__ = [
    "ABLATIONS", "PROFILES", "RUNTIME_KEYS", "TUNE_KEYS", "BackboneConfig", "Config",
    "DataConfig", "DistributedConfig", "EvalConfig", "ExperimentsConfig", "FloatRange", "InpaintConfig",
    "IntChoices", "LangevinConfig", "MamlConfig", "ModelConfig", "PipelineConfig", "TrackingConfig",
    "TrainConfig", "TuneConfig", "TuneSpace", "autoencoder_spec", "backbone_spec", "config_from_dict", "describe", "flatten", "key_in",
    "load_config", "parse_override", "parse_overrides", "save_config", "sparse_spec", "validate",
    "validate_tune", "with_values",
]
