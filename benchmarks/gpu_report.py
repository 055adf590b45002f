"""One command that checks the GPU path and measures it, on whatever device it finds:

    python benchmarks/gpu_report.py --json FILE [--quick] [--device auto|cpu|cuda] [--no-tests] [--budget S]

1. tests   python -m pytest -q tests/test_cuda.py in a subprocess: passed / failed / skipped counts (it
           skips itself without CUDA).
2. model   training steps on synthetic batches already on the device, images/s: the paper's AlexNet and
           torchvision's alexnet, fp32 / bf16 autocast, channels_last on / off, eager / torch.compile, with
           the peak GPU memory. Ratios against the paper model, fp32, eager, NCHW, measured first.
3. feeds   end-to-end training images/s (the paper model; on CUDA bf16 + channels_last + torch.compile, on
           the CPU fp32 eager) fed by the raw store, the JPEG store (nvjpeg decoding on CUDA), the
           image-folder path and the standard torchvision pipeline (ImageFolder + RandomResizedCrop + flip +
           ToTensor + Normalize); each loader alone too; and train.py's own loop (train_one_epoch) fed by
           the raw store. Ratios against the model alone (measured before and after), the raw store and
           the torchvision pipeline.
4. LRN     alexnet.LocalResponseNorm forward + backward at conv1's output, eager against torch.compile
           (fullgraph=True: no graph break), with the largest difference between the two.

Sizes: CUDA: 4096 generated JPEGs, batch 128, 60 timed steps (within 8 minutes on one GPU, tests included);
CPU: 200 JPEGs, batch 8 (model) / 16 (feeds), 3 timed steps, fp32 and bf16 eager only (about 3 minutes on
2 cores). --quick halves the images and steps and compiles one configuration. A time budget (--budget)
skips what would not fit, marked as skipped. The JSON and FILE.md are rewritten after every part, so a run
cut short keeps what it measured. Needs scikit-learn for the source photos (requirements-bench.txt).
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_model import interleaved_medians, lrn_step  # noqa: E402
from throughput import (ARCHS, Stepper, dir_stats, folder_batches, prepare_stores, rate,  # noqa: E402
                        reference_batches, source_images, store_batches, synthetic_batches, sync)

from alexnet import LocalResponseNorm  # noqa: E402
from alexnet.cpu import tune_allocator  # noqa: E402
from alexnet.distributed import resolve_device  # noqa: E402
from alexnet.engine import train_one_epoch  # noqa: E402
from alexnet.errors import UserError, run_main  # noqa: E402
from alexnet.files import atomic_write  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_FILES = ("tests/test_cuda.py",)      # the CPU tests run in CI
AMPS = ("none", "bf16")


def sizes(cuda, quick):
    s = (dict(images=4096, batch=128, feed_batch=128, steps=60, warmup=5, loader_batches=60, lrn_batch=128,
              workers=min(12, os.cpu_count() or 2), compile_s=90, tests_timeout=240, sync_every=20) if cuda else
         dict(images=200, batch=8, feed_batch=16, steps=3, warmup=1, loader_batches=4, lrn_batch=8, workers=2,
              compile_s=60, tests_timeout=240, sync_every=4))
    if quick:
        s.update(images=s["images"] // 2, steps=max(2, s["steps"] // 2), loader_batches=max(2, s["loader_batches"] // 2))
    return s


class Budget:
    """Wall-clock budget of the whole report: `fits(seconds)` says whether a step still fits."""

    def __init__(self, seconds):
        self.start, self.seconds = time.perf_counter(), seconds

    def elapsed(self):
        return time.perf_counter() - self.start

    def fits(self, seconds):
        return self.elapsed() + seconds <= self.seconds


def _short(e):
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}"


# ------------------------------------------------------------------------------------------- 1. tests

def run_tests(timeout, log=None):
    """pytest on TEST_FILES that exist, in a subprocess. Returns counts from its JUnit XML; its whole
    output goes to the file `log` when given."""
    files = [f for f in TEST_FILES if os.path.isfile(os.path.join(ROOT, f))]
    res = {"files": files, "missing": [f for f in TEST_FILES if f not in files]}
    with tempfile.TemporaryDirectory() as tmp:
        xml = os.path.join(tmp, "junit.xml")
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files, f"--junitxml={xml}"]
        t = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
            res["returncode"], out = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as e:
            res["returncode"], out = "timeout", (e.stdout or b"").decode(errors="replace") if isinstance(
                e.stdout, bytes) else (e.stdout or "")
        res["seconds"] = time.perf_counter() - t
        res["output_tail"] = out[-3000:]
        if log:
            atomic_write(log, out)
        if os.path.isfile(xml):
            suites = ET.parse(xml).getroot()
            suites = [suites] if suites.tag == "testsuite" else list(suites.iter("testsuite"))
            n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
            res.update(passed=n["tests"] - n["failures"] - n["errors"] - n["skipped"], failed=n["failures"],
                       errors=n["errors"], skipped=n["skipped"])
            res["failing"] = [f"{c.get('classname')}::{c.get('name')}" for s in suites for c in s.iter("testcase")
                              if c.find("failure") is not None or c.find("error") is not None]
    return res


# ------------------------------------------------------------------------------------------- 2. model

def model_configs(cuda, quick):
    """[(arch, amp, channels_last, compile, skip reason or None)], the baseline (paper, fp32, NCHW, eager) first."""
    out = []
    for arch in ARCHS:
        for amp in AMPS:
            for cl in (False, True):
                for comp in (False, True):
                    why = None
                    if not cuda and (cl or comp):
                        why = "CPU: fp32 / bf16 eager NCHW only"
                    elif comp and not cl:
                        why = "compiled with channels_last only (time)"
                    elif comp and quick and (arch, amp) != ("paper", "bf16"):
                        why = "--quick: one compiled configuration"
                    out.append((arch, amp, cl, comp, why))
    return out


def first_step_seconds(stepper, batches, device):
    """Seconds of the first training step, where torch.compile compiles."""
    t = time.perf_counter()
    stepper(*next(batches))
    sync(device)
    return time.perf_counter() - t


def measure_model(device, arch, amp, cl, comp, sz):
    """Images/s, step ms, first-step (compile) seconds and peak GPU memory of one configuration."""
    cuda = device.type == "cuda"
    if comp:
        torch._dynamo.reset()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    stepper = Stepper(device, amp, cl, comp, arch=arch)
    batches = synthetic_batches(sz["batch"], device)
    first = first_step_seconds(stepper, batches, device)
    ips = rate(batches, sz["steps"], sz["batch"], device, stepper, warmup=sz["warmup"] - 1)
    r = {"images_per_s": ips, "step_ms": 1000 * sz["batch"] / ips, "first_step_s": first}
    if cuda:
        r["max_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    del stepper
    return r


def model_matrix(device, sz, quick, budget, compiled):
    """Rows of the configurations with compile == `compiled` (eager first, then the feeds, then the slow
    compiled ones: what the budget skips is the compiling)."""
    rows = []
    for arch, amp, cl, comp, why in model_configs(device.type == "cuda", quick):
        if comp != compiled:
            continue
        row = {"arch": arch, "amp": amp, "channels_last": cl, "compile": comp}
        if why is None and not budget.fits(sz["compile_s"] if comp else 15):
            why = "time budget"
        if why:
            row["skipped"] = why
        else:
            try:
                row.update(measure_model(device, arch, amp, cl, comp, sz))
            except Exception as e:  # a configuration that fails is reported; the others still run
                row["error"] = _short(e)
        rows.append(row)
        print("model", {k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    return rows


def with_baseline(rows):
    """Rows in the table's order, each with vs_baseline: images/s over the paper model's, fp32, NCHW, eager."""
    def key(r):
        return ARCHS.index(r["arch"]), AMPS.index(r["amp"]), r["channels_last"], r["compile"]
    rows = sorted(rows, key=key)
    base = next((r.get("images_per_s") for r in rows if key(r) == (0, 0, False, False)), None)
    for r in rows:
        if base and "images_per_s" in r:
            r["vs_baseline"] = r["images_per_s"] / base
    return rows


# ------------------------------------------------------------------------------------------- 3. feeds

def prepare_data(sz, work):
    """Generated JPEGs and their raw and JPEG stores. Runs before any timing: `prepare` forks worker
    processes, which can hang on OpenMP's state once this process has run parallel torch ops."""
    root = source_images("", work, sz["images"], threads=sz["workers"])
    n, jpeg_bytes, w, h = dir_stats(os.path.join(root, "train"))
    stores, info = prepare_stores(root, work, sz["workers"], n)
    return root, stores, {"source": {"images": n, "bytes_per_image": jpeg_bytes, "mean_size": [w, h]}, **info}


