"""hubconf.py: torch.hub.load(repo, "alexnet", source="local") builds the model, with or without a checkpoint."""
import os

import pytest
import torch

from alexnet import AlexNet
from alexnet.checkpoint import load_checkpoint, model_from_checkpoint
from alexnet.errors import UserError
from dataloader.demo import CLASSES
from test_evaluate import trained_run  # noqa: F401  (the session's tiny train.py run)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_hub_builds_the_paper_model_and_passes_kwargs():
    model = torch.hub.load(REPO, "alexnet", source="local", num_classes=10, dropout=0.0)
    assert isinstance(model, AlexNet)
    assert model.classifier.fc8.out_features == 10
    assert model.conv1.weight.shape == (96, 3, 11, 11)
    owt = torch.hub.load(REPO, "alexnet", source="local", variant="owt", num_classes=7, in_channels=1)
    assert owt.conv1.weight.shape == (64, 1, 11, 11)
    assert owt(torch.zeros(2, 1, 64, 64)).shape == (2, 7)


def test_hub_loads_checkpoint_weights(trained_run):  # noqa: F811
    run, _ = trained_run
    path = str(run / "best.pt")
    model = torch.hub.load(REPO, "alexnet", source="local", checkpoint=path).eval()
    trained = model_from_checkpoint(load_checkpoint(path)).eval()
    assert model.class_names == sorted(CLASSES)  # sorted folder names
    data = load_checkpoint(path)["config"]["data"]
    assert {k: model.preprocessing[k] for k in ("resize", "crop", "normalize", "pixel_scale")} == \
           {k: data[k] for k in ("resize", "crop", "normalize", "pixel_scale")}
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), trained(x))
    # a kwarg that changes a layer's shape against the checkpoint: one-line error naming the layer
    with pytest.raises(UserError, match="fc8"):
        torch.hub.load(REPO, "alexnet", source="local", checkpoint=path, num_classes=5)
