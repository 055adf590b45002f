"""info.py: the paper's totals (60,965,224 parameters, 659,272 neurons, ~0.72 G MACs), flags, errors."""
import json
import os
import subprocess
import sys

import pytest

import info
from alexnet.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_json_totals_paper_variant_via_subprocess():
    out = subprocess.run([sys.executable, "info.py", "--json"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    report = json.loads(out)
    assert report["totals"]["params"] == 60_965_224
    assert report["totals"]["neurons"] == 659_272
    assert report["totals"]["macs"] == 724_406_816            # conv 665.8 M + fc 58.6 M (PAPER.md: ~0.72 G)
    rows = {r["name"]: r for r in report["layers"]}
    assert rows["conv1"]["output"] == [96, 55, 55] and rows["conv1"]["neurons"] == 290_400
    assert rows["conv1"]["macs"] == 96 * 55 * 55 * 3 * 11 * 11
    assert rows["conv2"]["kernel"].endswith("groups 2") and rows["conv2"]["params"] == 307_456
    assert rows["pool5"]["output"] == [256, 6, 6] and rows["fc8"]["output"] == [1000]
    assert "relu1" not in rows                                # ReLUs are folded into the conv / fc rows


def test_table_and_flags(capsys):
    assert info.main(["--variant", "owt", "--num_classes", "10", "--in_channels", "1", "--image-size", "96"]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0] == "AlexNet variant=owt, input 1x96x96, 10 classes"
    assert lines[1].split() == ["layer", "type", "kernel/stride/groups", "output", "params", "MACs", "neurons"]
    total = next(line for line in lines if line.startswith("total")).split()
    # owt at 10 classes, 1 channel: torchvision's 61,100,840 - 2 input maps of conv1 - 990 fc8 rows.
    assert int(total[1].replace(",", "")) == 61_100_840 - 2 * 64 * 121 - 990 * 4097
    assert any(line.startswith("fc8") and "4096->10" in line for line in lines)


def test_ablation_flags_change_the_counts(capsys):
    info.main(["--json", "--no-groups", "--no-lrn", "--no-overlap"])
    report = json.loads(capsys.readouterr().out)
    assert report["totals"]["params"] == 60_965_224 + 48 * 25 * 256 + 192 * 9 * (384 + 256)
    assert not any(r["type"] == "LRN" for r in report["layers"])
    assert {r["name"]: r["output"] for r in report["layers"]}["pool1"] == [96, 27, 27]   # 2/2 pooling


@pytest.mark.parametrize("argv,match", [(["--num_classes", "0"], "num_classes"),
                                        (["--in_channels", "-3"], "in_channels"),
                                        (["--variant", "vgg"], "variant"),
                                        (["--image-size", "40"], "image-size")])
def test_bad_values_are_user_errors(argv, match):
    with pytest.raises(UserError, match=match):
        info.main(argv)


def test_bad_value_is_one_line_and_exit_2():
    r = subprocess.run([sys.executable, "info.py", "--num_classes", "0"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["error: model num_classes must be a positive integer, got 0"]
