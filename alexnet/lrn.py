"""Local response normalization exactly as in Sec. 3.3 of the paper, with a fast analytic backward.

    b[i] = a[i] / (k + alpha * sum_{j=i-n/2}^{i+n/2} a[j]^2) ^ beta      (sum clipped to 0..C-1)

Unlike ``torch.nn.LocalResponseNorm`` (and Caffe), alpha is NOT divided by n: the paper's
``alpha=1e-4`` equals ``torch.nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)``.

Why a custom autograd function: torch's module builds the window sum with pad + avg_pool3d and lets
autograd record about ten element-wise ops over full tensors; on CPU its forward + backward took ~40%
of the paper model's training step. Here the window sum is n-1 fused, in-place ``addcmul_`` on channel
slices, the work runs over cache-sized batch chunks with reused buffers, only D^-beta is saved (D is
recomputed from the input chunk, which is cheaper than reading it back from memory), and the backward
is the closed form

    dL/da[j] = g[j] * D[j]^-beta  -  2 * alpha * beta * a[j] * sum_{i : j in window(i)} g[i] * b[i] / D[i]

(benchmarks/bench_model.py measures the speed-up; tests/test_lrn.py checks it against the formula).
"""
import torch
from torch import nn
from torch.autograd.function import once_differentiable


def _window(size, channels):
    """Channel offsets of the window: channel i sums channels i-before .. i+after (clipped to 0..C-1).

    Symmetric for odd sizes (the paper's n/2 each side); for even sizes the extra channel is on the
    lower side, torch's convention, so the two can be compared.
    """
    before, after = size // 2, (size - 1) // 2
    return min(before, channels - 1), min(after, channels - 1)


# CPU only: elements per batch chunk. A chunk's temporaries (~4 x 4 MB) stay in the L3 cache and the
# work buffers are reused, so the dozen element-wise passes cost little DRAM traffic and no page faults
# (measured 1.7x faster than whole-tensor passes at 1 thread; see benchmarks/bench_model.py).
_CHUNK_ELEMENTS = 1 << 20


def _denominator(x, before, after, alpha, k, out):
    """out <- D = k + alpha * sum_window x^2 for a chunk x (n, C, ...); fused addcmul on channel slices."""
    torch.mul(x, x, out=out).mul_(alpha).add_(k)
    for s in range(1, before + 1):
        out[:, s:].addcmul_(x[:, :-s], x[:, :-s], value=alpha)      # channel i gets a[i - s]^2
    for s in range(1, after + 1):
        out[:, :-s].addcmul_(x[:, s:], x[:, s:], value=alpha)       # channel i gets a[i + s]^2
    return out


def _chunks(t):
    """[(start, end)] batch ranges of t (N, ...): cache-sized on CPU, one range on GPUs (fewer launches)."""
    n = t.shape[0]
    step = n if t.device.type != "cpu" else max(1, _CHUNK_ELEMENTS // max(1, t[0].numel()))
    return [(i, min(n, i + step)) for i in range(0, n, step)]


def _compute_dtype(t):
    # Half types are computed in float32: in bf16, k + alpha * S would round the LRN term away.
    return torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else t.dtype


class _LRNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, size, alpha, beta, k):
        before, after = _window(size, a.shape[1])
        dtype = _compute_dtype(a)
        out = torch.empty_like(a)
        chunks = _chunks(a)
        work = torch.empty_like(a[chunks[0][0]:chunks[0][1]], dtype=dtype) if chunks else None
        # D^-beta is saved for backward (in the compute dtype); without grad only a chunk buffer.
        keep = ctx.needs_input_grad[0]
        dpow = torch.empty_like(a, dtype=dtype) if keep else torch.empty_like(work)
        for i, j in chunks:
            x = a[i:j].to(dtype)
            d = _denominator(x, before, after, alpha, k, work[: j - i])
            p = dpow[i:j] if keep else dpow[: j - i]
            torch.pow(d, -beta, out=p)                                   # D^-beta
            out[i:j] = x * p if dtype != a.dtype else torch.mul(x, p, out=out[i:j])  # b = a D^-beta
        if keep:
            ctx.save_for_backward(a, dpow)
        ctx.params = (size, alpha, beta, k)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        # dL/da[j] = g[j] D[j]^-beta - 2 alpha beta a[j] sum_{i: j in window(i)} g[i] b[i] / D[i]
        a, dpow = ctx.saved_tensors
        size, alpha, beta, k = ctx.params
        before, after = _window(size, a.shape[1])
        dtype, c = dpow.dtype, -2.0 * alpha * beta
        grad = torch.empty_like(a)
        chunks = _chunks(a)
        work_d = torch.empty_like(dpow[chunks[0][0]:chunks[0][1]])
        work_t = torch.empty_like(work_d)
        for i, j in chunks:
            x, g = a[i:j].to(dtype), grad_out[i:j].to(dtype)
            d = _denominator(x, before, after, alpha, k, work_d[: j - i])   # recomputed: in cache
            gx = g * dpow[i:j] if dtype != a.dtype else torch.mul(g, dpow[i:j], out=grad[i:j])
            t = torch.mul(gx, x, out=work_t[: j - i]).div_(d)              # g * b / D
            gx.addcmul_(x, t, value=c)
            # i's window holds j = i - s  <=>  i = j + s: channel j gathers t[j + s], and vice versa.
            for s in range(1, before + 1):
                gx[:, :-s].addcmul_(x[:, :-s], t[:, s:], value=c)
            for s in range(1, after + 1):
                gx[:, s:].addcmul_(x[:, s:], t[:, :-s], value=c)
            if dtype != a.dtype:
                grad[i:j] = gx
        return grad, None, None, None, None


def local_response_norm(a, size=5, alpha=1e-4, beta=0.75, k=2.0):
    """Functional form of :class:`LocalResponseNorm`. a: (N, C, *) -> (N, C, *)."""
    if a.dim() < 3:
        raise ValueError(f"local_response_norm expects (N, C, ...) input, got shape {tuple(a.shape)}")
    if a.numel() == 0:
        return a * 1.0
    return _LRNFunction.apply(a, size, alpha, beta, k)


class LocalResponseNorm(nn.Module):
    """The paper's local response normalization (Sec. 3.3): alpha is NOT divided by ``size``.

    Args:
        size: n, the number of adjacent channels summed over (5 in the paper).
        alpha, beta, k: the paper's 1e-4, 0.75, 2.
    Shape: (N, C, H, W) -> (N, C, H, W); any memory format (channels_last is kept); float16 and
    bfloat16 inputs are computed in float32 and returned in their own dtype.
    Equal to ``torch.nn.LocalResponseNorm(size, alpha * size, beta, k)``, but faster (see module doc).
    """

    def __init__(self, size=5, alpha=1e-4, beta=0.75, k=2.0):
        super().__init__()
        if size < 1:
            raise ValueError(f"LocalResponseNorm size must be >= 1, got {size}")
        self.size, self.alpha, self.beta, self.k = int(size), float(alpha), float(beta), float(k)

    def forward(self, x):
        return local_response_norm(x, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self):
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"
