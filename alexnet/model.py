"""AlexNet (Krizhevsky, Sutskever, Hinton 2012), Sec. 3 and Fig. 2 of the paper, in two layouts.

Layer names follow the paper (conv1..conv5, fc6..fc8) so state dicts, TensorBoard tags and info.py
tables read like the paper's table.
"""
from collections import OrderedDict

import torch
from torch import nn

from alexnet.errors import InputShapeError, UserError
from alexnet.lrn import LocalResponseNorm

VARIANTS = ("paper", "owt")
INITS = ("paper", "kaiming", "caffe", "default")

# conv name -> (out_channels, kernel, stride, padding, two-group in the paper)
_PAPER_CONVS = OrderedDict([
    ("conv1", (96, 11, 4, 2, False)),   # 11x11x3, stride 4; padding 2 so 224 -> 55 (see deviations)
    ("conv2", (256, 5, 1, 2, True)),    # 5x5x48: each half sees only its own GPU's 48 maps
    ("conv3", (384, 3, 1, 1, False)),   # 3x3x256: connected across both GPUs
    ("conv4", (384, 3, 1, 1, True)),    # 3x3x192
    ("conv5", (256, 3, 1, 1, True)),    # 3x3x192
])
# torchvision.models.alexnet ("one weird trick", Krizhevsky 2014): 64-192-384-256-256, no groups, no LRN.
_OWT_CONVS = OrderedDict([
    ("conv1", (64, 11, 4, 2, False)),
    ("conv2", (192, 5, 1, 2, False)),
    ("conv3", (384, 3, 1, 1, False)),
    ("conv4", (256, 3, 1, 1, False)),
    ("conv5", (256, 3, 1, 1, False)),
])
_POOL_AFTER = ("conv1", "conv2", "conv5")    # Sec. 3.4
_LRN_AFTER = ("conv1", "conv2")              # Sec. 3.3: after the ReLU of conv1 and conv2
# Paper init (Sec. 5): biases 1 here ("accelerates the early stages of learning by providing the
# ReLUs with positive inputs"), 0 in conv1, conv3 and fc8.
_BIAS_ONE = ("conv2", "conv4", "conv5", "fc6", "fc7")
# torchvision's AlexNet module indices -> our names (for from_torchvision).
_TORCHVISION_NAMES = {"features.0": "features.conv1", "features.3": "features.conv2",
                      "features.6": "features.conv3", "features.8": "features.conv4",
                      "features.10": "features.conv5", "classifier.1": "classifier.fc6",
                      "classifier.4": "classifier.fc7", "classifier.6": "classifier.fc8"}


