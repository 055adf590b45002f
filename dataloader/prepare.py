"""Prepare once: an ImageFolder tree -> a compact store of R x R images (the paper's Sec. 2 preprocessing).

    python -m dataloader.prepare ROOT OUT [--workers N] [--format raw|jpeg] [--size 256] [--quality 90]

Every image of ROOT/train and ROOT/val is decoded once, its shorter side scaled to R and its central
R x R patch cut out (`dataloader.images.load_square`, the same pixels as the ImageFolder
path), in parallel over CPU cores. OUT then holds:

    index.json            format, size, class names, image counts; written last: its presence means
                          "complete and verified"
    <split>.u8            raw: uint8 (N, R, R, 3), memory-mapped by dataloader.store (196 KB per image at 256)
    <split>.jpg           jpeg: the N images JPEG-encoded back to back; <split>_offsets.npy int64 (N+1,)
    <split>_labels.npy    int64 (N,) class index; -1 marks a source file skipped as unreadable
    <split>_files.txt     source path of each image, relative to ROOT
    stats.pt              the training stats (dataloader.stats format) from the same pass: no second decode

Resumable: work proceeds in chunks; finished chunks (with a CRC32 of their bytes and their stats sums)
are recorded in OUT/.work/progress.pt, so an interrupted run continues where it stopped. At the end the
store is verified: image counts, the CRC32 of every chunk re-read from disk, and a few images re-decoded
from the source and compared with the stored pixels.
"""
import argparse
import hashlib
import json
import multiprocessing
import os
import random
import shutil
import time
import zlib
from io import BytesIO

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from alexnet.errors import UserError, run_main
from alexnet.files import atomic_write
from dataloader.images import BadImageError, load_square, scan_root
from dataloader.stats import save_stats, stats_from_sums
from dataloader.store import StoreSplit

SPLITS = ("train", "val")
VERSION = 1


def load_resized(path, size):
    """The R x R uint8 array (R, R, 3) of the image at `path`, exactly as the ImageFolder path sees it."""
    return load_square(path, size, "RGB").permute(1, 2, 0).numpy()


def _worker_pool(workers):
    """A fork pool whose workers run torch single-threaded: OpenMP's thread pool does not survive fork,
    so a worker's first parallel torch op (e.g. load_square's copy of a 256 x 256 image) would hang
    once the parent has run one (torch.zeros(256, 256, 3) below). DataLoader workers do the same."""
    return multiprocessing.get_context("fork").Pool(workers, initializer=torch.set_num_threads, initargs=(1,))


# ---------------------------------------------------------------- one chunk (runs in a worker process)

def _do_chunk(task):
    """Resize, store and measure the images of one chunk; returns its record (CRC, lengths, stats sums)."""
    out, split, fmt, size = task["out"], task["split"], task["format"], task["size"]
    n = len(task["paths"])
    pixel_sum = np.zeros((size, size, 3), np.int64)       # exact integer sums for the mean image
    gram = np.zeros((3, 3), np.float64)                     # sum of x x^T over [0,1] pixels
    bad, blobs, crc = [], [], 0
    arr = np.zeros((n, size, size, 3), np.uint8)
    for i, path in enumerate(task["paths"]):
        try:
            arr[i] = load_resized(path, size)
        except BadImageError as e:
            if not task["skip_bad"]:
                raise
            bad.append((task["start"] + i, str(e)))         # slot stays zero, label becomes -1
            continue
        if task["stats"]:
            pixel_sum += arr[i]
            p = arr[i].reshape(-1, 3).astype(np.float64) / 255.0
            gram += p.T @ p
        if fmt == "jpeg":
            buf = BytesIO()
            Image.fromarray(arr[i]).save(buf, format="JPEG", quality=task["quality"])
            blobs.append(buf.getvalue())
    if fmt == "raw":
        mm = np.memmap(os.path.join(out, f"{split}.u8"), np.uint8, "r+", shape=(task["total"], size, size, 3))
        mm[task["start"]:task["start"] + n] = arr
        mm.flush()
        del mm
        crc = zlib.crc32(arr)
        lengths = []
    else:
        bad_idx = {b - task["start"] for b, _ in bad}
        it = iter(blobs)
        blobs = [b"" if i in bad_idx else next(it) for i in range(n)]   # a skipped image stores 0 bytes
        data = b"".join(blobs)
        atomic_write(os.path.join(out, ".work", f"{split}_{task['chunk']:06d}.jpg"), data)
        crc = zlib.crc32(data)
        lengths = [len(b) for b in blobs]
    return {"split": split, "chunk": task["chunk"], "n": n, "crc": crc, "lengths": lengths, "bad": bad,
            "pixel_sum": pixel_sum, "gram": gram}   # numpy: torch tensors would travel by fd sharing


