"""hubconf.py: torch.hub.load(repo, "alexnet", source="local") builds the model, with or without a checkpoint."""
import dataclasses
import os

import pytest
import torch

from alexnet import AlexNet
from alexnet.checkpoint import save_checkpoint
from alexnet.config import Config
from alexnet.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_hub_builds_the_paper_model_and_passes_kwargs():
    model = torch.hub.load(REPO, "alexnet", source="local", num_classes=10, dropout=0.0)
    assert isinstance(model, AlexNet)
    assert model.classifier.fc8.out_features == 10
    assert model.conv1.weight.shape == (96, 3, 11, 11)
    owt = torch.hub.load(REPO, "alexnet", source="local", variant="owt", num_classes=7, in_channels=1)
    assert owt.conv1.weight.shape == (64, 1, 11, 11)
    assert owt(torch.zeros(2, 1, 64, 64)).shape == (2, 7)


def test_hub_loads_checkpoint_weights(tmp_path):
    cfg = Config()
    cfg.model = dataclasses.replace(cfg.model, num_classes=4, variant="owt")
    torch.manual_seed(0)
    trained = AlexNet(num_classes=4, variant="owt").eval()
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"model": trained.state_dict(), "config": dataclasses.asdict(cfg),
                     "class_names": ["a", "b", "c", "d"]}, path)
    model = torch.hub.load(REPO, "alexnet", source="local", checkpoint=str(path)).eval()
    assert model.class_names == ["a", "b", "c", "d"]
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), trained(x))
    # a kwarg that changes a layer's shape against the checkpoint: one-line error naming the layer
    with pytest.raises(UserError, match="fc8"):
        torch.hub.load(REPO, "alexnet", source="local", checkpoint=str(path), num_classes=5)
