"""leukdx.config: validation, suggestions, overrides, inheritance, round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from leukdx.config import (
    Config,
    ConfigError,
    config_from_dict,
    config_to_dict,
    load_config,
    replace,
    save_config,
)

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert cfg.name == path.stem


def test_leuknet_preset_matches_the_paper():
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "leuknet.yaml")
    assert (cfg.model.backbone, cfg.model.strategy) == ("vgg16", "mdft")
    assert cfg.model.head.units == [1024, 256] and cfg.model.head.dropout == [0.5, 0.6]
    assert (cfg.train.optimizer, cfg.train.learning_rate, cfg.train.momentum) == ("sgd", 1e-3, 0.8)
    assert (cfg.train.batch_size, cfg.train.epochs, cfg.data.image_size) == (32, 50, 224)
    assert cfg.augment.preset == "leuknet"


def test_unknown_key_is_named_with_nearest_suggestion():
    with pytest.raises(ConfigError, match=r"'train\.epocs'.*Did you mean 'epochs'"):
        config_from_dict({"train": {"epocs": 3}})
    with pytest.raises(ConfigError, match=r"'modle'.*Did you mean 'model'"):
        config_from_dict({"modle": {}})


def test_override_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"data\.imagesize.*Did you mean 'image_size'"):
        config_from_dict({}, ["data.imagesize=64"])


def test_overrides_parse_yaml_values():
    cfg = config_from_dict({}, ["data.image_size=64", "model.head.units=[8, 4]",
                                "train.early_stopping_patience=null", "train.tensorboard=false"])
    assert cfg.data.image_size == 64
    assert cfg.model.head.units == [8, 4]
    assert cfg.train.early_stopping_patience is None
    assert cfg.train.tensorboard is False


def test_bad_types_and_choices_are_errors():
    with pytest.raises(ConfigError, match="data.image_size.*integer"):
        config_from_dict({"data": {"image_size": "big"}})
    with pytest.raises(ConfigError, match="model.strategy.*sft, dft, msft, mdft"):
        config_from_dict({"model": {"strategy": "finetune"}})
    with pytest.raises(ConfigError, match="data.image_size.*at least 32"):
        config_from_dict({"data": {"image_size": 8}})
    with pytest.raises(ConfigError, match="evaluate.grid.*modle"):
        config_from_dict({"evaluate": {"grid": {"modle.backbone": ["vgg16"]}}})


def test_extends_merges_sections(tmp_path):
    (tmp_path / "base.yaml").write_text("name: base\ntrain: {epochs: 7, batch_size: 4}\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nname: child\ntrain: {epochs: 2}\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert (cfg.name, cfg.train.epochs, cfg.train.batch_size) == ("child", 2, 4)


def test_extends_cycle_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_saved_config_round_trips(tmp_path):
    cfg = config_from_dict({"name": "x", "model": {"backbone": "resnet50"}}, ["train.epochs=3"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(path)
    assert again == cfg
    assert yaml.safe_load(path.read_text())["train"]["epochs"] == 3


def test_replace_applies_grid_point_without_mutating():
    cfg = config_from_dict({})
    other = replace(cfg, {"model.backbone": "xception", "model.head.units": [128]})
    assert other.model.backbone == "xception" and other.model.head.units == [128]
    assert cfg.model.backbone == "vgg16"
    assert config_to_dict(cfg)["model"]["head"]["units"] is None
