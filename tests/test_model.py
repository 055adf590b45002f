"""AlexNet: the paper's shapes and counts (Sec. 3), groups, init (Sec. 5), owt == torchvision, switches."""
import pytest
import torch
import torchvision

from alexnet import AlexNet, LocalResponseNorm, build_model, from_torchvision
from alexnet.config import ModelConfig, load_config
from alexnet.errors import UserError
from alexnet.model import count_parameters

PAPER_SHAPES_224 = {   # the table of PAPER.md, layer -> (C, H, W) for one 224x224 image
    "conv1": (96, 55, 55), "relu1": (96, 55, 55), "lrn1": (96, 55, 55), "pool1": (96, 27, 27),
    "conv2": (256, 27, 27), "relu2": (256, 27, 27), "lrn2": (256, 27, 27), "pool2": (256, 13, 13),
    "conv3": (384, 13, 13), "relu3": (384, 13, 13), "conv4": (384, 13, 13), "relu4": (384, 13, 13),
    "conv5": (256, 13, 13), "relu5": (256, 13, 13), "pool5": (256, 6, 6), "avgpool": (256, 6, 6),
    "fc6": (4096,), "relu6": (4096,), "drop6": (4096,), "fc7": (4096,), "relu7": (4096,),
    "drop7": (4096,), "fc8": (1000,),
}


def output_shapes(model, x):
    """{layer name: output shape without the batch dim} from one forward pass."""
    shapes, hooks = {}, []
    layers = list(model.features.named_children()) + [("avgpool", model.avgpool)]
    layers += list(model.classifier.named_children())
    for name, m in layers:
        hooks.append(m.register_forward_hook(
            lambda mod, inp, out, name=name: shapes.__setitem__(name, tuple(out.shape[1:]))))
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return shapes


@pytest.fixture(scope="module")
def paper():
    torch.manual_seed(0)
    return AlexNet()


SWITCHES = {"paper": {}, "no_lrn": dict(lrn=False), "no_overlap": dict(overlap_pool=False),
            "no_groups": dict(groups=False), "no_dropout": dict(dropout=0.0), "owt": dict(variant="owt")}


@pytest.fixture(scope="module")
def small():
    """One 10-class model per ablation switch (Kaiming init), built once: construction dominates the time."""
    torch.manual_seed(3)
    return {name: AlexNet(num_classes=10, init="kaiming", **kw) for name, kw in SWITCHES.items()}


def test_every_layer_shape_at_224(paper):
    shapes = output_shapes(paper, torch.randn(1, 3, 224, 224))
    assert shapes == PAPER_SHAPES_224           # also checks the order-independent set of names


def test_parameter_and_neuron_counts(paper):
    assert count_parameters(paper) == 60_965_224
    shapes = output_shapes(paper, torch.randn(1, 3, 224, 224))    # measured, not the table
    neurons = sum(torch.Size(s).numel() for name, s in shapes.items() if name.startswith(("conv", "fc")))
    assert neurons == 659_272
    # owt is torchvision's layout: the same count as torchvision's model.
    assert count_parameters(AlexNet(variant="owt")) == 61_100_840
    assert count_parameters(AlexNet(variant="owt")) == count_parameters(torchvision.models.alexnet())


def test_groups_where_the_paper_has_them(paper):
    f = paper.features
    assert [f.conv1.groups, f.conv2.groups, f.conv3.groups, f.conv4.groups, f.conv5.groups] == [1, 2, 1, 2, 2]
    assert tuple(f.conv2.weight.shape) == (256, 48, 5, 5)       # 5x5x48: each half sees its GPU's 48 maps
    assert tuple(f.conv3.weight.shape) == (384, 256, 3, 3)      # connected across both GPUs
    assert tuple(f.conv4.weight.shape) == (384, 192, 3, 3)
    assert tuple(f.conv5.weight.shape) == (256, 192, 3, 3)
    assert paper.conv1 is f.conv1 and tuple(paper.conv1.weight.shape) == (96, 3, 11, 11)
    lrns = [n for n, m in f.named_children() if isinstance(m, LocalResponseNorm)]
    assert lrns == ["lrn1", "lrn2"]
    assert (f.lrn1.size, f.lrn1.alpha, f.lrn1.beta, f.lrn1.k) == (5, 1e-4, 0.75, 2.0)
    assert all(p.kernel_size == 3 and p.stride == 2 for p in (f.pool1, f.pool2, f.pool5))
    no_groups = AlexNet(groups=False)
    assert all(m.groups == 1 for m in no_groups.modules() if isinstance(m, torch.nn.Conv2d))
    # Each ungrouped kernel of conv2/4/5 sees twice the maps: 48*25*256 + 192*9*(384+256) weights more.
    assert count_parameters(no_groups) - 60_965_224 == 48 * 25 * 256 + 192 * 9 * (384 + 256)


def test_paper_init_std_and_biases(paper):
    layers = {**dict(paper.features.named_children()), **dict(paper.classifier.named_children())}
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
        w, b = layers[name].weight, layers[name].bias
        assert abs(w.std().item() - 0.01) < 5e-4, name          # N(0, 0.01), Sec. 5
        assert abs(w.mean().item()) < 5e-4, name
        expected = 1.0 if name in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
        assert torch.equal(b, torch.full_like(b, expected)), name


def test_paper_init_bias_changes_only_the_bias_one_layers():
    torch.manual_seed(0)
    a = AlexNet(num_classes=10)
    torch.manual_seed(0)
    b = build_model({"num_classes": 10, "init": "paper", "init_bias": 0.1})
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        layer = name.split(".")[1]
        if name.endswith(".bias") and layer in ("conv2", "conv4", "conv5", "fc6", "fc7"):
            assert torch.equal(pa, torch.ones_like(pa)) and torch.equal(pb, torch.full_like(pb, 0.1)), name
        else:                                                    # the same N(0, 0.01) draws, zero biases
            assert torch.equal(pa, pb), name
    with pytest.raises(UserError, match="model.init_bias.*init=paper only"):
        load_config(None, ["model.init=caffe", "model.init_bias=0.1"])


