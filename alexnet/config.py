"""The typed configuration: every default lives here; YAML files in configs/ hold only differences.

Sections map one-to-one to YAML sections (``model:``, ``data:``, ``optim:``, ``schedule:``, ``train:``).
"""
import dataclasses
import typing
from dataclasses import dataclass, field

import yaml

from alexnet.errors import UserError
from alexnet.model import INITS, VARIANTS


@dataclass
class ModelConfig:
    variant: str = "paper"        # "paper" (Sec. 3, two-group convs, LRN) | "owt" (torchvision's layout)
    num_classes: int = 1000
    in_channels: int = 3
    dropout: float = 0.5          # fc6 and fc7 (Sec. 4.2)
    init: str = "paper"           # "paper": N(0, 0.01), biases 1/0 (Sec. 5) | "caffe" | "kaiming" | "default"
    init_bias: float = 1.0        # init paper: the constant of the biases the paper sets to 1 (conv2/4/5, fc6/7)
    lrn: bool = True              # ablation switch (Sec. 3.3)
    overlap_pool: bool = True     # 3/2 pooling; False gives 2/2 (Sec. 3.4)
    groups: bool = True           # two-group conv2/4/5; False connects all maps


@dataclass
class DataConfig:
    root: str = ""                # ROOT holding train/<class>/* and val/<class>/*
    demo: bool = False            # generate the bundled demo dataset at `root` when it is missing
    store: str = ""               # a prepared R x R store (python -m dataloader.prepare); "" = ImageFolder path
    resize: int = 256             # shorter side, then central square (Sec. 2)
    crop: int = 224               # training / test patch (Sec. 4.1)
    flip: bool = True             # horizontal reflections (Sec. 4.1)
    random_crop: bool = True      # False: centre crop in training too (deterministic tests)
    pca_sigma: float = 0.1        # std of a_i in the PCA colour shift; 0 turns it off (Sec. 4.1)
    normalize: str = "mean_image" # "mean_image" (the paper: subtract the training mean image) | "channel"
    pixel_scale: float = 1.0      # pixels in [0, pixel_scale]: 255 is the paper's raw 0-255 values (Sec. 2)
    stats: str = "auto"           # "auto": computed from train/ on first use and cached | "imagenet" | a file
    workers: int = 2              # DataLoader worker processes per rank
    bad_images: str = "error"     # "error": stop naming the file | "skip": skip and count
    max_bad_images: int = 100     # with "skip": stop once more than this many were skipped
    synset_mapping: str = ""      # optional "wnid name" file (ImageNet's LOC_synset_mapping.txt)


@dataclass
class OptimConfig:
    batch_size: int = 128         # global batch (all ranks together); each rank gets batch_size / world
    lr: float = 0.01              # Sec. 5; 0.1 (the ResNet default) diverges
    momentum: float = 0.9
    weight_decay: float = 5e-4
    no_bias_decay: bool = False   # no weight decay on biases (cuda-convnet's and Caffe's AlexNet; the paper is silent)
    bias_lr_factor: float = 1.0   # biases learn this many times faster (2 in cuda-convnet / Caffe; paper silent)
    update: str = "torch"         # "torch": torch's SGD (v <- m v + g; w <- w - lr v) | "paper": Sec. 5's rule


@dataclass
class ScheduleConfig:
    name: str = "plateau"         # "plateau" (Sec. 5: /10 when val error stops improving) | "step" | "constant"
    factor: float = 0.1
    patience: int = 2             # plateau: epochs without improvement before a reduction
    max_reductions: int = 3       # plateau: the paper divided three times, then stopped
    step_size: int = 30           # step: epochs between reductions
    warmup_epochs: float = 0.0    # linear warm-up from 0, in epochs (fractions allowed)


