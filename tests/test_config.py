"""orchestrator/config/: params.yaml = the embedded defaults, override parsing, flatten, save/load, errors."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import yaml

from orchestrator.config import Config, config_from_dict, flatten, load_config, parse_override, parse_overrides, save_config
from tests.conftest import REPO, expect_error

PARAMS = REPO / "params.yaml"


def leaves(obj, prefix: str = "") -> dict:
    """Every leaf of a (nested) config dataclass instance as {dotted key: value}."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.update(leaves(value, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = value
    return out


# --------------------------------------------------------------------------------------------------
# params.yaml and defaults
# --------------------------------------------------------------------------------------------------


def test_params_yaml_is_the_embedded_defaults():
    assert load_config(PARAMS) == Config()
    # key for key and value for value, not merely "loads to the same thing": no extra, no missing keys
    tree = yaml.safe_load(PARAMS.read_text())
    assert tree == Config().to_dict()
    assert flatten(tree) == Config().flatten()


def test_defaults_validate():
    assert Config().validate() == Config()
    assert load_config() == Config()
    assert config_from_dict({}) == Config()


# --------------------------------------------------------------------------------------------------
# Overrides
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,key,value", [
    ("train.episodes=7", "train.episodes", 7),
    ("train.lr=0.01", "train.lr", 0.01),
    ("train.lr=1e-3", "train.lr", 1e-3),
    ("train.lr=2", "train.lr", 2.0),
    ("train.episodes=5.0", "train.episodes", 5),
    ("model.normalize=false", "model.normalize", False),
    ("eval.augment_support=true", "eval.augment_support", True),
    ("train.detach_rec=True", "train.detach_rec", True),
    ("train.augment=image", "train.augment", "image"),
    ("train.crop=64", "train.crop", 64),
    ("model.shrink=hard", "model.shrink", "hard"),
    ("model.backbone.weights=", "model.backbone.weights", ""),
    ("data.exclude=[tire,kolektor]", "data.exclude", ["tire", "kolektor"]),
    ("data.exclude=tire,kolektor", "data.exclude", ["tire", "kolektor"]),
    ("data.categories=[a, b]", "data.categories", ["a", "b"]),
    ("data.exclude=tire", "data.exclude", ["tire"]),
    ("data.exclude=[]", "data.exclude", []),
])
def test_override_types(text, key, value):
    flat = load_config(None, parse_overrides([text])).flatten()
    assert flat[key] == value
    assert type(flat[key]) is type(value)
    # nothing else changed
    defaults = Config().flatten()
    assert {k: v for k, v in flat.items() if k != key} == {k: v for k, v in defaults.items() if k != key}


def test_override_float_values_are_floats():
    cfg = load_config(None, parse_overrides(["model.tau=3", "langevin.step_size=50"]))
    assert isinstance(cfg.model.tau, float) and cfg.model.tau == 3.0
    assert isinstance(cfg.langevin.step_size, float) and cfg.langevin.step_size == 50.0


