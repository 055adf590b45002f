"""Checkpoints: atomic writes, weights_only loading, one-line errors for bad files and shape mismatches."""
import os
import random

import numpy as np
import pytest
import torch

from alexnet.checkpoint import (load_checkpoint, load_state_checked, model_from_checkpoint, rng_state,
                                save_checkpoint, set_rng_state)
from alexnet.config import ModelConfig, to_dict, Config
from alexnet.errors import UserError
from alexnet.model import build_model


def _ckpt(**model_kw):
    cfg = Config(model=ModelConfig(**model_kw))
    return {"model": build_model(cfg.model).state_dict(), "config": to_dict(cfg), "epoch": 1}


def test_save_is_atomic_and_loads_weights_only(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(3)}, "epoch": 1}, path)
    assert torch.load(path, weights_only=True)["epoch"] == 1
    before = path.read_bytes()

    def broken_save(obj, f):                     # dies half-way through writing the new file
        f.write(before[:100])
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"model": {"w": torch.zeros(3)}, "epoch": 2}, path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["last.pt"]   # old file, no temp left


def test_bad_files_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(UserError, match="empty"):
        load_checkpoint(tmp_path / "empty.pt")
    save_checkpoint({"model": {"w": torch.randn(1000)}}, tmp_path / "good.pt")
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="corrupt or truncated") as e:
        load_checkpoint(tmp_path / "trunc.pt")
    assert "\n" not in str(e.value)
    torch.save({"model": {}, "bad": object()}, tmp_path / "pickle.pt")   # needs unsafe pickle: refused
    with pytest.raises(UserError, match="cannot be loaded"):
        load_checkpoint(tmp_path / "pickle.pt")


def test_mismatch_names_layer_and_both_shapes(tmp_path):
    ckpt = _ckpt(num_classes=10)
    save_checkpoint(ckpt, tmp_path / "c.pt")
    model = model_from_checkpoint(load_checkpoint(tmp_path / "c.pt"))
    assert model.classifier.fc8.out_features == 10
    assert torch.equal(model.state_dict()["features.conv1.weight"], ckpt["model"]["features.conv1.weight"])
    with pytest.raises(UserError) as e:
        load_state_checked(build_model(ModelConfig(num_classes=5)), ckpt["model"])
    msg = str(e.value)
    assert "classifier.fc8.weight" in msg and "(10, 4096)" in msg and "(5, 4096)" in msg
    with pytest.raises(UserError) as e:                              # paper layout into torchvision's
        load_state_checked(build_model(ModelConfig(variant="owt", num_classes=10)), ckpt["model"])
    assert "features.conv1.weight" in str(e.value) and "(96, 3, 11, 11)" in str(e.value)


def test_rng_state_roundtrip_through_weights_only(tmp_path):
    save_checkpoint({"model": {}, "rng": rng_state()}, tmp_path / "r.pt")
    first = (torch.rand(3), np.random.rand(2), random.random())
    set_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    again = (torch.rand(3), np.random.rand(2), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]
