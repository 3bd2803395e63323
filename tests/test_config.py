"""The settings of a run: one definition, its metadata, conversion and validation (issue 10)."""
import dataclasses
import os
import typing

import pytest

from klteach import config as cfg
from klteach.config import TrainConfig, setting_info, settings_of_kind


def test_every_setting_has_help_and_exactly_one_kind():
    names = cfg.setting_names()
    assert names == tuple(f.name for f in dataclasses.fields(TrainConfig))
    for name in names:
        info = setting_info(name)
        assert info.help and info.kind in cfg.KINDS, name
    by_kind = [settings_of_kind(kind) for kind in cfg.KINDS]
    assert sorted(sum(by_kind, ())) == sorted(names)
    assert "normaliser" in settings_of_kind("live") and "clusters" in settings_of_kind("restart")
    with pytest.raises(ValueError, match="unknown kind 'sometimes'"):
        settings_of_kind("sometimes")
    with pytest.raises(ValueError, match="unknown setting 'temperature'; the settings are dataset, "):
        setting_info("temperature")


def test_train_module_lists_are_derived_from_the_kinds():
    from klteach import train
    assert train.LIVE_SETTINGS == settings_of_kind("live")
    assert train.RESTART_SETTINGS == settings_of_kind("restart")
    assert train.TrainConfig is TrainConfig


def test_choices_come_from_the_literal_types_and_match_the_library():
    from klteach.models import ARCHITECTURES
    from klteach.normalisers import NORMALISERS, PRIOR_MODES
    assert setting_info("normaliser").choices == NORMALISERS == typing.get_args(cfg.NormaliserName)
    assert setting_info("prior").choices == PRIOR_MODES
    assert setting_info("arch").choices == ARCHITECTURES
    assert setting_info("precision").choices == ("auto", "float32", "bfloat16")
    assert setting_info("tau_teacher").choices is None


def test_ranges_and_slider_hints():
    tau = setting_info("tau_teacher")
    assert (tau.low, tau.low_open, tau.high, tau.log_scale) == (0, True, None, True)
    momentum = setting_info("momentum")
    assert (momentum.low, momentum.high, momentum.high_open) == (0, 1, True)
    assert setting_info("clusters").low == 2 and setting_info("clusters").symbol == "K"
    assert set(cfg.neutral_settings()) >= {"device", "data_dir", "eval_every", "out"}
    assert not setting_info("normaliser").neutral


@pytest.mark.parametrize("name, given, stored", [
    ("momentum", "0.5", 0.5), ("lr", 1, 1.0), ("clusters", "8", 8), ("clusters", 8.0, 8),
    ("epochs", None, None), ("epochs", "2.5", 2.5), ("compile", "true", True), ("out", None, None),
    ("learnable_prototypes", False, False), ("dataset", "digits", "digits"),
])
def test_values_are_converted_to_the_fields_type(name, given, stored):
    value = getattr(TrainConfig(**{name: given}), name)
    assert value == stored and type(value) is type(stored)


@pytest.mark.parametrize("name, value, message", [
    ("tau_teacher", 0, "tau_teacher must be a finite number > 0, got 0"),
    ("tau_student", float("nan"), "tau_student must be a finite number > 0, got nan"),
    ("momentum", 1, r"momentum must be a finite number in \[0, 1\), got 1"),
    ("clusters", 2.5, r"clusters \(K\) must be an integer in \[2, 100000\], got 2.5"),
    ("clusters", 10**12, r"clusters \(K\) must be an integer in \[2, 100000\], got 1000000000000"),
    ("clusters", True, r"clusters \(K\) must be an integer"),
    ("seed", 2**70, r"seed must be an integer in \[0, 4294967295\]"),
    ("eval_size", 0, "eval_size must be an integer >= 1, got 0"),
    ("eval_size", -1, "eval_size must be an integer >= 1, got -1"),
    ("warmup_steps", -5, "warmup_steps must be an integer >= 0, got -5"),
    ("lr", float("inf"), "lr must be a finite number > 0, got inf"),
    ("epochs", float("inf"), "epochs must be a finite number > 0, got inf"),
    ("normaliser", "zca", "unknown normaliser 'zca'; choose one of none, inverse-prior, centering"),
    ("arch", "bogus", "unknown arch 'bogus'; choose one of auto, mlp, cnn, resnet18"),
    ("compile", "yes", "compile must be true or false, got 'yes'"),
    ("dataset", 3, "dataset must be a string, got 3"),
])
def test_bad_values_are_refused_naming_the_value_and_what_is_allowed(name, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{name: value})