def test_overrides_apply_in_order_on_top_of_a_file(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("train:\n  episodes: 11\n  shots: 3\n")
    cfg = load_config(path, parse_overrides(["train.episodes=12", "train.episodes=13"]))
    assert cfg.train.episodes == 13 and cfg.train.shots == 3
    assert cfg.train.queries == Config().train.queries  # missing keys keep their defaults


def test_parse_override():
    assert parse_override("a.b=1") == ("a.b", 1)
    assert parse_override(" a.b =x=y") == ("a.b", "x=y")
    expect_error(lambda: parse_override("train.episodes"), "train.episodes", "KEY=VALUE")
    expect_error(lambda: parse_override("=3"), "=3")


# --------------------------------------------------------------------------------------------------
# flatten
# --------------------------------------------------------------------------------------------------


def test_flatten_covers_every_leaf_with_dotted_keys():
    cfg = Config()
    flat = cfg.flatten()
    expected = leaves(cfg)
    assert flat == expected
    assert all("." in key for key in flat)
    assert "model.backbone.width" in flat and "train.episodes" in flat
    assert not any(isinstance(v, dict) for v in flat.values())


def test_flatten_nested_dict():
    assert flatten({"a": {"b": {"c": 1}, "d": [1, 2]}, "e": 3}) == {"a.b.c": 1, "a.d": [1, 2], "e": 3}


# --------------------------------------------------------------------------------------------------
# save / load
# --------------------------------------------------------------------------------------------------


def test_save_then_load_round_trips(tmp_path):
    cfg = load_config(None, parse_overrides([
        "train.episodes=17", "train.lr=0.0005", "model.normalize=false", "data.exclude=[tire,kolektor]",
        "model.backbone.width=8", "model.backbone.out_dim=8", "train.augment=image", "eval.augment_support=true",
        "model.shrink=hard", "model.lam_max=0.5", "model.lam_star=0.25",
    ]))
    path = tmp_path / "sub" / "config.yaml"
    save_config(cfg, path)
    assert load_config(path) == cfg
    assert config_from_dict(yaml.safe_load(path.read_text())) == cfg
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.yaml"]  # no temporary left behind


def test_save_defaults_reproduces_params_yaml_content(tmp_path):
    path = tmp_path / "config.yaml"
    save_config(Config(), path)
    assert yaml.safe_load(path.read_text()) == yaml.safe_load(PARAMS.read_text())


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("override,needle", [
    ("train.nope=1", "nope"),
    ("nope.x=1", "nope"),
    ("model.backbone.nope=1", "nope"),
    ("train.episodes=abc", "train.episodes"),
    ("train.episodes=2.5", "train.episodes"),
    ("train.episodes=true", "train.episodes"),
    ("train.lr=abc", "train.lr"),
    ("train.lr=[1,2]", "train.lr"),
    ("model.normalize=1", "model.normalize"),
    ("model.normalize=maybe", "model.normalize"),
    ("train.method=[a]", "train.method"),
    ("train=3", "train"),
    ("data.exclude={a: 1}", "data.exclude"),
])
def test_unknown_keys_and_wrong_types(override, needle):
    expect_error(lambda: load_config(None, parse_overrides([override])), needle)


@pytest.mark.parametrize("override,needle", [
    ("model.lam_max=0", "model.lam_max"),
    ("model.lam_max=-1", "model.lam_max"),
    ("model.lam_max=nan", "model.lam_max"),
    ("model.lam_max=.nan", "model.lam_max"),
    ("model.lam_star=2", "model.lam_star"),
    ("model.tau=0", "model.tau"),
    ("model.tau=inf", "model.tau"),
    ("model.tau=.inf", "model.tau"),
    ("model.tau=-.inf", "model.tau"),
    ("model.istc_steps=-1", "model.istc_steps"),
    ("model.receptive_field=2", "model.receptive_field"),
    ("model.shrink=soft_ish", "model.shrink"),
    ("model.map_smooth_sigma=-1", "model.map_smooth_sigma"),
    ("langevin.step_size=0", "langevin.step_size"),
    ("langevin.step_size=.nan", "langevin.step_size"),
    ("langevin.steps=-1", "langevin.steps"),
    ("langevin.noise_scale=-0.1", "langevin.noise_scale"),
    ("inpaint.min_frac=0", "inpaint.min_frac"),
    ("inpaint.max_frac=2", "max_frac"),
    ("train.shots=0", "train.shots"),
    ("train.queries=0", "train.queries"),
    ("train.episodes=0", "train.episodes"),
    ("train.checkpoint_every=0", "train.checkpoint_every"),
    ("train.lr=0", "train.lr"),
    ("train.lr=.inf", "train.lr"),
    ("train.eta_rec=-1", "train.eta_rec"),
    ("train.grad_clip=.nan", "train.grad_clip"),
    ("train.augment=sideways", "train.augment"),
    ("train.crop=8", "train.crop"),
    ("train.crop=-1", "train.crop"),
    ("train.method=knn", "train.method"),
    ("train.device=tpu", "train.device"),
    ("data.image_size=4", "data.image_size"),
    ("data.image_size=30", "data.image_size"),
    ("eval.shots=0", "eval.shots"),
    ("eval.draws=0", "eval.draws"),
    ("eval.overlays=-1", "eval.overlays"),
    ("maml.inner_lr=0", "maml.inner_lr"),
    ("maml.inner_steps=-1", "maml.inner_steps"),
])
def test_out_of_range_values(override, needle):
    expect_error(lambda: load_config(None, parse_overrides([override])), needle)


def test_nan_never_survives_validation():
    """Every float leaf rejects nan and ±inf, naming the key (a nan that slipped through would poison
    training silently)."""
    floats = [k for k, v in Config().flatten().items() if isinstance(v, float)]
    assert floats
    for key in floats:
        for bad in (".nan", ".inf", "-.inf"):
            expect_error(lambda: load_config(None, parse_overrides([f"{key}={bad}"])), key.rsplit(".", 1)[-1])


def test_missing_config_file(tmp_path):
    path = tmp_path / "nope.yaml"
    expect_error(lambda: load_config(path), str(path))


def test_invalid_yaml_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("train:\n  episodes: [1, 2\n  shots: : :\n")
    expect_error(lambda: load_config(path), str(path))


def test_yaml_file_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    expect_error(lambda: load_config(path), str(path))


def test_yaml_file_wrong_section_and_key(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("train: 5\n")
    expect_error(lambda: load_config(path), "train")
    path.write_text("train:\n  episodez: 5\n")
    expect_error(lambda: load_config(path), "episodez")
    path.write_text("model:\n  tau: .nan\n")
    expect_error(lambda: load_config(path), "model.tau")


def test_empty_yaml_file_is_the_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(path) == Config()


def test_values_are_finite_after_load():
    for key, value in load_config(PARAMS).flatten().items():
        if isinstance(value, float):
            assert math.isfinite(value), key


def test_params_yaml_path_is_at_repo_root():
    assert PARAMS.is_file()
    assert Path(PARAMS).parent == REPO


# --------------------------------------------------------------------------------------------------
# Files: atomic writes honour the umask (mkstemp alone made every output 0600)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(params=[0o022, 0o002, 0o077])
def umask(request):
    import os

    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def test_atomic_writes_get_the_mode_of_a_plain_write(umask, tmp_path):
    import pyarrow as pa

    from workers.data.manifest import write_parquet
    from workers.files import atomic_write_text

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic_write_text(tmp_path / "new" / "a.txt", "x")  # its folder is created too
    save_config(Config(), tmp_path / "config.yaml")
    write_parquet(pa.table({"a": [1]}), tmp_path / "t.parquet")
    expected = 0o666 & ~umask
    assert plain.stat().st_mode & 0o777 == expected
    for name in ("new/a.txt", "config.yaml", "t.parquet"):
        assert (tmp_path / name).stat().st_mode & 0o777 == expected, name
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o777 & ~umask
    # rewriting keeps the umask's mode, not the old file's 0600
    (tmp_path / "config.yaml").chmod(0o600)
    save_config(Config(), tmp_path / "config.yaml")
    assert (tmp_path / "config.yaml").stat().st_mode & 0o777 == expected


def test_current_umask_reads_without_changing_it(umask):
    import os

    from workers.files import current_umask

    assert current_umask() == umask
    assert os.umask(umask) == umask  # unchanged


# ---------------------------------------------------------------------------------------------
# Typed values past the command line; specs checked once, at construction


def test_ablations_are_typed_values_that_render_as_before():
    from orchestrator.config import ABLATIONS, describe

    assert ABLATIONS["istc"] == {"model.solver": "istc", "model.lam_star": 0.1}
    # the words metrics.json, the logs and the report have always shown
    assert describe(ABLATIONS["istc"]) == ["model.solver=istc", "model.lam_star=0.1"]
    assert describe(ABLATIONS["noise_only"]) == ["inpaint.kinds=[noise]"]
    assert describe(ABLATIONS["noise_init"]) == ["inpaint.kinds=[noise]", "inpaint.min_frac=1.0", "inpaint.max_frac=1.0"]
    for name, values in ABLATIONS.items():  # each parses back to itself, so --set gives the same variant
        assert parse_overrides(describe(values)) == values, name


def test_noise_init_starts_every_chain_from_pure_noise():
    """Section 3.3's alternative to inpainting: the chain starts from uniform noise over the whole image. Under
    the default corruption kinds a whole-image cutpaste or blend would start it from a donor image instead."""
    import torch

    from model.ebm.inpaint import corrupt
    from orchestrator.stages.experiments import variant_config

    inpaint = variant_config(Config(), "noise_init", "screw").inpaint
    images, donors = torch.zeros(8, 3, 16, 16), torch.ones(5, 3, 16, 16)
    corrupted, mask = corrupt(images, tuple(inpaint.kinds), inpaint.min_frac, inpaint.max_frac,
                              generator=torch.Generator().manual_seed(0), donors=donors)
    assert mask.all()  # every pixel of every start is replaced
    assert (corrupted < 1).all() and (corrupted > 0).float().mean() > 0.99  # U[0, 1) noise, no donor's ones
    assert corrupted.std() > 0.2


def test_overrides_in_code_are_a_mapping_not_words():
    assert load_config(None, {"train.episodes": 7, "model.shrink": "sigshrink"}).train.episodes == 7
    with pytest.raises(TypeError, match="parse_overrides"):
        load_config(None, ["train.episodes=7"])


def test_parse_overrides_keeps_the_last_word_for_a_key():
    assert parse_overrides(["a.b=1", "c=2", "a.b=3"]) == {"c": 2, "a.b": 3}
    assert list(parse_overrides(["a.b=1", "c=2", "a.b=3"])) == ["c", "a.b"]


def test_sparse_spec_is_checked_when_built():
    from model.errors import InputError
    from orchestrator.config import sparse_spec

    model = dataclasses.replace(Config().model, lam_star=2.0)  # above lam_max
    with pytest.raises(InputError, match="lam_star"):
        sparse_spec(model)


@pytest.mark.parametrize("value", ["1", "-3", "true"])
def test_max_test_images_refuses_what_cannot_hold_both_classes(value):
    expect_error(lambda: load_config(None, parse_overrides([f"pipeline.max_test_images={value}"])),
                 "pipeline.max_test_images")


def test_max_test_images_all_or_a_subset():
    assert load_config(None, parse_overrides(["pipeline.max_test_images=0"])).pipeline.max_test_images == 0
    assert Config().pipeline.max_test_images == 300
