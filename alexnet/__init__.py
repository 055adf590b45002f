"""AlexNet (Krizhevsky, Sutskever, Hinton 2012) in PyTorch: the paper's model and its LRN."""
from alexnet.lrn import LocalResponseNorm
from alexnet.model import AlexNet, build_model, from_torchvision

__all__ = ["AlexNet", "LocalResponseNorm", "build_model", "from_torchvision"]
