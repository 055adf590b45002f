"""export.py: the torch.export program computes what the eager model computes (LRN included)."""
import dataclasses
import json

import pytest
import torch

import export
from alexnet import AlexNet
from alexnet.checkpoint import save_checkpoint
from alexnet.config import Config


@pytest.mark.parametrize("variant", ["paper", "owt"])
def test_exported_program_equals_eager(variant):
    torch.manual_seed(0)
    model = AlexNet(num_classes=10, variant=variant, init="kaiming").eval()
    program = export.export_model(model, torch.rand(2, 3, 64, 64))
    x = torch.rand(5, 3, 64, 64)  # another batch size than the example: the batch dimension is dynamic
    with torch.no_grad():
        eager, exported = model(x), program.module()(x)
    assert exported.shape == (5, 10)
    assert eager.abs().max() > 1e-3  # not a trivially zero output
    torch.testing.assert_close(exported, eager, atol=1e-5, rtol=1e-5)


def test_export_cli_writes_a_loadable_program_with_metadata(tmp_path, capsys):
    cfg = Config()
    cfg.model = dataclasses.replace(cfg.model, num_classes=3, variant="owt")
    cfg.data = dataclasses.replace(cfg.data, resize=72, crop=64, normalize="channel")
    torch.manual_seed(0)
    model = AlexNet(num_classes=3, variant="owt").eval()
    stats = {"mean": torch.tensor([0.4, 0.5, 0.6]), "std": torch.tensor([0.2, 0.2, 0.3])}
    ckpt = tmp_path / "best.pt"
    save_checkpoint({"model": model.state_dict(), "config": dataclasses.asdict(cfg), "class_names": ["x", "y", "z"],
                     "stats": stats}, ckpt)
    out = tmp_path / "model.pt2"
    assert export.main(["--checkpoint", str(ckpt), "--out", str(out)]) == 0
    assert "max |exported - eager|" in capsys.readouterr().out
    extra = {"meta.json": ""}
    program = torch.export.load(str(out), extra_files=extra)
    meta = json.loads(extra["meta.json"])
    assert meta["class_names"] == ["x", "y", "z"] and meta["crop"] == 64 and meta["normalize"] == "channel"
    x = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), atol=1e-5, rtol=1e-5)
