"""Arranging ImageNet's flat val folder into class folders from the label file."""
import os

import pytest
from PIL import Image

from alexnet.errors import UserError
from dataloader import imagenet_val as V
from dataloader.images import scan_root


def _flat_val(tmp_path, n=4):
    val = tmp_path / "flat"
    val.mkdir()
    for i in range(1, n + 1):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(val / f"ILSVRC2012_val_{i:08d}.JPEG")
    (val / ".DS_Store").write_bytes(b"x")
    return val


def test_loc_val_solution_csv_gives_linked_class_folders(tmp_path):
    val = _flat_val(tmp_path)
    csv = tmp_path / "LOC_val_solution.csv"
    csv.write_text("ImageId,PredictionString\n"
                   "ILSVRC2012_val_00000002,n02 10 10 50 50 n02 1 1 5 5\n"
                   "ILSVRC2012_val_00000001,n01 1 2 3 4\n"
                   "ILSVRC2012_val_00000003,n02 1 2 3 4\n")
    counts = V.arrange(str(val), V.read_labels(str(csv)), str(tmp_path / "root" / "val"))
    assert counts == {"link": 3, "copy": 0, "unlabelled": 1}
    link = tmp_path / "root" / "val" / "n02" / "ILSVRC2012_val_00000002.JPEG"
    assert os.path.islink(link) and os.path.realpath(link) == str(val / "ILSVRC2012_val_00000002.JPEG")
    assert sorted(os.listdir(tmp_path / "root" / "val")) == ["n01", "n02"]
    assert sorted(os.listdir(tmp_path / "root" / "val" / "n02")) == [
        "ILSVRC2012_val_00000002.JPEG", "ILSVRC2012_val_00000003.JPEG"]
    # the linked folder reads as a split (train copied from it for the layout check)
    os.symlink(tmp_path / "root" / "val", tmp_path / "root" / "train")
    classes, train, valset = scan_root(str(tmp_path / "root"))
    assert classes == ["n01", "n02"] and len(valset) == 3


def test_integer_and_wnid_label_lines_and_copy_fallback(tmp_path, monkeypatch, capsys):
    val = _flat_val(tmp_path)
    (tmp_path / "syn.txt").write_text("n01 tench, Tinca tinca\nn02 goldfish\n")
    (tmp_path / "val.txt").write_text("ILSVRC2012_val_00000001.JPEG 1\nILSVRC2012_val_00000002.JPEG 0\n")
    with pytest.raises(UserError, match="--synsets"):
        V.read_labels(str(tmp_path / "val.txt"))
    monkeypatch.setattr(V.os, "symlink", lambda *a: (_ for _ in ()).throw(OSError("no links here")))
    with pytest.raises(SystemExit) as e:
        V.run_main(V.main, [str(val), str(tmp_path / "val.txt"), str(tmp_path / "out"), "--synsets",
                            str(tmp_path / "syn.txt")])
    assert e.value.code == 0 and "0 linked, 2 copied, 2 images without a label" in capsys.readouterr().out
    copied = tmp_path / "out" / "n02" / "ILSVRC2012_val_00000001.JPEG"
    assert copied.is_file() and not os.path.islink(copied)
    assert V.read_labels(str(_write(tmp_path / "w.txt", "a.JPEG n05\nb n06\n"))) == {"a": "n05", "b": "n06"}


def _write(path, text):
    path.write_text(text)
    return path


def test_missing_labelled_image_is_an_error(tmp_path):
    val = _flat_val(tmp_path, n=1)
    labels = {"ILSVRC2012_val_00000001": "n01", "ILSVRC2012_val_00000009": "n01"}
    with pytest.raises(UserError, match="1 labelled images are not in .*ILSVRC2012_val_00000009"):
        V.arrange(str(val), labels, str(tmp_path / "out"))
    with pytest.raises(UserError, match="does not exist"):
        V.read_labels(str(tmp_path / "none.csv"))
