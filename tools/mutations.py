"""Mutation check: put deliberate bugs into a copy of the code, one at a time, and see a test fail.

    python tools/mutations.py [--only NAME,NAME] [--list] [--keep] [--control]

Each mutation replaces one exact piece of source text in a temporary copy of the repository (runs/,
data/ and .git are left out), runs the tests that should notice, and reports "caught" (the tests failed)
or "NOT CAUGHT". A mutation whose source text is no longer found is reported as "stale" (the code moved:
update the list). Exit code 1 if any mutation was not caught or is stale. Slow (minutes): for developers
before they stop, not for CI. --control first runs the selected mutations' tests on an unmutated copy: they
must pass there, or a "caught" would mean nothing (e.g. a test that needs runs/ or data/).
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name: (file, exact source text, replacement, tests that must fail)
MUTATIONS = {
    "sgd-no-momentum": (
        "alexnet/engine.py", "lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)\n\n\nclass Stop",
        "lr=o.lr, momentum=0.0, weight_decay=o.weight_decay)\n\n\nclass Stop", ["tests/test_optim.py"]),
    "sgd-no-weight-decay": (
        "alexnet/engine.py", "lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)\n\n\nclass Stop",
        "lr=o.lr, momentum=o.momentum, weight_decay=0.0)\n\n\nclass Stop", ["tests/test_optim.py"]),
    "paper-update-lr-outside-velocity": (
        "alexnet/engine.py", "v.mul_(m).add_(p, alpha=-wd * lr).add_(p.grad, alpha=-lr)\n                p.add_(v)",
        "v.mul_(m).add_(p, alpha=-wd).add_(p.grad)\n                p.add_(v, alpha=lr)", ["tests/test_optim.py"]),
    "bias-lr-factor-ignored": (
        "alexnet/schedule.py", 'group["lr"] = lr * group.get("lr_factor", 1.0)', 'group["lr"] = lr',
        ["tests/test_optim.py"]),
    "lr-never-set": (
        "alexnet/engine.py", "            set_lr(optimizer, lr_at(epoch + totals.batches / steps))",
        "            pass", ["tests/test_train_schedule.py::test_every_step_lr_with_warmup_and_step_drop_across_a_mid_epoch_resume"]),
    "schedule-not-restored": (
        "alexnet/checkpoint.py", '        self.schedule.load_state_dict(ckpt["scheduler"])\n', "",
        ["tests/test_train_schedule.py::test_plateau_drop_and_its_state_survive_resumes"]),
    "resume-drops-running-totals": (
        "alexnet/checkpoint.py", 'self.totals = EpochTotals(**{**this_rank(progress["totals"], rank), "batches": self.batch})',
        'self.totals = EpochTotals(batches=self.batch)',
        ["tests/test_train.py::test_resume_mid_epoch_from_periodic_save_is_exact"]),
    "resume-without-rng": (
        "alexnet/checkpoint.py", '        set_rng_state(this_rank(ckpt["rng"], rank))\n', "",
        ["tests/test_train.py::test_resume_at_epoch_boundary_is_exact"]),
    "resume-without-optimizer-state": (
        "alexnet/checkpoint.py", '        self.optimizer.load_state_dict(ckpt["optimizer"])\n', "",
        ["tests/test_train.py::test_resume_at_epoch_boundary_is_exact"]),
    "eval-totals-not-summed-over-ranks": (
        "alexnet/engine.py", "    totals = sums.read().all_reduce(amp.device)\n", "    totals = sums.read()\n",
        ["tests/test_distributed.py::test_two_ranks_log_the_val_metrics_of_every_val_image"]),
    "lrn-half-computed-in-half": (
        "alexnet/lrn.py", "return torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else t.dtype",
        "return t.dtype", ["tests/test_fast_paths.py::test_lrn_half_types_are_float32_rounded_bit_exact"]),
    "lrn-alpha-divided-by-n": (
        "alexnet/lrn.py", "return _LRNFunction.apply(a, size, alpha, beta, k)",
        "return _LRNFunction.apply(a, size, alpha / size, beta, k)", ["tests/test_lrn.py"]),
    "same-augmentation-every-epoch": (
        "dataloader/samplers.py", "yield i, sample_seed(self.seed, self.epoch, i)", "yield i, sample_seed(self.seed, 0, i)",
        ["tests/test_seeds.py::test_folder_loader_new_augmentation_every_batch_and_epoch"]),
    "store-one-seed-for-every-batch": (
        "dataloader/store.py", "images = ld.augment(images, seed)", "images = ld.augment(images, 0)",
        ["tests/test_seeds.py::test_store_loader_new_augmentation_every_batch_and_epoch"]),
    "folder-one-seed-for-every-batch": (
        "dataloader/folder.py", "return self.augment(images, int(seeds[0])), targets", "return self.augment(images, 0), targets",
        ["tests/test_seeds.py::test_folder_loader_new_augmentation_every_batch_and_epoch"]),
    "mean-image-centre-for-every-crop": (
        "dataloader/augment.py", "        r = self.mean_image.shape[-1]\n",
        "        r = self.mean_image.shape[-1]\n        top = left = torch.full_like(top, center_offset(r, crop))\n",
        ["tests/test_augment.py::test_train_patches_equal_per_image_pipeline_for_the_same_draws"]),
    "pca-draws-from-the-crop-stream": (
        "dataloader/augment.py", 'generator=g["color"]', 'generator=g["crop"]',
        ["tests/test_augment.py::test_streams_are_independent"]),
    "pixel-scale-ignored": (
        "dataloader/augment.py", "        if self.scale != 1.0:\n            x.mul_(self.scale)\n", "",
        ["tests/test_augment.py"]),
    "pca-sqrt-eigenvalues": (
        "dataloader/augment.py", "return (alpha * eigval) @ eigvec.T", "return (alpha * eigval.sqrt()) @ eigvec.T",
        ["tests/test_augment.py"]),
    "ten-views-without-mirrors": (
        "dataloader/augment.py", "[(t, e - l, True) for t, l in five]", "[(t, l, False) for t, l in five]",
        ["tests/test_augment.py"]),
    "ten-views-average-logits": (
        "alexnet/engine.py", "return logits.float().softmax(1).view(b, v, -1).mean(1)",
        "return logits.float().view(b, v, -1).mean(1).softmax(1)", ["tests/test_evaluate.py", "tests/test_metrics.py"]),
    "ensemble-averages-logits": (
        "alexnet/engine.py", "probs = torch.stack([m(x).float().softmax(1) for m in self.members]).mean(0)",
        "probs = torch.stack([m(x).float() for m in self.members]).mean(0).softmax(1)",
        ["tests/test_evaluate.py::test_ensemble_averages_the_members_probabilities_not_their_logits"]),
    "top5-counted-as-top1": (
        "alexnet/metrics.py", "return torch.stack([(others_ge < k).sum() for k in ks])",
        "return torch.stack([(others_ge < 1).sum() for k in ks])", ["tests/test_metrics.py", "tests/test_evaluate.py"]),
    "nan-guard-off": (
        "alexnet/engine.py", "[1.0 if sums.first_bad_batch else 0.0,", "[0.0,",
        ["tests/test_train.py::test_nan_loss_stops_with_step_and_never_best", "tests/test_engine_sync.py"]),
    "save-not-atomic": (       # write straight into the file: a failed or killed write leaves half a file
        "alexnet/files.py", "        with open(tmp, \"wb\") as f:", "        tmp = path\n        with open(tmp, \"wb\") as f:",
        ["tests/test_checkpoint.py"]),
    "sampler-ignores-rank": (
        "dataloader/samplers.py", "[self.rank::self.world_size]", "[0::self.world_size]",
        ["tests/test_data_loaders.py"]),
    "no-run-directory-lock": (
        "alexnet/tracking.py", "fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)", "pass",
        ["tests/test_faults.py::test_lock_of_a_dead_process_is_taken_over"]),
    "dead-writer-temp-files-kept": (   # every kill -9 during a save would leak a checkpoint-sized file
        "alexnet/tracking.py", "                os.remove(os.path.join(out, name))", "                pass",
        ["tests/test_faults.py::test_lock_of_a_dead_process_is_taken_over"]),
    "save-error-not-a-user-error": (   # a full disk would end the run with a traceback
        "alexnet/checkpoint.py", "        except OSError as e:   # e.g. ENOSPC", "        except MemoryError as e:   # e.g. ENOSPC",
        ["tests/test_faults.py::test_full_disk_during_a_save_keeps_the_previous_last_pt"]),
    "amp-bf16-autocast-off": (
        "alexnet/engine.py", "dtype=self.dtype or torch.bfloat16, enabled=self.dtype is not None)",
        "dtype=self.dtype or torch.bfloat16, enabled=False)",
        ["tests/test_fast_paths.py::test_bf16_autocast_training_on_cpu_is_close_to_float32"]),
    "train-compile-ignored": (
        "train.py", "        train_model = torch.compile(train_model)\n", "        pass\n",
        ["tests/test_fast_paths.py::test_train_compile_true_runs_compiled_and_saves_plain_weights"]),
    "device-totals-drop-the-loss": (   # the epoch's train loss would be 0 (sums kept on the device)
        "alexnet/metrics.py", "self.sums += torch.cat([loss_sum[None],", "self.sums += torch.cat([0 * loss_sum[None],",
        ["tests/test_engine_sync.py"]),
    "compiled-lrn-window-one-short": (   # what torch.compile runs would differ from the eager LRN
        "alexnet/lrn.py", "for i in range(before + after + 1))", "for i in range(before + after))",
        ["tests/test_lrn.py"]),
    "last-batch-not-read-back": (   # the epoch's totals would miss the batches after the last multiple
        "alexnet/engine.py", "if not (totals.batches == steps or", "if not (False or",
        ["tests/test_engine_sync.py"]),
}


def copy_repo(dst):
    """The working tree without runs/, data/, .git and caches."""
    ignore = shutil.ignore_patterns(".git", "runs", "data", "__pycache__", ".pytest_cache", "*.pyc")
    shutil.copytree(REPO, dst, ignore=ignore)


def apply(tree, path, old, new):
    """Replace `old` by `new` in tree/path; False when `old` is not there (a stale mutation)."""
    full = os.path.join(tree, path)
    with open(full) as f:
        text = f.read()
    if old not in text:
        return False
    with open(full, "w") as f:
        f.write(text.replace(old, new, 1))
    return True


def check(name, spec, keep):
    path, old, new, tests = spec
    tree = tempfile.mkdtemp(prefix=f"mutation_{name}_")
    try:
        copy_repo(os.path.join(tree, "repo"))
        repo = os.path.join(tree, "repo")
        if old == new or not apply(repo, path, old, new):
            return "stale", 0.0
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                              cwd=repo, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode in (4, 5):        # usage error / no tests: the listed tests do not exist
            return "stale", seconds
        return ("caught" if done.returncode != 0 else "NOT CAUGHT"), seconds
    finally:
        if keep:
            print(f"kept {tree}", flush=True)
        else:
            shutil.rmtree(tree, ignore_errors=True)


def control(names):
    """Run the tests of `names` on an unmutated copy: (passed, seconds, last lines of the output)."""
    tests = list(dict.fromkeys(t for n in names for t in MUTATIONS[n][3]))
    tree = tempfile.mkdtemp(prefix="mutation_control_")
    try:
        copy_repo(os.path.join(tree, "repo"))
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                              cwd=os.path.join(tree, "repo"), capture_output=True, text=True)
        return done.returncode == 0, time.perf_counter() - start, done.stdout[-2000:]
    finally:
        shutil.rmtree(tree, ignore_errors=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default="", help="comma-separated mutation names")
    p.add_argument("--list", action="store_true", help="list the mutations and exit")
    p.add_argument("--keep", action="store_true", help="keep the temporary copies (their paths are printed)")
    p.add_argument("--control", action="store_true", help="first check that the tests pass without a mutation")
    a = p.parse_args(argv)
    names = a.only.split(",") if a.only else list(MUTATIONS)
    unknown = [n for n in names if n not in MUTATIONS]
    if unknown:
        print(f"error: unknown mutations {unknown}; see --list", file=sys.stderr)
        return 2
    if a.list:
        for n in names:
            print(f"{n}: {MUTATIONS[n][0]} -> {' '.join(MUTATIONS[n][3])}")
        return 0
    if a.control:
        passed, seconds, tail = control(names)
        print(f"{'control':10s} the listed tests {'pass' if passed else 'FAIL'} without a mutation  ({seconds:.0f} s)",
              flush=True)
        if not passed:
            print(tail)
            return 1
    bad = 0
    for n in names:
        result, seconds = check(n, MUTATIONS[n], a.keep)
        bad += result != "caught"
        print(f"{result:10s} {n}  ({seconds:.0f} s)", flush=True)
    print(f"{len(names) - bad} of {len(names)} mutations caught")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