@dataclass
class TrainConfig:
    epochs: int = 90
    seed: int = 0
    device: str = "auto"          # "auto" | "cpu" | "cuda"
    amp: str = "auto"             # "auto" (bf16 on CUDA, off on CPU) | "none" | "bf16" | "fp16"
    channels_last: bool = True    # CUDA only
    compile: bool = False         # torch.compile the model
    out: str = "runs/alexnet"     # run directory
    resume: str = ""              # "" | "auto" | path to a checkpoint
    save_every_steps: int = 0     # also save last.pt every N steps (mid-epoch resume); 0 = epoch ends only
    log_every_steps: int = 20     # TensorBoard scalar interval
    log_images: bool = True       # input grid and conv1 kernels to TensorBoard each epoch


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ---------------------------------------------------------------------------------------------------
# Loading, merging and validation (YAML file -> overrides -> checks). Every error is a one-line
# UserError naming the key, so a typo in a config never silently falls back to a default.

SECTIONS = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig,
            "schedule": ScheduleConfig, "train": TrainConfig}

# Keys with a closed set of values: checked by validate(), listed in the error message.
CHOICES = {
    "model.variant": VARIANTS,
    "model.init": INITS,
    "data.normalize": ("mean_image", "channel"),
    "data.bad_images": ("error", "skip"),
    "optim.update": ("torch", "paper"),
    "schedule.name": ("plateau", "step", "constant"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.amp": ("auto", "none", "bf16", "fp16"),
}

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _field_types(cls):
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(key, typ, value):
    """Check `value` (from YAML or the command line) against the field type; return the typed value."""
    if isinstance(value, str) and typ is not str:  # command-line text: parse by the field's type
        text = value.strip()
        try:
            if typ is bool:
                if text.lower() in _TRUE | _FALSE:
                    return text.lower() in _TRUE
                raise ValueError
            return typ(text) if typ is float else int(text)
        except ValueError:
            raise UserError(f"{key}: expected {typ.__name__}, got {value!r}") from None
    if typ is bool:
        ok = isinstance(value, bool)
    elif typ is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif typ is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, str)
    if not ok:
        raise UserError(f"{key}: expected {typ.__name__}, got {value!r} ({type(value).__name__})")
    return value


def _unknown(key, known):
    return UserError(f"unknown config key {key!r}; accepted: {', '.join(known)}")


def config_from_dict(d):
    """Build a validated Config from a nested dict ``{"model": {...}, ...}`` (missing keys = defaults).

    Unknown sections/keys and wrong types raise UserError naming the key.
    """
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise UserError(f"config must be a mapping of sections ({', '.join(SECTIONS)}), got {type(d).__name__}")
    sections = {}
    for name, section in d.items():
        if name not in SECTIONS:
            raise _unknown(name, SECTIONS)
        if section is None:
            section = {}
        if not isinstance(section, dict):
            raise UserError(f"{name}: expected a mapping of keys, got {section!r}")
        types = _field_types(SECTIONS[name])
        values = {}
        for key, value in section.items():
            if key not in types:
                raise _unknown(f"{name}.{key}", [f"{name}.{k}" for k in types])
            values[key] = _coerce(f"{name}.{key}", types[key], value)
        sections[name] = SECTIONS[name](**values)
    cfg = Config(**sections)
    validate(cfg)
    return cfg


def set_override(d, key, value):
    """Set ``d[section][name] = value`` for ``key = "section.name"``, checking that the key exists.

    `value` may be command-line text (parsed later by the field's type) or an already-typed value.
    """
    key = key.strip()
    section, _, name = key.partition(".")
    if section not in SECTIONS:
        raise _unknown(section, SECTIONS)
    if name not in _field_types(SECTIONS[section]):
        raise _unknown(key, [f"{section}.{k}" for k in _field_types(SECTIONS[section])])
    if not isinstance(d.get(section), dict):
        d[section] = {}
    d[section][name] = value
    return d


def parse_override(item):
    """``"optim.lr=0.02"`` -> ``("optim.lr", "0.02")``."""
    key, sep, value = item.partition("=")
    if not sep or "." not in key:
        raise UserError(f"override {item!r} is not of the form section.key=value (e.g. optim.lr=0.02)")
    return key, value