def test_every_assignment_is_checked_and_a_refused_one_changes_nothing():
    config = TrainConfig()
    with pytest.raises(ValueError, match="momentum"):
        config.momentum = 2.0
    assert config.momentum == 0.9
    with pytest.raises(ValueError, match="lam"):
        dataclasses.replace(config, lam=-1)
    config.momentum = "0.25"
    assert config.momentum == 0.25


def test_with_changes_names_unknown_settings_and_leaves_the_original_alone():
    config = TrainConfig()
    changed = cfg.with_changes(config, {"normaliser": "none", "clusters": "5"})
    assert (changed.normaliser, changed.clusters) == ("none", 5)
    assert (config.normaliser, config.clusters) == ("inverse-prior", 20)
    with pytest.raises(ValueError, match="unknown setting 'temperature'"):
        cfg.with_changes(config, {"temperature": 0.1})


def test_an_image_folder_is_stored_as_an_absolute_path_and_names_stay_names(tmp_path, monkeypatch):
    (tmp_path / "photos").mkdir()
    monkeypatch.chdir(tmp_path)
    assert TrainConfig(dataset="photos").dataset == str(tmp_path / "photos")
    assert TrainConfig(dataset="./elsewhere").dataset == os.path.join(str(tmp_path), "elsewhere")
    for name in ("toy", "digits", "cifar10", "cifar10-sample", "imagenet"):
        assert TrainConfig(dataset=name).dataset == name


def test_saved_settings_of_an_older_version_are_read():
    old = {**TrainConfig().to_dict(), "center_momentum": 0.5}
    del old["centre_momentum"]
    assert cfg.config_from_dict(old).centre_momentum == 0.5
    with pytest.raises(ValueError, match="unknown setting.*temperature"):
        cfg.config_from_dict({"temperature": 3})


def test_resume_may_change_only_how_far_and_where_a_run_goes(tmp_path):
    saved = TrainConfig().to_dict()
    assert cfg.resume_conflicts(saved, {"steps": 5000, "device": "cpu", "eval_every": 7, "out": "x",
                                        "data_dir": "/d", "epochs": 3.0, "compile": True}) == []
    # a typed value that equals the default still counts when the run saved another one
    saved_centering = {**saved, "normaliser": "centering"}
    assert cfg.resume_conflicts(saved_centering, {"normaliser": "inverse-prior"}) == ["normaliser"]
    assert cfg.resume_conflicts(saved, {"normaliser": "inverse-prior", "lr": "0.001"}) == []
    assert cfg.resume_conflicts(saved, {"clusters": 5, "lam": 0.5}) == ["clusters", "lam"]
    # an image folder may move (its fingerprint is compared when it is loaded); a name may not change
    folder = {**saved, "dataset": str(tmp_path / "a")}
    assert cfg.resume_conflicts(folder, {"dataset": str(tmp_path / "b")}) == []
    assert cfg.resume_conflicts(folder, {"dataset": "digits"}) == ["dataset"]


def test_describe_allowed_is_what_the_messages_say():
    assert cfg.describe_allowed("lam") == "a finite number >= 0"
    assert cfg.describe_allowed("batch_size") == "an integer >= 2"
    assert cfg.describe_allowed("prior") == "one of batch, running, full"
    assert cfg.describe_allowed("student_batchnorm") == "true or false"
