"""torch.hub entry points, so other tools can build the model from a checkout of this repository:

    model = torch.hub.load("path/to/repo", "alexnet", source="local")                      # paper layout
    model = torch.hub.load("path/to/repo", "alexnet", source="local", num_classes=10, variant="owt")
    model = torch.hub.load("path/to/repo", "alexnet", source="local", checkpoint="runs/demo/best.pt")
"""
dependencies = ["torch"]


def alexnet(checkpoint=None, **kwargs):
    """AlexNet (Krizhevsky et al. 2012) from this repository.

    Args:
        checkpoint: optional path to a checkpoint written by train.py; the model is built from the
            checkpoint's model config and its weights are loaded. `model.class_names` then holds the
            class names in output order.
        **kwargs: arguments of `alexnet.AlexNet` (num_classes, in_channels, variant, dropout, init, lrn,
            overlap_pool, groups). With a checkpoint they replace the checkpoint's values (a changed
            layer shape is then an error naming the layer).
    Returns:
        the model, in training mode as `torch.hub` models are; call `.eval()` before inference.
    """
    # Imported here: this function's name shadows the package in this module's namespace.
    from alexnet.model import AlexNet

    if checkpoint is None:
        return AlexNet(**kwargs)
    from alexnet.checkpoint import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(checkpoint)
    model_cfg = {**ckpt["config"]["model"], **kwargs}
    model = model_from_checkpoint({**ckpt, "config": {**ckpt["config"], "model": model_cfg}})
    model.class_names = list(ckpt["class_names"])
    return model
