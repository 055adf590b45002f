"""Arrange ImageNet's flat validation folder into class folders, from a label file.

ImageNet's 50,000 validation images ship in one folder; their classes are in a separate file. This
writes OUT/<wnid>/<image> as symbolic links to the originals (copies where the filesystem refuses
links, or with --copy), so that OUT can serve as ROOT/val.

    python -m dataloader.imagenet_val VAL_DIR LABELS OUT [--synsets LOC_synset_mapping.txt] [--copy]

LABELS formats (detected from the content):
  * Kaggle's LOC_val_solution.csv: header "ImageId,PredictionString", rows
    "ILSVRC2012_val_00008726,n02119789 255 142 454 329 ..." (the first word is the class);
  * "<file> <wnid>" per line (e.g. "ILSVRC2012_val_00000001.JPEG n01751748");
  * "<file> <integer>" per line (Caffe's val.txt): the integer indexes the sorted wnids, which
    --synsets supplies (LOC_synset_mapping.txt, one "wnid name" per line, in order).
Files are matched with or without their suffix. A labelled file that is missing is an error.
"""
import argparse
import csv
import os
import shutil

from alexnet.errors import UserError, run_main
from dataloader.images import is_image_file, read_synsets


def read_labels(path, synsets=None):
    """LABELS file -> {file stem: class name}. `synsets`: ordered wnid list for integer labels."""
    if not os.path.isfile(path):
        raise UserError(f"label file {path} does not exist")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    labels = {}
    if lines and lines[0].replace(" ", "").lower().startswith("imageid,predictionstring"):
        for row in csv.reader(lines[1:]):
            if len(row) < 2 or not row[1].split():
                raise UserError(f"{path}: cannot parse row {','.join(row)!r}; expected ImageId,PredictionString")
            labels[os.path.splitext(row[0])[0]] = row[1].split()[0]
        return labels
    for n, line in enumerate(lines, 1):
        parts = line.replace(",", " ").split()
        if len(parts) < 2:
            raise UserError(f"{path}:{n}: expected '<file> <label>', got {line!r}")
        name, label = parts[0], parts[1]
        if label.isdigit():
            if synsets is None:
                raise UserError(f"{path} has integer labels; pass --synsets LOC_synset_mapping.txt to name them")
            if int(label) >= len(synsets):
                raise UserError(f"{path}:{n}: label {label} is beyond the {len(synsets)} synsets")
            label = synsets[int(label)]
        labels[os.path.splitext(os.path.basename(name))[0]] = label
    return labels


def _place(src, dst, copy):
    """Symlink dst -> src (absolute), falling back to a copy; returns 'link' or 'copy'."""
    if os.path.lexists(dst):
        os.remove(dst)
    if not copy:
        try:
            os.symlink(os.path.abspath(src), dst)
            return "link"
        except (OSError, NotImplementedError):
            pass  # e.g. Windows without the privilege, some network filesystems
    shutil.copy2(src, dst)
    return "copy"


def arrange(val_dir, labels, out, copy=False):
    """Place every labelled image of `val_dir` into out/<class>/. Returns {'link': n, 'copy': n, 'unlabelled': n}."""
    if not os.path.isdir(val_dir):
        raise UserError(f"validation folder {val_dir} does not exist")
    files = {os.path.splitext(f)[0]: f for f in os.listdir(val_dir) if is_image_file(f)}
    missing = sorted(set(labels) - set(files))
    if missing:
        raise UserError(f"{len(missing)} labelled images are not in {val_dir}, e.g. {missing[:3]}")
    counts = {"link": 0, "copy": 0, "unlabelled": len(set(files) - set(labels))}
    for stem, cls in sorted(labels.items()):
        os.makedirs(os.path.join(out, cls), exist_ok=True)
        counts[_place(os.path.join(val_dir, files[stem]), os.path.join(out, cls, files[stem]), copy)] += 1
    return counts


def main(argv=None):
    p = argparse.ArgumentParser(description="Arrange ImageNet's flat val folder into OUT/<wnid>/<image>.")
    p.add_argument("val_dir", help="the flat folder of validation images")
    p.add_argument("labels", help="LOC_val_solution.csv, or '<file> <wnid|index>' lines")
    p.add_argument("out", help="output folder, e.g. ROOT/val")
    p.add_argument("--synsets", default="", help="LOC_synset_mapping.txt, for integer labels")
    p.add_argument("--copy", action="store_true", help="copy files instead of linking them")
    a = p.parse_args(argv)
    synsets = None
    if a.synsets:
        synsets = list(read_synsets(a.synsets))
    counts = arrange(a.val_dir, read_labels(a.labels, synsets), a.out, a.copy)
    print(f"{a.out}: {counts['link']} linked, {counts['copy']} copied, "
          f"{counts['unlabelled']} images without a label left out")


if __name__ == "__main__":
    run_main(main)
