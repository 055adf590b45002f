"""Which parts of the paper's recipe make AlexNet learn: short demo runs over a grid, val top-1 per epoch.

    python benchmarks/recipe_study.py [--epochs 6] [--rows all|NAME,NAME] [--out runs/recipe_study]
                                      [--markdown FILE] [--json FILE] [--seed 0]

Every row is `python train.py --config configs/alexnet_paper.yaml` on the bundled demo data (written to
data/demo on first use) with only the data size, class count and batch overridden (resize 72, random 64
crops, 10 classes, batch 64), plus the row's own overrides: the init (paper / caffe / kaiming) and the paper
init's bias constant (1 / 0.1), the pixel scale (1: [0, 1]; 255: the paper's raw values minus the mean
image), LRN on / off, warm-up, and the
original code's bias conventions and update rule. Rows run one after another in subprocesses (a row that
fails is reported, the others go on); each row's run directory stays in --out, and a row whose run
directory already holds --epochs epochs of the same command is read back instead of trained again
(--rerun trains it anew). Prints and writes a table of val top-1 (%) after each epoch.
"""
import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from alexnet.errors import UserError, run_main  # noqa: E402

# The demo data with the paper config: only the image size, classes and batch differ from ImageNet's.
BASE = ["--config", "configs/alexnet_paper.yaml", "--data", "data/demo", "data.demo=true", "--num_classes", "10",
        "--batch-size", "64", "data.resize=72", "data.crop=64", "train.log_images=false", "--device", "cpu"]

# name -> (what it tests, overrides on top of configs/alexnet_paper.yaml). The config sets model.init_bias 0.1,
# which only the paper init takes: the other rows put it back to 1 (their inits set their own biases).
OTHER = "model.init_bias=1"
ROWS = {
    "paper-1": ("the paper's init (N(0, 0.01), biases 1) on [0, 1] pixels",
                ["model.init=paper", "model.init_bias=1", "data.pixel_scale=1"]),
    "paper-255": ("the paper's init at the paper's pixel scale",
                  ["model.init=paper", "model.init_bias=1", "data.pixel_scale=255"]),
    "paper-255-warmup": ("the paper's init at 255, 1 epoch of linear warm-up",
                         ["model.init=paper", "model.init_bias=1", "data.pixel_scale=255", "schedule.warmup_epochs=1"]),
    "paper-1-bias0.1": ("the paper's weights, biases 0.1 (Caffe's value), on [0, 1] pixels",
                        ["model.init=paper", "model.init_bias=0.1", "data.pixel_scale=1"]),
    "paper-255-bias0.1": ("the paper's weights, biases 0.1, at the paper's pixel scale: **the config**",
                          ["model.init=paper", "model.init_bias=0.1", "data.pixel_scale=255"]),
    "caffe-1": ("Caffe's init (bias 0.1, fc6/fc7 std 0.005) on [0, 1] pixels",
                ["model.init=caffe", OTHER, "data.pixel_scale=1"]),
    "caffe-255": ("Caffe's init at the paper's pixel scale", ["model.init=caffe", OTHER, "data.pixel_scale=255"]),
    "caffe-255-nolrn": ("as caffe-255 without LRN (Sec. 3.3)",
                        ["model.init=caffe", OTHER, "data.pixel_scale=255", "model.lrn=false"]),
    "caffe-255-bias": ("as caffe-255 with the original code's biases: lr x2, no weight decay",
                       ["model.init=caffe", OTHER, "data.pixel_scale=255", "optim.bias_lr_factor=2",
                        "optim.no_bias_decay=true"]),
    "caffe-255-paperupdate": ("as caffe-255 with Sec. 5's update rule (lr inside the velocity)",
                              ["model.init=caffe", OTHER, "data.pixel_scale=255", "optim.update=paper"]),
    "kaiming-1": ("He init (zero biases) on [0, 1] pixels", ["model.init=kaiming", OTHER, "data.pixel_scale=1"]),
    "kaiming-255": ("He init at the paper's pixel scale", ["model.init=kaiming", OTHER, "data.pixel_scale=255"]),
    "kaiming-1-nolrn": ("He init on [0, 1] pixels without LRN",
                        ["model.init=kaiming", OTHER, "data.pixel_scale=1", "model.lrn=false"]),
}


def read_metrics(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def run_row(name, overrides, epochs, out, seed, rerun=False):
    """Train one row (or read back a finished one); returns {"val_top1": [...], "train_loss": [...],
    "seconds": s, "error": str or None, "command": ...}."""
    run_dir = os.path.join(out, name)
    metrics, done_file = os.path.join(run_dir, "metrics.jsonl"), os.path.join(run_dir, "study_row.json")
    cmd = [sys.executable, "train.py", *BASE, "--epochs", str(epochs), "--out", run_dir, "--seed", str(seed),
           *overrides]
    if not rerun and os.path.exists(done_file):
        with open(done_file) as f:
            done = json.load(f)
        if done["command"] == " ".join(cmd[1:]) and len(done["val_top1"]) == epochs:
            return done
    if os.path.exists(metrics):
        os.remove(metrics)       # a fresh run: --resume is not used, old rows would mix in
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    rows = read_metrics(metrics)
    error = None if done.returncode == 0 else (done.stderr.strip().splitlines() or ["?"])[-1]
    result = {"val_top1": [r["val_top1"] for r in rows], "train_loss": [r["train_loss"] for r in rows],
              "seconds": seconds, "error": error, "command": " ".join(cmd[1:])}
    if error is None:
        with open(done_file, "w") as f:
            json.dump(result, f)
    return result


def markdown(results, epochs):
    """The study as a markdown table: one row per recipe, val top-1 after each epoch."""
    head = "| row | what it tests | " + " | ".join(f"ep {e}" for e in range(1, epochs + 1)) + " | last train loss |"
    lines = [head, "|" + "---|" * (epochs + 3)]
    for name, r in results.items():
        cells = [f"{v:.1f}" for v in r["val_top1"]] + ["-"] * (epochs - len(r["val_top1"]))
        loss = f"{r['train_loss'][-1]:.3f}" if r["train_loss"] else (r["error"] or "-")
        lines.append(f"| `{name}` | {ROWS[name][0]} | " + " | ".join(cells) + f" | {loss} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--rows", default="all", help="comma-separated row names (default: all): " + ", ".join(ROWS))
    p.add_argument("--out", default="runs/recipe_study")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--markdown", default="", help="also write the table to this file")
    p.add_argument("--json", default="", help="also write the results to this file")
    p.add_argument("--rerun", action="store_true", help="train every row anew, even if its run directory is done")
    a = p.parse_args(argv)
    names = list(ROWS) if a.rows == "all" else a.rows.split(",")
    unknown = [n for n in names if n not in ROWS]
    if unknown or a.epochs < 1:
        raise UserError(f"unknown rows {unknown}; choose from {', '.join(ROWS)}" if unknown else "--epochs must be >= 1")
    results = {}
    for name in names:
        results[name] = run_row(name, ROWS[name][1], a.epochs, a.out, a.seed, a.rerun)
        r = results[name]
        print(f"{name}: val top-1 {[round(v, 1) for v in r['val_top1']]} in {r['seconds']:.0f} s"
              f"{' ERROR ' + r['error'] if r['error'] else ''}", flush=True)
    table = markdown(results, a.epochs)
    print(table)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(table + "\n")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"epochs": a.epochs, "seed": a.seed, "base": BASE, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    run_main(main)