def _crc_of_range(args):
    path, offset, length = args
    with open(path, "rb") as f:
        f.seek(offset)
        return zlib.crc32(f.read(length))


# ---------------------------------------------------------------- plan, progress, verification

def _plan(root, size, fmt, quality, chunk_size):
    """What to write: per split the (path, label) list; a fingerprint decides whether a resume may continue."""
    class_names, train, val = scan_root(root)
    samples = {"train": train, "val": val}
    h = hashlib.sha1()
    for split in SPLITS:
        for p, label in samples[split]:
            h.update(f"{split}\t{os.path.relpath(p, root)}\t{label}\n".encode())
    key = {"version": VERSION, "format": fmt, "size": size, "quality": quality if fmt == "jpeg" else None,
           "chunk_size": chunk_size, "files_sha1": h.hexdigest(),
           "counts": {s: len(samples[s]) for s in SPLITS}}
    return class_names, samples, key


def _chunks(n, chunk_size):
    return [(c, s, min(n, s + chunk_size)) for c, s in enumerate(range(0, n, chunk_size))]


def _load_progress(work, key):
    path = os.path.join(work, "progress.pt")
    if not os.path.isfile(path):
        return None
    try:
        prog = torch.load(path, weights_only=True)
    except Exception:
        return None  # a torn write cannot happen (atomic replace); anything else: start over
    if prog.get("key") != json.dumps(key, sort_keys=True):
        return "mismatch"
    return prog


def _save_progress(work, prog):
    atomic_write(os.path.join(work, "progress.pt"), lambda f: torch.save(prog, f))


def _finish_split(out, split, fmt, n, chunks, records):
    """jpeg: concatenate the chunk files into <split>.jpg and write the offsets. Returns [(crc, offset, len)]."""
    ranges = []
    if fmt == "raw":
        per = os.path.getsize(os.path.join(out, f"{split}.u8")) // n
        for c, s, e in chunks:
            ranges.append((records[c]["crc"], s * per, (e - s) * per))
        return ranges
    lengths = np.concatenate([np.asarray(records[c]["lengths"], np.int64) for c, _, _ in chunks])
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])

    def concatenate(f):
        for c, _, _ in chunks:
            with open(os.path.join(out, ".work", f"{split}_{c:06d}.jpg"), "rb") as src:
                shutil.copyfileobj(src, f)

    atomic_write(os.path.join(out, f"{split}.jpg"), concatenate)
    ranges += [(records[c]["crc"], int(offsets[s]), int(offsets[e] - offsets[s])) for c, s, e in chunks]
    np.save(os.path.join(out, f"{split}_offsets.npy"), offsets)
    return ranges


def _check_crcs(out, split, fmt, ranges, pool):
    """Re-read every chunk of a split from disk and compare its CRC32 with the one recorded when written."""
    path = os.path.join(out, f"{split}.u8" if fmt == "raw" else f"{split}.jpg")
    args = [(path, off, length) for _, off, length in ranges]
    crcs = list(pool.imap(_crc_of_range, args)) if pool is not None else [_crc_of_range(a) for a in args]
    for c, ((want, _, _), got) in enumerate(zip(ranges, crcs)):
        if want != got:
            raise UserError(f"store {path}: chunk {c} does not match what was written (CRC32 {got:08x} != "
                            f"{want:08x}); the disk may be failing: delete {out} and prepare again")
    return path


def verify(out, split, fmt, size, samples, ranges, pool, spot=8, seed=0):
    """Check the written bytes (CRC32 of every chunk, re-read from disk) and spot-check decoded pixels.

    Raises UserError naming the split and chunk (or image) that does not match.
    """
    path = _check_crcs(out, split, fmt, ranges, pool)
    labels = np.load(os.path.join(out, f"{split}_labels.npy"))
    reader = StoreSplit(out, split)   # the reader the training run will use
    rng = random.Random(seed)
    good = [i for i in range(len(samples)) if labels[i] >= 0]
    for i in rng.sample(good, min(spot, len(good))):
        want = load_resized(samples[i][0], size)
        got = reader.read([i])[0]
        # raw: the same bytes; jpeg: lossy, a mean error above 5 levels means a wrong image
        err = np.abs(got.astype(np.int16) - want).mean()
        if (fmt == "raw" and err != 0) or err > 12:
            raise UserError(f"store {path}: image {i} ({samples[i][0]}) differs from its source "
                            f"(mean abs error {err:.2f}); delete {out} and prepare again")
    return len(ranges)