def test_other_inits():
    torch.manual_seed(0)
    k = AlexNet(num_classes=10, init="kaiming")
    fan_in = 3 * 11 * 11
    assert abs(k.conv1.weight.std().item() - (2 / fan_in) ** 0.5) < 0.01 * (2 / fan_in) ** 0.5 * 5
    assert all(torch.count_nonzero(m.bias) == 0 for m in k.modules() if hasattr(m, "bias") and m.bias is not None)
    c = AlexNet(num_classes=10, init="caffe")
    assert torch.equal(c.features.conv2.bias, torch.full((256,), 0.1))
    assert torch.equal(c.features.conv3.bias, torch.zeros(384))
    assert abs(c.classifier.fc6.weight.std().item() - 0.005) < 2e-4
    with pytest.raises(UserError, match="init"):
        AlexNet(init="xavier")


def test_owt_equals_torchvision_on_random_weights(paper):
    torch.manual_seed(1)
    tv = torchvision.models.alexnet(num_classes=10)
    with torch.no_grad():                      # random, non-default weights everywhere
        for p in tv.parameters():
            p.normal_(0, 0.02)
    ours = from_torchvision(tv.state_dict())
    assert ours.variant == "owt" and ours.classifier.fc8.out_features == 10
    tv.eval(), ours.eval()
    for size in (224, 96):
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            assert torch.allclose(ours(x), tv(x), rtol=1e-5, atol=1e-6)
    # A DataParallel prefix is accepted; a wrong state dict names the key.
    prefixed = {f"module.{k}": v for k, v in tv.state_dict().items()}
    assert torch.equal(from_torchvision(prefixed).classifier.fc8.bias, tv.classifier[6].bias)
    with pytest.raises(UserError, match="features.conv1"):
        from_torchvision(paper.state_dict())
    bad = dict(tv.state_dict(), **{"features.3.weight": torch.zeros(192, 32, 5, 5)})
    with pytest.raises(UserError, match=r"\(192, 32, 5, 5\)"):
        from_torchvision(bad)


@pytest.mark.parametrize("in_channels,num_classes", [(1, 10), (3, 1000)])
def test_forward_backward_channels_and_classes(paper, in_channels, num_classes):
    torch.manual_seed(2)
    model = paper if num_classes == 1000 else AlexNet(num_classes=num_classes, in_channels=in_channels)
    model.train().zero_grad()
    x = torch.randn(2, in_channels, 64, 64)
    logits = model(x)
    assert logits.shape == (2, num_classes)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, num_classes - 1])).backward()
    assert torch.isfinite(logits).all()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.features.conv1.weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", list(SWITCHES))
def test_ablation_switches_small_images(small, name):
    model, switches = small[name].train(), SWITCHES[name]
    for size in (64, 96):
        y = model(torch.randn(2, 3, size, size))
        y.sum().backward()
        assert y.shape == (2, 10) and torch.isfinite(y).all()
    f = model.features
    assert hasattr(f, "lrn1") == (name not in ("no_lrn", "owt"))
    assert f.pool1.kernel_size == (2 if name == "no_overlap" else 3)
    assert model.classifier.drop6.p == (0.0 if name == "no_dropout" else 0.5)
    assert (f.conv2.groups == 2) == (name not in ("no_groups", "owt"))
    model.zero_grad(set_to_none=True)


def test_minimum_image_size(small):
    paper, no_overlap = small["paper"].eval(), small["no_overlap"].eval()
    assert paper.min_size == 63 and no_overlap.min_size == 35
    with torch.no_grad():
        assert paper(torch.randn(1, 3, 63, 63)).shape == (1, 10)
        assert no_overlap(torch.randn(1, 3, 35, 35)).shape == (1, 10)
        with pytest.raises(UserError, match="at least 63"):
            paper(torch.randn(1, 3, 62, 80))
        with pytest.raises(UserError, match="at least 35"):
            no_overlap(torch.randn(1, 3, 34, 34))
        with pytest.raises(UserError, match="in_channels"):
            paper(torch.randn(1, 1, 64, 64))
        with pytest.raises(ValueError, match="at least 63"):      # InputShapeError: also a ValueError
            paper(torch.randn(1, 3, 62, 62))


def test_forward_features_is_fc7_after_relu(small):
    model = small["paper"].eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (3, 4096) and (feats >= 0).all() and (feats > 0).any()
        assert torch.allclose(model.classifier.fc8(feats), model(x), atol=1e-6)


def test_channels_last_gives_the_same_logits(small):
    model = small["no_dropout"].eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
        model.to(memory_format=torch.contiguous_format)
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_build_model_from_config_and_dict(paper):
    m = build_model(ModelConfig(num_classes=7, in_channels=1, lrn=False))
    assert m.classifier.fc8.out_features == 7 and m.conv1.in_channels == 1 and not hasattr(m.features, "lrn1")
    d = build_model({"variant": "owt", "num_classes": 5})
    assert d.variant == "owt" and d.classifier.fc8.out_features == 5
    assert list(paper.state_dict())[:2] == ["features.conv1.weight", "features.conv1.bias"]
    with pytest.raises(UserError, match="colour"):
        build_model({"colour": 1})
    for bad in (dict(num_classes=0), dict(in_channels=-1), dict(num_classes=2.5), dict(variant="vgg"),
                dict(dropout=1.0)):
        with pytest.raises(UserError):
            build_model(bad)
