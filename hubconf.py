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
            class names in output order and `model.preprocessing` the input the model expects (resize,
            crop, normalize, pixel_scale and the dataset statistics' channel mean / std).
        **kwargs: arguments of `alexnet.AlexNet` (num_classes, in_channels, variant, dropout, init, lrn,
            overlap_pool, groups). With a checkpoint they replace the checkpoint's values (a changed
            layer shape is then an error naming the layer).
    Returns:
        the model, in training mode as `torch.hub` models are; call `.eval()` before inference.
    """
    # Imported here: this function's name shadows the package in this module's namespace.
    from alexnet.checkpoint import load_for_inference
    from alexnet.model import AlexNet

    if checkpoint is None:
        return AlexNet(**kwargs)
    inf = load_for_inference(checkpoint, **kwargs)
    model = inf.model.train()
    model.class_names = inf.class_names
    d = inf.cfg.data
    model.preprocessing = {"resize": d.resize, "crop": d.crop, "normalize": d.normalize, "pixel_scale": d.pixel_scale,
                           "mean": [float(v) for v in inf.stats["mean"]], "std": [float(v) for v in inf.stats["std"]]}
    return model