# ---------------------------------------------------------------- the command

def prepare(root, out, *, workers=None, fmt="raw", size=256, quality=90, chunk_size=256, skip_bad=None,
            progress=True, max_chunks=None):
    """Build (or resume, or confirm) the store of ROOT at OUT. Returns the index dict, or None if stopped early.

    skip_bad: None: an unreadable source file stops the run naming it; N: skip and count unreadable files,
    stopping once more than N were skipped. max_chunks: process at most this many chunks in this call,
    then stop (the next call resumes).
    """
    if fmt not in ("raw", "jpeg"):
        raise UserError(f"--format must be raw or jpeg, got {fmt!r}")
    if size < 1 or chunk_size < 1 or not 1 <= quality <= 100:
        raise UserError(f"--size and --chunk-size must be positive and --quality in 1..100 "
                        f"(got {size}, {chunk_size}, {quality})")
    workers = os.cpu_count() if workers is None else workers
    class_names, samples, key = _plan(root, size, fmt, quality, chunk_size)
    index_path = os.path.join(out, "index.json")
    if os.path.isfile(index_path):
        with open(index_path) as f:
            index = json.load(f)
        same = {k: v for k, v in index.get("key", {}).items() if k != "chunk_size"} == \
            {k: v for k, v in key.items() if k != "chunk_size"}
        if same:
            if progress:
                print(f"{out} already holds this store, complete and verified; nothing to do")
            return index
        raise UserError(f"{out} holds a store of other images or settings; delete it or choose another OUT")
    work = os.path.join(out, ".work")
    os.makedirs(work, exist_ok=True)
    prog = _load_progress(work, key)
    if prog == "mismatch":
        raise UserError(f"{out} holds an unfinished store of other images or settings; delete {out} "
                        "or choose another OUT")
    if prog is None:  # a fresh start: allocate the raw files (sparse) and the record
        for split in SPLITS:
            if fmt == "raw":
                with open(os.path.join(out, f"{split}.u8"), "wb") as f:
                    f.truncate(len(samples[split]) * size * size * 3)
        prog = {"key": json.dumps(key, sort_keys=True), "records": {s: {} for s in SPLITS},
                "pixel_sum": torch.zeros(size, size, 3, dtype=torch.int64),   # train stats sums so far
                "gram": torch.zeros(3, 3, dtype=torch.float64)}
    tasks = []
    for split in SPLITS:
        n = len(samples[split])
        for c, s, e in _chunks(n, chunk_size):
            if c not in prog["records"][split]:
                tasks.append({"out": out, "split": split, "format": fmt, "size": size, "quality": quality,
                              "chunk": c, "start": s, "total": n, "paths": [p for p, _ in samples[split][s:e]],
                              "stats": split == "train", "skip_bad": skip_bad is not None})
    stopped = max_chunks is not None and len(tasks) > max_chunks
    tasks = tasks[:max_chunks] if max_chunks is not None else tasks
    total = sum(len(samples[s]) for s in SPLITS)
    todo = sum(len(t["paths"]) for t in tasks)
    pool = _worker_pool(workers) if workers > 1 else None
    try:
        results = pool.imap_unordered(_do_chunk, tasks) if pool is not None else map(_do_chunk, tasks)
        bar = tqdm(total=total, initial=total - todo, unit="img", desc=f"prepare {out}", disable=not progress,
                   dynamic_ncols=True)
        last_save = time.monotonic()
        for rec in results:
            if rec["split"] == "train":
                prog["pixel_sum"] += torch.from_numpy(rec["pixel_sum"])
                prog["gram"] += torch.from_numpy(rec["gram"])
            del rec["pixel_sum"], rec["gram"]   # small records: the progress file is rewritten often
            prog["records"][rec["split"]][rec["chunk"]] = rec
            bar.update(rec["n"])
            nbad = sum(len(r["bad"]) for recs in prog["records"].values() for r in recs.values())
            if nbad > (skip_bad or 0):
                raise UserError(f"more than {skip_bad or 0} unreadable images under {root}; "
                                "fix or remove them (see the errors above), or raise --max-bad-images")
            if time.monotonic() - last_save > 5:  # the record of finished chunks: what a resume keeps
                _save_progress(work, prog)
                last_save = time.monotonic()
        bar.close()
        _save_progress(work, prog)
        if stopped:
            return None
        index = _finalize(root, out, fmt, size, (class_names, samples, key), prog, chunk_size, pool, progress)
    finally:
        if pool is not None:
            pool.terminate()
    shutil.rmtree(work, ignore_errors=True)
    return index


