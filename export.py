"""Export a trained model for other runtimes: a `torch.export` program (.pt2), and ONNX if asked for.

    python export.py --checkpoint runs/demo/best.pt --out alexnet.pt2 [--onnx alexnet.onnx]

The exported program maps normalised images (N, C, crop, crop) to logits (N, num_classes), with a
dynamic batch size. Preprocessing is the checkpoint's (resize, centre crop, normalisation); its
description and the class names are stored next to the program as `extra_files["meta.json"]`.
The paper's LRN layers are exported as torch.nn.LocalResponseNorm with alpha * n (the same function,
standard ops). After exporting, the program's outputs are compared with the eager model's and the largest
difference is printed. ONNX needs the optional `onnx` and `onnxscript` packages (not needed to train).

Load the program back with:

    extra = {"meta.json": ""}
    program = torch.export.load("alexnet.pt2", extra_files=extra)
    logits = program.module()(images)
"""
import argparse
import copy
import json

import torch

from alexnet.checkpoint import load_for_inference
from alexnet.errors import UserError, run_main
from alexnet.lrn import LocalResponseNorm


def export_friendly(model):
    """A copy of `model` with each LocalResponseNorm replaced by torch.nn.LocalResponseNorm(n, alpha * n,
    beta, k): the same function (Sec. 3.3; torch divides alpha by n, see alexnet/lrn.py) made of standard
    ops. The custom LRN is an autograd.Function whose saved sizes would fix the batch size of the exported
    program; torch's module traces with a dynamic batch, and ONNX maps it to its LRN operator."""
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, LocalResponseNorm):
                setattr(parent, name, torch.nn.LocalResponseNorm(child.size, child.alpha * child.size,
                                                                 child.beta, child.k))
    return model


def export_model(model, example):
    """`torch.export` the eval-mode `model` traced on `example` (N, C, H, W), batch size left dynamic.

    Returns an `ExportedProgram`; `program.module()(x)` runs it.
    """
    model = export_friendly(model).eval()
    with torch.no_grad():
        return torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))


def max_difference(program, model, x):
    """Largest |exported(x) - eager(x)| over the logits, for x (N, C, H, W)."""
    with torch.no_grad():
        return (program.module()(x) - model.eval()(x)).abs().max().item()


def checkpoint_meta(inf):
    """What a user of the exported program needs besides the weights: class names and preprocessing."""
    d = inf.cfg.data
    return {
        "class_names": inf.class_names,
        "input": "float32 (N, C, crop, crop): shorter side resized to `resize`, central square, centre crop, "
                 "pixels / 255, normalised per `normalize`, then times `pixel_scale` (mean_image only)",
        "resize": d.resize,
        "crop": d.crop,
        "normalize": d.normalize,  # "mean_image": subtract the training mean image (not stored here)
        "pixel_scale": d.pixel_scale,
        "mean": [float(v) for v in inf.stats["mean"]],
        "std": [float(v) for v in inf.stats["std"]],
    }


def main(argv=None):
    p = argparse.ArgumentParser(description="Export a checkpoint with torch.export (and optionally ONNX).")
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by train.py")
    p.add_argument("--out", default="alexnet.pt2", help="the torch.export program file (.pt2)")
    p.add_argument("--onnx", default="", help="also write an ONNX file here (needs onnx + onnxscript)")
    p.add_argument("--size", type=int, default=0, help="example input side in px (default: the crop size)")
    a = p.parse_args(argv)

    inf = load_for_inference(a.checkpoint)
    model = inf.model
    size = a.size or inf.cfg.data.crop
    example = torch.rand(2, inf.cfg.model.in_channels, size, size)
    program = export_model(model, example)
    torch.export.save(program, a.out, extra_files={"meta.json": json.dumps(checkpoint_meta(inf))})
    check = torch.rand(3, *example.shape[1:])  # another batch size: checks the dynamic dimension
    print(f"wrote {a.out}: max |exported - eager| = {max_difference(torch.export.load(a.out), model, check):.2e}")

    if a.onnx:
        try:
            import onnx  # noqa: F401  (torch.onnx's exporter needs onnx and onnxscript)
            import onnxscript  # noqa: F401
        except ImportError:
            raise UserError("--onnx needs the optional packages onnx and onnxscript: "
                            "pip install onnx onnxscript (the .pt2 export was written)") from None
        torch.onnx.export(export_friendly(model), (example,), a.onnx, dynamo=True, input_names=["images"],
                          output_names=["logits"], dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
        print(f"wrote {a.onnx}")
    return 0


if __name__ == "__main__":
    run_main(main)
