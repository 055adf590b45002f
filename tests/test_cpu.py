"""The CPU allocator setting train.py applies (alexnet/cpu.py)."""
import sys

import pytest

from alexnet.cpu import tune_allocator


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tune_allocator_is_accepted_by_glibc():
    # mallopt returns 0 for a value it refuses (e.g. a threshold above glibc's limit): then this fails
    assert tune_allocator() is True


def test_resolve_device_tunes_the_allocator_on_the_cpu(monkeypatch):
    import torch

    import alexnet.distributed as D
    calls = []
    monkeypatch.setattr(D, "tune_allocator", lambda *a, **k: calls.append(1) or True)
    assert D.resolve_device("cpu") == torch.device("cpu") and calls == [1]