def _finalize(root, out, fmt, size, plan, prog, chunk_size, pool, progress):
    """All chunks are written: labels, file lists, stats; verify; then index.json (the completion mark).

    plan: (class_names, samples per split, fingerprint key) from _plan."""
    class_names, samples, key = plan
    counts, skipped, checksums = {}, {}, {}
    for split in SPLITS:
        n = len(samples[split])
        chunks = _chunks(n, chunk_size)
        records = prog["records"][split]
        missing = [c for c, _, _ in chunks if c not in records]
        if missing:
            raise UserError(f"store {out}: chunks {missing[:5]} of {split} were never written; rerun to resume")
        labels = np.array([label for _, label in samples[split]], np.int64)
        bad = [b for r in records.values() for b in r["bad"]]
        for i, msg in bad:
            labels[i] = -1
            print(f"skipped: {msg}")
        np.save(os.path.join(out, f"{split}_labels.npy"), labels)
        with open(os.path.join(out, f"{split}_files.txt"), "w") as f:
            f.writelines(os.path.relpath(p, root) + "\n" for p, _ in samples[split])
        ranges = _finish_split(out, split, fmt, n, chunks, records)
        verify(out, split, fmt, size, samples[split], ranges, pool)
        checksums[split] = ranges
        counts[split], skipped[split] = int((labels >= 0).sum()), len(bad)
        if counts[split] == 0:
            raise UserError(f"no readable images in {root}/{split}")
    pixel_sum = prog["pixel_sum"].permute(2, 0, 1).contiguous()        # (R, R, 3) -> (3, R, R)
    save_stats(stats_from_sums(pixel_sum, prog["gram"], counts["train"]), os.path.join(out, "stats.pt"))
    with open(os.path.join(out, "checksums.json"), "w") as f:
        json.dump(checksums, f)   # [CRC32, byte offset, length] per chunk, for verify_store
    index = {"version": VERSION, "format": fmt, "size": size, "class_names": class_names,
             "num_images": counts, "skipped": skipped, "stats": "stats.pt", "key": key}
    atomic_write(os.path.join(out, "index.json"), json.dumps(index, indent=1))
    if progress:
        print(f"wrote {out}: {fmt}, {size}x{size}, train {counts['train']} / val {counts['val']} images, "
              f"{len(class_names)} classes; verified (counts, CRC32 of every chunk, re-decoded spot checks)")
    return index


def verify_store(out, workers=0):
    """Re-check a finished store's bytes against the CRC32s recorded when it was written. UserError on damage."""
    index_path, sums_path = os.path.join(out, "index.json"), os.path.join(out, "checksums.json")
    if not (os.path.isfile(index_path) and os.path.isfile(sums_path)):
        raise UserError(f"{out} is not a finished store (no index.json / checksums.json)")
    with open(index_path) as f:
        fmt = json.load(f)["format"]
    with open(sums_path) as f:
        sums = json.load(f)
    pool = _worker_pool(workers) if workers > 1 else None
    try:
        for split in SPLITS:
            _check_crcs(out, split, fmt, sums[split], pool)
    finally:
        if pool is not None:
            pool.terminate()
    return sum(len(v) for v in sums.values())


def main(argv=None):
    p = argparse.ArgumentParser(description="Convert ROOT/{train,val}/<class>/* into a prepared R x R store.")
    p.add_argument("root", help="data root holding train/<class>/* and val/<class>/*")
    p.add_argument("out", help="folder to write the store to (resumes an interrupted run)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--format", default="raw", choices=("raw", "jpeg"),
                   help="raw: uint8 memory map, fastest to read; jpeg: about 10x smaller (docs/performance.md)")
    p.add_argument("--size", type=int, default=256, help="R: shorter side, then central square (Sec. 2)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality (--format jpeg)")
    p.add_argument("--chunk-size", type=int, default=256, help="images per resumable unit of work")
    p.add_argument("--bad-images", default="error", choices=("error", "skip"),
                   help="unreadable source files: stop naming the file, or skip and count them")
    p.add_argument("--max-bad-images", type=int, default=100)
    p.add_argument("--verify", action="store_true", help="only re-check the CRC32s of the finished store OUT")
    a = p.parse_args(argv)
    if a.verify:
        n = verify_store(a.out, os.cpu_count() if a.workers is None else a.workers)
        print(f"{a.out}: {n} chunks verified")
        return
    prepare(a.root, a.out, workers=a.workers, fmt=a.format, size=a.size, quality=a.quality,
            chunk_size=a.chunk_size, skip_bad=a.max_bad_images if a.bad_images == "skip" else None)


if __name__ == "__main__":
    run_main(main)
