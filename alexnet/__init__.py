"""AlexNet (Krizhevsky, Sutskever, Hinton 2012) in PyTorch: the model and the machinery to train it.

    model.py        AlexNet (Sec. 3: the paper's layout, and torchvision's "owt"), its inits, ablation switches
    lrn.py          the paper's local response normalisation (Sec. 3.3), fast closed-form backward
    config.py       the typed config: dataclasses with every default, YAML + command-line overrides, checks
    engine.py       optimizer (Sec. 5), mixed precision, train_one_epoch(), evaluate(), the ensemble (Sec. 6)
    checkpoint.py   atomic save, safe load, TrainState (resume), load_for_inference()
    schedule.py     learning-rate rules (Sec. 5's plateau rule, step, warm-up)
    metrics.py      top-k counts and epoch totals, exact over ranks
    distributed.py  device set-up, torchrun / DDP
    tracking.py     the run directory: config.yaml, run_info.json, metrics.jsonl, TensorBoard
    files.py        atomic file writes;  cpu.py  glibc allocator tuning;  errors.py  one-line user errors
"""
from alexnet.lrn import LocalResponseNorm
from alexnet.model import AlexNet, build_model, from_torchvision

__all__ = ["AlexNet", "LocalResponseNorm", "build_model", "from_torchvision"]