class AlexNet(nn.Module):
    """AlexNet as in Sec. 3 / Fig. 2 of the paper (``variant="paper"``) or torchvision's ("owt").

    Args:
        num_classes: size of fc8 (1000 for ImageNet); any positive int.
        in_channels: image channels (3 RGB, 1 grayscale); any positive int.
        variant: "paper": 96-256-384-384-256 kernels, conv2/4/5 two-group (the two-GPU split of Sec.
            3.2), LRN after the ReLUs of conv1 and conv2, 60,965,224 parameters at 1000 classes.
            "owt": torchvision.models.alexnet ("one weird trick", 2014): 64-192-384-256-256, no groups,
            no LRN, dropout before fc6 and fc7; the ``lrn`` and ``groups`` switches do not apply to it.
        dropout: dropout probability at fc6 and fc7 (Sec. 4.2: 0.5); 0 turns it off.
        init: "paper": weights N(0, 0.01), biases 1 (``init_bias``) in conv2, conv4, conv5, fc6, fc7, 0
            elsewhere (Sec. 5). Several re-implementations found that this does not train as written: with std
            0.01 each layer shrinks the signal (0.01 * sqrt(fan_in) ~ 0.2 for conv1), so the logits
            start near zero and the loss stays flat for a long time.
            "kaiming": He et al. 2015 normal init (fan_in, ReLU gain) with zero biases, fc8 N(0, 0.01):
            keeps the activation variance constant through the ReLU layers, the modern default that
            trains from the first step without hand-tuned biases or learning rates.
            "caffe": Caffe's bvlc_alexnet reference: N(0, 0.01), fc6/fc7 N(0, 0.005), bias 0.1 where
            the paper has 1 (Caffe found bias 1 "gave flat loss").
            "default": PyTorch's layer defaults (as torchvision's AlexNet).
        init_bias: init "paper" only: the constant of the biases the paper sets to 1 (docs/recipe.md:
            1 keeps the network at chance; 0.1, Caffe's value, learns at the paper's pixel scale).
        lrn: local response normalization after conv1 and conv2 (Sec. 3.3) on/off (paper only).
        overlap_pool: True: 3x3 stride 2 max pooling (Sec. 3.4); False: non-overlapping 2x2 stride 2.
        groups: True: conv2/4/5 as two-group convolutions (paper only); False: fully connected maps
            (same kernel counts, so more parameters: each kernel sees all input maps).

    Shapes: x (N, in_channels, H, W), H and W >= ``min_size`` (63 with 3/2 pooling, 35 with 2/2)
    -> logits (N, num_classes). At 224: 96x55x55 -> 96x27x27 -> 256x27x27 -> 256x13x13 -> 384x13x13
    -> 384x13x13 -> 256x13x13 -> 256x6x6 -> 4096 -> 4096 -> num_classes.

    Deviations from the paper (all also true of torchvision's AlexNet):
      - conv1 has 2 pixels of zero padding, so a 224 crop gives 55x55 (the paper's table needs 227;
        PyTorch rounds sizes down, cuda-convnet rounded up).
      - An adaptive average pool to 6x6 before fc6: the identity at 224 (already 6x6), and it lets
        smaller images (tests, the demo at 64-128 px) use the same fc6.
      - Inverted dropout: outputs are scaled by 1/(1-p) during training instead of by (1-p) at test
        time (equivalent in expectation, Sec. 4.2).
      - The two-GPU split is a grouped convolution on one device (same function, one device).
      - No softmax layer: the model returns logits; the loss (cross-entropy) applies log-softmax.
    """

    def __init__(self, num_classes=1000, in_channels=3, variant="paper", dropout=0.5, init="paper",
                 lrn=True, overlap_pool=True, groups=True, init_bias=1.0):
        super().__init__()
        _check_positive_int("num_classes", num_classes)
        _check_positive_int("in_channels", in_channels)
        if variant not in VARIANTS:
            raise UserError(f"model variant {variant!r} is unknown; use one of {', '.join(VARIANTS)}")
        if init not in INITS:
            raise UserError(f"model init {init!r} is unknown; use one of {', '.join(INITS)}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise UserError(f"model dropout must be a number in [0, 1), got {dropout!r}")
        self.variant, self.init = variant, init
        paper = variant == "paper"
        convs = _PAPER_CONVS if paper else _OWT_CONVS
        pool_k = 3 if overlap_pool else 2        # Sec. 3.4: z=3, s=2 overlaps; z=s=2 does not
        # Smallest input whose last pool still sees a full window (conv1 11/4/pad 2; three pools).
        self.min_size = 63 if overlap_pool else 35

        # Layers are made on the meta device and initialised once below: PyTorch's own default init
        # would otherwise run first and be overwritten (half of the construction time, 60 M weights).
        meta = {"device": "meta"}
        layers, prev = [], in_channels
        for i, (name, (out, kernel, stride, pad, grouped)) in enumerate(convs.items(), start=1):
            g = 2 if (paper and groups and grouped) else 1
            layers.append((name, nn.Conv2d(prev, out, kernel, stride, pad, groups=g, **meta)))
            layers.append((f"relu{i}", nn.ReLU(inplace=True)))
            if paper and lrn and name in _LRN_AFTER:
                layers.append((f"lrn{i}", LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0)))
            if name in _POOL_AFTER:
                layers.append((f"pool{i}", nn.MaxPool2d(kernel_size=pool_k, stride=2)))
            prev = out
        self.features = nn.Sequential(OrderedDict(layers))
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))   # deviation: identity at 224 (see docstring)

        flat = prev * 6 * 6                             # (N, 256, 6, 6) -> (N, 9216)
        if paper:   # Caffe / paper order: fc, ReLU, dropout (Sec. 4.2: dropout in fc6 and fc7)
            head = [("fc6", nn.Linear(flat, 4096, **meta)), ("relu6", nn.ReLU(inplace=True)),
                    ("drop6", nn.Dropout(dropout)),
                    ("fc7", nn.Linear(4096, 4096, **meta)), ("relu7", nn.ReLU(inplace=True)),
                    ("drop7", nn.Dropout(dropout)),
                    ("fc8", nn.Linear(4096, num_classes, **meta))]
        else:       # torchvision order: dropout before fc6 and fc7
            head = [("drop6", nn.Dropout(dropout)), ("fc6", nn.Linear(flat, 4096, **meta)),
                    ("relu6", nn.ReLU(inplace=True)),
                    ("drop7", nn.Dropout(dropout)), ("fc7", nn.Linear(4096, 4096, **meta)),
                    ("relu7", nn.ReLU(inplace=True)),
                    ("fc8", nn.Linear(4096, num_classes, **meta))]
        self.classifier = nn.Sequential(OrderedDict(head))
        self.to_empty(device=torch.get_default_device())
        self.reset_parameters(init, init_bias)

    @property
    def conv1(self):
        """The first convolution (96 11x11 kernels in the paper; the two GPUs' halves are [0:48], [48:96])."""
        return self.features.conv1

    def reset_parameters(self, init="paper", init_bias=1.0):
        """(Re-)initialise every conv and linear layer with the scheme ``init`` (see class docstring)."""
        for name, m in list(self.features.named_children()) + list(self.classifier.named_children()):
            if not isinstance(m, (nn.Conv2d, nn.Linear)):
                continue
            if init == "default":
                m.reset_parameters()
            elif init == "paper":                       # Sec. 5
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.constant_(m.bias, init_bias if name in _BIAS_ONE else 0.0)
            elif init == "caffe":                       # bvlc_alexnet train_val.prototxt
                nn.init.normal_(m.weight, 0.0, 0.005 if name in ("fc6", "fc7") else 0.01)
                nn.init.constant_(m.bias, 0.1 if name in _BIAS_ONE else 0.0)
            elif init == "kaiming":                     # He et al. 2015, fan_in, ReLU gain sqrt(2)
                if name == "fc8":   # no ReLU after fc8: small logits give a loss near log(classes)
                    nn.init.normal_(m.weight, 0.0, 0.01)
                else:
                    nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            else:
                raise UserError(f"model init {init!r} is unknown; use one of {', '.join(INITS)}")

    def _check_size(self, x):
        if x.dim() != 4 or x.shape[1] != self.features.conv1.in_channels:
            raise InputShapeError(f"AlexNet expects input (N, {self.features.conv1.in_channels}, H, W), got "
                            f"{tuple(x.shape)}; set model.in_channels to the images' channel count")
        if min(x.shape[-2:]) < self.min_size:
            raise InputShapeError(f"images of {x.shape[-2]}x{x.shape[-1]} are too small for AlexNet; use a "
                            f"crop of at least {self.min_size} px (224 in the paper)")

    def forward_features(self, x):
        """fc7 activations after ReLU (Sec. 6.1, Fig. 4 right). x: (N, C, H, W) -> (N, 4096)."""
        self._check_size(x)
        x = torch.flatten(self.avgpool(self.features(x)), 1)     # (N, 256, 6, 6) -> (N, 9216)
        for name, layer in self.classifier.named_children():
            x = layer(x)
            if name == "relu7":
                return x
        raise AssertionError("classifier has no relu7")

    def forward(self, x):
        """x: (N, C, H, W) -> logits (N, num_classes)."""
        self._check_size(x)
        x = torch.flatten(self.avgpool(self.features(x)), 1)     # (N, 256, 6, 6) -> (N, 9216)
        return self.classifier(x)


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"model {name} must be a positive integer, got {value!r}")