def load_config(path=None, overrides=()):
    """Defaults <- YAML file `path` (only the keys that differ) <- `overrides`; validated.

    overrides: ``"section.key=value"`` strings (values parsed by the field's type) or a dict
    ``{"section.key": value}``.
    """
    d = {}
    if path:
        try:
            with open(path) as f:
                d = yaml.safe_load(f) or {}
        except FileNotFoundError:
            raise UserError(f"config file {path} not found; see configs/ for the bundled ones") from None
        except yaml.YAMLError as e:
            raise UserError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(d, dict):
            raise UserError(f"config file {path} must hold sections ({', '.join(SECTIONS)}), not {type(d).__name__}")
    items = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides)
    for key, value in items:
        set_override(d, key, value)
    return config_from_dict(d)


def _check(ok, key, what):
    if not ok:
        raise UserError(f"{key}: {what}")


def validate(cfg):
    """Range and choice checks; raises UserError naming the key and the accepted values."""
    for key, accepted in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        _check(value in accepted, key, f"got {value!r}; accepted: {', '.join(accepted)}")
    m, dt, o, s, t = cfg.model, cfg.data, cfg.optim, cfg.schedule, cfg.train
    _check(m.num_classes >= 1, "model.num_classes", f"must be >= 1, got {m.num_classes}")
    _check(m.in_channels >= 1, "model.in_channels", f"must be >= 1, got {m.in_channels}")
    _check(0.0 <= m.dropout < 1.0, "model.dropout", f"must be in [0, 1), got {m.dropout}")
    _check(m.init_bias == 1.0 or m.init == "paper", "model.init_bias",
           f"applies to model.init=paper only (init {m.init} sets its own biases); remove it")
    _check(dt.resize >= 1, "data.resize", f"must be >= 1, got {dt.resize}")
    _check(1 <= dt.crop <= dt.resize, "data.crop", f"must be in [1, data.resize={dt.resize}], got {dt.crop}")
    _check(dt.pca_sigma >= 0, "data.pca_sigma", f"must be >= 0, got {dt.pca_sigma}")
    _check(dt.pixel_scale > 0, "data.pixel_scale", f"must be > 0 (1 or 255), got {dt.pixel_scale}")
    _check(dt.workers >= 0, "data.workers", f"must be >= 0, got {dt.workers}")
    _check(dt.max_bad_images >= 0, "data.max_bad_images", f"must be >= 0, got {dt.max_bad_images}")
    _check(o.batch_size >= 1, "optim.batch_size", f"must be >= 1, got {o.batch_size}")
    _check(o.lr > 0, "optim.lr", f"must be > 0, got {o.lr}")
    _check(0 <= o.momentum < 1, "optim.momentum", f"must be in [0, 1), got {o.momentum}")
    _check(o.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {o.weight_decay}")
    _check(o.bias_lr_factor > 0, "optim.bias_lr_factor", f"must be > 0, got {o.bias_lr_factor}")
    _check(0 < s.factor <= 1, "schedule.factor", f"must be in (0, 1], got {s.factor}")
    _check(s.patience >= 0, "schedule.patience", f"must be >= 0, got {s.patience}")
    _check(s.max_reductions >= 0, "schedule.max_reductions", f"must be >= 0, got {s.max_reductions}")
    _check(s.step_size >= 1, "schedule.step_size", f"must be >= 1, got {s.step_size}")
    _check(s.warmup_epochs >= 0, "schedule.warmup_epochs", f"must be >= 0, got {s.warmup_epochs}")
    _check(t.epochs >= 1, "train.epochs", f"must be >= 1, got {t.epochs}")
    _check(t.save_every_steps >= 0, "train.save_every_steps", f"must be >= 0, got {t.save_every_steps}")
    _check(t.log_every_steps >= 1, "train.log_every_steps", f"must be >= 1, got {t.log_every_steps}")
    _check(bool(t.out), "train.out", "must name a run directory")
    return cfg


def as_data_config(data_cfg):
    """Accept the DataConfig dataclass or a dict of its fields (a checkpoint's "data" section)."""
    return DataConfig(**data_cfg) if isinstance(data_cfg, dict) else data_cfg


def to_dict(cfg):
    """The plain nested dict stored in checkpoints and written as the run's config.yaml."""
    return dataclasses.asdict(cfg)


def to_yaml(cfg):
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