class _Batches:
    """The next n batches of an endless batch iterator, as a loader with a length (for train_one_epoch)."""

    def __init__(self, batches, n):
        self.batches, self.n = batches, n

    def __len__(self):
        return self.n

    def __iter__(self):
        return (next(self.batches) for _ in range(self.n))


def train_loop_rate(device, sz, stepper, batches):
    """Images/s of train.py's own loop (alexnet.engine.train_one_epoch: lr set every step, the loss and
    accuracy sums kept on the device and read back every sz["sync_every"] steps) on `stepper`'s model and
    optimizer, fed by `batches`. The first, untimed call warms up (compiles)."""
    amp = stepper.amp

    def epoch(n):
        train_one_epoch(stepper.net, _Batches(batches, n), stepper.opt, amp, 0, lr_at=lambda e: 0.01,
                        sync_every=sz["sync_every"])
    epoch(sz["warmup"])
    sync(device)
    t = time.perf_counter()
    epoch(sz["steps"])
    sync(device)
    return sz["steps"] * sz["feed_batch"] / (time.perf_counter() - t)


def feeds(device, sz, data, budget, on_row=None):
    """End-to-end images/s of each input pipeline feeding the same training step; loaders alone too; and
    train.py's loop fed by the raw store. data: prepare_data()'s (root, stores, info). on_row(res) after
    each row (partial results)."""
    cuda = device.type == "cuda"
    root, stores, info = data
    res = dict(info)
    # train.py's fast settings on this device: bf16 + channels_last + compiled on CUDA, fp32 NCHW eager on
    # the CPU (compiling costs more there than it saves in a few steps)
    amp, cl, comp, bs, workers = ("bf16" if cuda else "none"), cuda, cuda, sz["feed_batch"], sz["workers"]
    res["step"] = {"arch": "paper", "amp": amp, "channels_last": cl, "compile": comp, "batch": bs}
    stepper = Stepper(device, amp, cl, comp)
    synthetic = synthetic_batches(bs, device)
    res["step"]["first_step_s"] = first_step_seconds(stepper, synthetic, device)
    model = [rate(synthetic, sz["steps"], bs, device, stepper, warmup=1)]

    def make(name):
        if name in ("store_raw", "store_jpeg", "train_loop"):
            return store_batches(stores["raw" if name == "train_loop" else name[6:]], bs, device, workers,
                                 channels_last=cl)
        if name == "folder":
            return folder_batches(root, bs, device, workers)
        return reference_batches(root, bs, workers, device), None

    rows = res["rows"] = {}
    for name in ("store_raw", "train_loop", "store_jpeg", "folder", "torchvision"):
        row = rows[name] = {}
        if not budget.fits(20):
            row["skipped"] = "time budget"
            continue
        try:
            feed, loaders = make(name)
            if name == "train_loop":
                row["end_to_end_images_per_s"] = train_loop_rate(device, sz, stepper, feed)
            else:
                row["loader_images_per_s"] = rate(feed, sz["loader_batches"], bs, device)
                row["end_to_end_images_per_s"] = rate(feed, sz["steps"], bs, device, stepper, warmup=1)
            if name == "store_jpeg":
                dec = loaders.train.decoder
                row["jpeg_decode"] = "nvjpeg (GPU)" if dec is not None and dec.gpu else "CPU (PIL)"
            del feed, loaders
        except Exception as e:
            row["error"] = _short(e)
        print("feed", name, {k: (round(v, 1) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
        if on_row is not None:
            on_row(res)
    model.append(rate(synthetic, sz["steps"], bs, device, stepper, warmup=1))
    res["model_alone_images_per_s"] = model
    alone, ref = sum(model) / len(model), rows["torchvision"].get("end_to_end_images_per_s")
    raw = rows["store_raw"].get("end_to_end_images_per_s")
    for name, row in rows.items():
        if "end_to_end_images_per_s" in row:
            row["vs_model_alone"] = row["end_to_end_images_per_s"] / alone
            if ref:
                row["vs_torchvision_pipeline"] = row["end_to_end_images_per_s"] / ref
            if raw and name == "store_jpeg":
                row["vs_raw_store"] = row["end_to_end_images_per_s"] / raw
    return res


# --------------------------------------------------------------------------------------------- 4. LRN

def lrn_compile(device, sz, budget):
    """LRN forward + backward at conv1's output, eager against torch.compile(fullgraph=True)."""
    if not budget.fits(sz["compile_s"]):
        return {"skipped": "time budget"}
    backend = "inductor" if device.type == "cuda" or shutil.which(os.environ.get("CXX", "g++")) else "aot_eager"
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.relu(torch.randn(sz["lrn_batch"], 96, 55, 55, device=device, generator=g) * 2)
    grad = torch.randn(x.shape, device=device, generator=g)
    eager = LocalResponseNorm()
    res = {"shape": list(x.shape), "backend": backend}
    try:
        explain = torch._dynamo.explain(eager)(x.clone().requires_grad_())
        res["graph_breaks"] = explain.graph_break_count
        torch._dynamo.reset()
        compiled = torch.compile(LocalResponseNorm(), fullgraph=True, backend=backend)
        t = time.perf_counter()
        got = lrn_step(compiled, x, grad)
        sync(device)
        res["compile_s"] = time.perf_counter() - t
        want = lrn_step(eager, x, grad)
        res["max_rel_diff_grad"] = ((got - want).abs().max() / want.abs().max()).item()
        with torch.no_grad():
            y, y_ref = compiled(x), eager(x)
        res["max_rel_diff_out"] = ((y - y_ref).abs().max() / y_ref.abs().max()).item()

        def timed(m):
            def f():
                lrn_step(m, x, grad)
                sync(device)
            return f
        t = interleaved_medians({"eager": timed(eager), "compiled": timed(compiled)}, warmup=1,
                                repeats=5 if device.type == "cpu" else 20)
        res["eager_ms"], res["compiled_ms"] = 1000 * t["eager"][0], 1000 * t["compiled"][0]
        res["compiled_speedup"] = t["eager"][0] / t["compiled"][0]
    except Exception as e:
        res["error"] = _short(e)
    print("lrn", res, flush=True)
    return res


# ----------------------------------------------------------------------------------------- the report

def _f(v, fmt="{:.1f}"):
    return fmt.format(v) if isinstance(v, (int, float)) else "-"


def _row(head, r, cells):
    """A markdown table row: the `head` cells, then cells(r), or the row's "skipped: ..." / "error: ..." note."""
    note = r.get("skipped") and f"skipped: {r['skipped']}" or r.get("error") and f"error: {r['error']}"
    return "| " + " | ".join(str(c) for c in head + ([note] if note else cells(r))) + " |"


def markdown(res):
    lines = [f"# GPU report: {res['device']}", "",
             f"torch {res['torch']}, CUDA {res.get('cuda') or '-'}, cuDNN {res.get('cudnn') or '-'}, "
             f"Python {res['python']}; {res['seconds']:.0f} s" + (" in all" if res.get("done") else " so far")
             + (" (--quick)" if res["quick"] else ""), ""]
    t = res.get("tests")
    if t:
        lines += ["| tests | passed | failed | errors | skipped | seconds |", "|---|---|---|---|---|---|",
                  f"| {' '.join(os.path.basename(f) for f in t['files'])} | {t.get('passed', '-')} | "
                  f"{t.get('failed', '-')} | {t.get('errors', '-')} | {t.get('skipped', '-')} | {t['seconds']:.0f} |", ""]
        if t.get("missing"):
            lines += [f"not found (skipped): {', '.join(t['missing'])}", ""]
        if t.get("failing"):
            lines += ["failing: " + ", ".join(t["failing"]), ""]
        if t.get("returncode") == "timeout":
            lines += ["the test run timed out", ""]
    m = res.get("model", [])
    lines += [f"Model alone, batch {res['sizes']['batch']}, {res['sizes']['steps']} timed steps (baseline: paper, "
              "fp32, NCHW, eager)", "",
              "| model | precision | channels_last | compile | images/s | vs baseline | ms/step | 1st step s | "
              "peak GPU MiB |", "|---|---|---|---|---|---|---|---|---|"]
    for r in m:
        lines.append(_row([r["arch"], "fp32" if r["amp"] == "none" else r["amp"], r["channels_last"], r["compile"]], r,
                          lambda r: [_f(r["images_per_s"]), _f(r.get("vs_baseline"), "{:.2f}x"), _f(r["step_ms"]),
                                     _f(r["first_step_s"]), _f(r.get("max_memory_mib"), "{:.0f}")]))
    f = res.get("feeds")
    if f:
        s = f["step"]
        lines += ["", f"End to end: the paper model, {'bf16' if s['amp'] == 'bf16' else 'fp32'}, "
                  f"{'channels_last' if s['channels_last'] else 'NCHW'}, {'compiled' if s['compile'] else 'eager'}, "
                  f"batch {s['batch']}; "
                  f"{f['source']['images']} JPEGs of about {f['source']['mean_size'][0]:.0f}x"
                  f"{f['source']['mean_size'][1]:.0f}; model alone "
                  + ", ".join(f"{v:.1f}" for v in f.get("model_alone_images_per_s", [])) + " images/s (before, after)",
                  "", "| feed | loader alone images/s | end-to-end images/s | / model alone | / raw store | "
                  "/ torchvision pipeline |", "|---|---|---|---|---|---|"]
        names = {"store_raw": "raw store", "train_loop": "raw store, train.py's loop (train_one_epoch)",
                 "store_jpeg": "JPEG store", "folder": "image folder", "torchvision": "torchvision pipeline"}
        for k, r in f.get("rows", {}).items():
            label = names[k] + (f" ({r['jpeg_decode']})" if "jpeg_decode" in r else "")
            lines.append(_row([label], r, lambda r: [
                _f(r.get("loader_images_per_s")), _f(r.get("end_to_end_images_per_s")),
                _f(r.get("vs_model_alone"), "{:.2f}"), _f(r.get("vs_raw_store"), "{:.2f}"),
                _f(r.get("vs_torchvision_pipeline"), "{:.2f}x")]))
    lr = res.get("lrn")
    if lr:
        lines += ["", f"LRN forward + backward {tuple(lr.get('shape', ()))}, torch.compile(fullgraph=True, "
                  f"backend={lr.get('backend')})", ""]
        if "eager_ms" in lr:
            lines += ["| graph breaks | eager ms | compiled ms | compiled speed-up | compile s | max rel. diff out "
                      "| max rel. diff grad |", "|---|---|---|---|---|---|---|",
                      f"| {lr['graph_breaks']} | {lr['eager_ms']:.2f} | {lr['compiled_ms']:.2f} | "
                      f"{lr['compiled_speedup']:.2f}x | {lr['compile_s']:.1f} | {lr['max_rel_diff_out']:.1e} | "
                      f"{lr['max_rel_diff_grad']:.1e} |"]
        else:
            lines.append(f"{lr.get('skipped') or lr.get('error')}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", required=True, help="write the results here")
    p.add_argument("--quick", action="store_true", help="fewer images and steps, one compiled configuration")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--no-tests", action="store_true", help="skip the pytest run")
    p.add_argument("--budget", type=float, default=0, help="seconds for the whole report (default 420 on CUDA, "
                   "270 on the CPU): what would not fit is skipped")
    p.add_argument("--work", default="", help="folder for generated images and stores (default: a temp dir)")
    a = p.parse_args(argv)
    name = a.device if a.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA device is available; use --device cpu")
    device = resolve_device(name) if name == "cuda" else torch.device(name)   # as train.py: cuDNN benchmark
    cuda = device.type == "cuda"
    budget = Budget(a.budget or (420 if cuda else 270))
    tuned = not cuda and tune_allocator()
    sz = sizes(cuda, a.quick)
    res = {"device": torch.cuda.get_device_name(device) if cuda else f"CPU ({os.cpu_count()} cores)",
           "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if cuda else None, "python": platform.python_version(),
           "quick": a.quick, "sizes": sz, "allocator_tuned": tuned}
    work = a.work or tempfile.mkdtemp(prefix="alexnet_gpu_report_")

    def save(final=False):
        """Write the JSON (and FILE.md) now: a report cut short by a time limit keeps what it measured."""
        res["seconds"], res["done"] = budget.elapsed(), final
        res["markdown"] = markdown(res)
        atomic_write(a.json, json.dumps(res, indent=1).encode())
        atomic_write(os.path.splitext(a.json)[0] + ".md", (res["markdown"] + "\n").encode())

    def feeds_so_far(f):
        res["feeds"] = f
        save()
    save()
    if not a.no_tests:
        res["tests"] = run_tests(min(sz["tests_timeout"], max(30, budget.seconds - 120)),
                                 log=os.path.splitext(a.json)[0] + ".tests.log")
        t = res["tests"]
        print(f"tests: {t.get('passed')} passed, {t.get('failed')} failed, {t.get('errors')} errors, "
              f"{t.get('skipped')} skipped in {t['seconds']:.0f} s", flush=True)
        save()
    try:
        data = prepare_data(sz, work)
        res["model"] = with_baseline(model_matrix(device, sz, a.quick, budget, compiled=False))
        save()
        res["feeds"] = feeds(device, sz, data, budget, on_row=feeds_so_far)
        save()
        res["lrn"] = lrn_compile(device, sz, budget)
        save()
        res["model"] = with_baseline(res["model"] + model_matrix(device, sz, a.quick, budget, compiled=True))
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    save(final=True)
    print(res["markdown"])
    print(f"wrote {a.json} and {os.path.splitext(a.json)[0]}.md")
    failed = res.get("tests", {})
    return 1 if failed.get("failed") or failed.get("errors") or failed.get("returncode") == "timeout" else 0


if __name__ == "__main__":
    run_main(main)