def build_model(model_cfg):
    """AlexNet from a ``ModelConfig`` (alexnet.config) or a dict of its fields (as stored in checkpoints)."""
    if not isinstance(model_cfg, dict):
        model_cfg = {f: getattr(model_cfg, f) for f in model_cfg.__dataclass_fields__}
    known = ("variant", "num_classes", "in_channels", "dropout", "init", "lrn", "overlap_pool", "groups",
             "init_bias")
    unknown = sorted(set(model_cfg) - set(known))
    if unknown:
        raise UserError(f"unknown model config key(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return AlexNet(**{k: model_cfg[k] for k in known if k in model_cfg})


def from_torchvision(state_dict, dropout=0.5):
    """An owt AlexNet holding a ``torchvision.models.alexnet`` state dict (e.g. its ImageNet weights).

    Args:
        state_dict: torchvision's keys (``features.0.weight``, ..., ``classifier.6.bias``); a
            ``module.`` prefix (DataParallel) is removed. num_classes and in_channels come from it.
    Returns: AlexNet(variant="owt") whose eval outputs equal torchvision's for the same weights.
    """
    sd = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state_dict.items()}
    renamed = {}
    for key, value in sd.items():
        module, _, param = key.rpartition(".")
        if module not in _TORCHVISION_NAMES:
            raise UserError(f"state dict key {key!r} is not one of torchvision's AlexNet; expected "
                            f"{', '.join(k + '.weight' for k in _TORCHVISION_NAMES)} (and .bias)")
        renamed[f"{_TORCHVISION_NAMES[module]}.{param}"] = value
    try:
        num_classes = renamed["classifier.fc8.weight"].shape[0]
        in_channels = renamed["features.conv1.weight"].shape[1]
    except KeyError as e:
        raise UserError(f"torchvision state dict lacks {e.args[0]}; is it an AlexNet state dict?") from None
    model = AlexNet(num_classes=num_classes, in_channels=in_channels, variant="owt", dropout=dropout,
                    init="default")
    own = model.state_dict()
    for key, value in renamed.items():
        if own[key].shape != value.shape:
            raise UserError(f"layer {key}: torchvision state dict has shape {tuple(value.shape)}, "
                            f"an owt AlexNet needs {tuple(own[key].shape)}")
    missing = sorted(set(own) - set(renamed))
    if missing:
        raise UserError(f"torchvision state dict lacks {', '.join(missing)}")
    model.load_state_dict(renamed)
    return model


def count_parameters(model):
    """Number of parameters of ``model`` (all of them; AlexNet has no frozen ones)."""
    return sum(p.numel() for p in model.parameters())
