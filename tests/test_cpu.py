"""The CPU allocator setting train.py applies (alexnet/cpu.py)."""
import sys

import pytest

from alexnet.cpu import tune_allocator


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tune_allocator_is_accepted_by_glibc():
    # mallopt returns 0 for a value it refuses (e.g. a threshold above glibc's limit): then this fails
    assert tune_allocator() is True
