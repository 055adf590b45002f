"""Config: YAML sections, typed overrides, one-line errors naming the key, the command line of train.py."""
import glob
import os

import pytest
import yaml

from alexnet.config import Config, SECTIONS, config_from_dict, load_config, to_dict
from alexnet.errors import UserError

import train

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")


def test_defaults_are_the_paper_recipe():
    c = load_config()
    assert (c.optim.batch_size, c.optim.lr, c.optim.momentum, c.optim.weight_decay) == (128, 0.01, 0.9, 5e-4)
    assert (c.schedule.name, c.schedule.factor, c.schedule.max_reductions, c.train.epochs) == ("plateau", 0.1, 3, 90)


def test_yaml_then_overrides_typed(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 1e-3\n  batch_size: 64\nmodel:\n  lrn: false\n")
    c = load_config(str(path), ["optim.lr=0.02", "model.dropout=0", "train.epochs=3", "model.groups=no"])
    assert c.optim.lr == 0.02 and isinstance(c.optim.lr, float)
    assert c.optim.batch_size == 64 and c.model.lrn is False and c.model.groups is False
    assert c.model.dropout == 0.0 and c.train.epochs == 3
    assert load_config(str(path)).optim.lr == pytest.approx(1e-3)   # YAML's "1e-3" string parsed as float
    assert load_config(overrides={"optim.lr": 0.5}).optim.lr == 0.5


@pytest.mark.parametrize("overrides, words", [
    (["optim.lrr=0.1"], ["optim.lrr", "optim.lr"]),
    (["foo.bar=1"], ["'foo'", "model", "train"]),
    (["optim.lr=abc"], ["optim.lr", "float", "abc"]),
    (["train.epochs=2.5"], ["train.epochs", "int"]),
    (["model.lrn=maybe"], ["model.lrn", "bool"]),
    (["train.epochs=-1"], ["train.epochs", ">= 1"]),
    (["optim.batch_size=0"], ["optim.batch_size", ">= 1"]),
    (["model.variant=vgg"], ["model.variant", "paper", "owt"]),
    (["schedule.name=cosine"], ["schedule.name", "plateau", "step", "constant"]),
    (["train.amp=fp8"], ["train.amp", "bf16", "fp16"]),
    (["lr=0.1"], ["section.key=value"]),
])
def test_bad_values_name_the_key(overrides, words):
    with pytest.raises(UserError) as e:
        load_config(None, overrides)
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_yaml_wrong_type_and_unknown_section(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  batch_size: [1, 2]\n")
    with pytest.raises(UserError, match="optim.batch_size: expected int"):
        load_config(str(bad))
    bad.write_text("optimizer:\n  lr: 0.1\n")
    with pytest.raises(UserError, match="unknown config key 'optimizer'"):
        load_config(str(bad))
    with pytest.raises(UserError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))
    with pytest.raises(UserError, match="model.dropout: expected float"):
        config_from_dict({"model": {"dropout": True}})


def test_bundled_configs_load_and_hold_only_differences():
    files = sorted(glob.glob(os.path.join(CONFIGS, "*.yaml")))
    names = {os.path.basename(f) for f in files}
    assert {"alexnet_paper.yaml", "demo.yaml", "owt.yaml", "no_lrn.yaml", "no_overlap.yaml", "no_pca.yaml",
            "step_schedule.yaml"} <= names
    default = to_dict(Config())
    for f in files:
        assert isinstance(load_config(f), Config)
        with open(f) as fh:
            raw = yaml.safe_load(fh) or {}
        for section, values in raw.items():
            for key, value in values.items():
                assert value != default[section][key], f"{f}: {section}.{key} repeats the default"
    assert load_config(os.path.join(CONFIGS, "step_schedule.yaml")).schedule.name == "step"
    assert load_config(os.path.join(CONFIGS, "no_lrn.yaml")).model.lrn is False
    assert load_config(os.path.join(CONFIGS, "owt.yaml")).model.variant == "owt"


def test_command_line_flags_and_original_repo_command():
    c = train.parse_config(["--epochs", "90", "--in_channels", "3", "--num_classes", "1000", "--data", "/d",
                            "--batch-size", "256", "--lr", "0.02", "--out", "o", "--resume", "auto",
                            "--device", "cpu", "--seed", "7", "model.lrn=false"])
    assert (c.train.epochs, c.model.in_channels, c.model.num_classes, c.data.root) == (90, 3, 1000, "/d")
    assert (c.optim.batch_size, c.optim.lr, c.train.out, c.train.resume) == (256, 0.02, "o", "auto")
    assert (c.train.device, c.train.seed, c.model.lrn) == ("cpu", 7, False)
    demo = train.parse_config(["--config", os.path.join(CONFIGS, "demo.yaml"), "--epochs", "1"])
    assert demo.data.demo is True and demo.train.epochs == 1 and set(SECTIONS) == set(to_dict(demo))


def test_original_command_without_data_is_one_line_error(capsys):
    from alexnet.errors import run_main

    with pytest.raises(SystemExit) as e:
        run_main(train.main, ["--epochs", "90", "--in_channels", "3", "--num_classes", "1000", "--device", "cpu"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "--data" in err
