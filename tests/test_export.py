"""export.py: the torch.export program computes what the eager model computes (LRN included)."""
import json

import torch

import export
from alexnet import AlexNet
from alexnet.checkpoint import load_checkpoint, load_for_inference, model_from_checkpoint
from dataloader.demo import CLASSES
from test_evaluate import trained_run  # noqa: F401  (the session's tiny train.py run)


def test_exported_program_equals_eager():
    torch.manual_seed(0)
    model = AlexNet(num_classes=10, variant="paper", init="kaiming").eval()  # with the paper's LRN layers
    program = export.export_model(model, torch.rand(2, 3, 64, 64))
    x = torch.rand(5, 3, 64, 64)  # another batch size than the example: the batch dimension is dynamic
    with torch.no_grad():
        eager, exported = model(x), program.module()(x)
    assert exported.shape == (5, 10)
    assert eager.abs().max() > 1e-3  # not a trivially zero output
    torch.testing.assert_close(exported, eager, atol=1e-5, rtol=1e-5)


def test_export_cli_writes_a_loadable_program_with_metadata(trained_run, tmp_path, capsys):  # noqa: F811
    run, _ = trained_run
    out = tmp_path / "model.pt2"
    assert export.main(["--checkpoint", str(run / "best.pt"), "--out", str(out)]) == 0
    assert "max |exported - eager|" in capsys.readouterr().out
    extra = {"meta.json": ""}
    program = torch.export.load(str(out), extra_files=extra)
    meta = json.loads(extra["meta.json"])
    ckpt = load_checkpoint(run / "best.pt")
    assert meta["class_names"] == sorted(CLASSES) and meta["crop"] == 64
    assert meta["normalize"] == ckpt["config"]["data"]["normalize"]   # the preprocessing the run trained with
    assert meta["pixel_scale"] == ckpt["config"]["data"]["pixel_scale"] == 1.0
    assert meta == export.checkpoint_meta(load_for_inference(run / "best.pt"))
    model = model_from_checkpoint(ckpt).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), atol=1e-5, rtol=1e-5)
