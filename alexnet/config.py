"""The typed configuration: every default lives here; YAML files in configs/ hold only differences.

Sections map one-to-one to YAML sections (``model:``, ``data:``, ``optim:``, ``schedule:``, ``train:``).
"""
from dataclasses import dataclass, field


@dataclass
class ModelConfig:
    variant: str = "paper"        # "paper" (Sec. 3, two-group convs, LRN) | "owt" (torchvision's layout)
    num_classes: int = 1000
    in_channels: int = 3
    dropout: float = 0.5          # fc6 and fc7 (Sec. 4.2)
    init: str = "paper"           # "paper": N(0, 0.01), biases 1/0 (Sec. 5) | "kaiming" | ...
    lrn: bool = True              # ablation switch (Sec. 3.3)
    overlap_pool: bool = True     # 3/2 pooling; False gives 2/2 (Sec. 3.4)
    groups: bool = True           # two-group conv2/4/5; False connects all maps


@dataclass
class DataConfig:
    root: str = ""                # ROOT holding train/<class>/* and val/<class>/*
    demo: bool = False            # generate the bundled demo dataset at `root` when it is missing
    store: str = ""               # a prepared 256x256 store (benchmarks/perf issue); "" = ImageFolder path
    resize: int = 256             # shorter side, then central square (Sec. 2)
    crop: int = 224               # training / test patch (Sec. 4.1)
    flip: bool = True             # horizontal reflections (Sec. 4.1)
    random_crop: bool = True      # False: centre crop in training too (deterministic tests)
    pca_sigma: float = 0.1        # std of a_i in the PCA colour shift; 0 turns it off (Sec. 4.1)
    normalize: str = "mean_image" # "mean_image" (the paper: subtract the training mean image) | "channel"
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
    no_bias_decay: bool = False   # option: no weight decay on biases (not the paper)


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
