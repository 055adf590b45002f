"""JPEG stores: the whole-batch decoder (`dataloader.store.JpegDecoder`). On CUDA it decodes with nvjpeg
(tests/test_cuda.py compares its pixels); here, without CUDA or after an nvjpeg failure, it must fall back
to the CPU decode the store has always used, pixel for pixel."""
import warnings

import numpy as np
import pytest
import torch

from conftest import DEMO_SIZE, tiny_data_cfg
from dataloader.prepare import prepare
from dataloader.store import JpegDecoder, StoreSplit, build_store_loaders


@pytest.fixture(scope="module")
def jpeg_store(demo_root, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("jpeg_store") / "jpeg")
    prepare(demo_root, out, workers=0, fmt="jpeg", size=DEMO_SIZE, quality=90, progress=False)
    return out


def _blobs_and_pixels(store, n=12):
    split = StoreSplit(store, "val")
    idx = np.arange(n)
    want = torch.from_numpy(split.read(idx)).permute(0, 3, 1, 2)     # the CPU path: (B, 3, R, R)
    return split.blobs(idx), want


def test_without_cuda_the_cpu_decode_is_used_and_unchanged(jpeg_store, demo_root):
    blobs, want = _blobs_and_pixels(jpeg_store)
    assert all(b.dtype == torch.uint8 and b.dim() == 1 for b in blobs)
    if not torch.cuda.is_available():
        assert not JpegDecoder("cuda").gpu                               # no CUDA: no nvjpeg attempt
    dec = JpegDecoder("cpu")
    assert not dec.gpu
    assert torch.equal(dec(blobs), want)
    loaders = build_store_loaders(tiny_data_cfg(demo_root, store=jpeg_store), batch_size=8, seed=0)
    assert loaders.train.decoder is None and loaders.val.decoder is None   # the CPU loader reads as before


def test_a_decoder_failure_warns_once_and_falls_back(jpeg_store, monkeypatch):
    blobs, want = _blobs_and_pixels(jpeg_store)
    dec = JpegDecoder("cpu", gpu=True)
    calls = []

    def broken(blobs):
        calls.append(len(blobs))
        raise RuntimeError("decode_jpegs_cuda: torchvision not compiled with nvJPEG support")

    monkeypatch.setattr(dec, "_decode_torchvision", broken)
    with pytest.warns(RuntimeWarning, match="GPU JPEG decoding failed .*nvJPEG"):
        got = dec(blobs)
    assert torch.equal(got, want) and not dec.gpu
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                   # no second warning ...
        assert torch.equal(dec(blobs), want)
    assert calls == [len(blobs)]                                         # ... and no second attempt


def test_the_batched_torchvision_path_matches_within_decoder_tolerance(jpeg_store):
    # The list call nvjpeg gets on CUDA, run by torchvision's CPU decoder: same shapes, same pixels up to
    # the decoders' rounding (the CUDA test uses the same bounds).
    blobs, want = _blobs_and_pixels(jpeg_store)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)              # torchvision 0.29: "use TorchCodec"
        got = JpegDecoder("cpu", gpu=True)(blobs)
    assert got.shape == want.shape and got.dtype == torch.uint8
    diff = (got.int() - want.int()).abs()
    assert diff.float().mean() < 1.5 and diff.max() < 40
