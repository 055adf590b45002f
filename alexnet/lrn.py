"""Local response normalization exactly as in Sec. 3.3 of the paper, with a fast analytic backward.

    b[i] = a[i] / (k + alpha * sum_{j=i-n/2}^{i+n/2} a[j]^2) ^ beta      (sum clipped to 0..C-1)

Unlike ``torch.nn.LocalResponseNorm`` (and Caffe), alpha is NOT divided by n: the paper's
``alpha=1e-4`` equals ``torch.nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)``.

Why a custom autograd function: torch's module builds the window sum with pad + avg_pool3d and lets
autograd record about ten element-wise ops over full tensors; on CPU its forward + backward took ~40%
of the paper model's training step. Here the window sum is n-1 fused, in-place ``addcmul_`` on channel
slices (each a contiguous block in NCHW), D and D^-beta are computed once and saved, and the backward
is the closed form (about 15 streaming passes over the tensor in all)

    dL/da[j] = g[j] * D[j]^-beta  -  2 * alpha * beta * a[j] * sum_{i : j in window(i)} g[i] * b[i] / D[i]

(benchmarks/bench_model.py measures the speed-up; tests/test_lrn.py checks it against the formula).
Under torch.compile the same formula is written out of place (`_lrn_traced`) and left to the compiler.
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


def _compute_dtype(t):
    # Half types are computed in float32: in bf16, k + alpha * S would round the LRN term away.
    return torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else t.dtype


class _LRNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, size, alpha, beta, k):
        x = a.to(_compute_dtype(a))
        before, after = _window(size, x.shape[1])
        # D = k + alpha * sum_window a^2, with fused in-place addcmul on channel slices (in NCHW
        # each shifted slice is one contiguous block): 1 + (n - 1) streaming passes.
        d = torch.addcmul(torch.full((), k, dtype=x.dtype, device=x.device), x, x, value=alpha)
        for s in range(1, before + 1):
            d[:, s:].addcmul_(x[:, :-s], x[:, :-s], value=alpha)     # channel i gets a[i - s]^2
        for s in range(1, after + 1):
            d[:, :-s].addcmul_(x[:, s:], x[:, s:], value=alpha)      # channel i gets a[i + s]^2
        dpow = d.pow(-beta)                                          # D^-beta, reused by backward
        out = x * dpow                                               # b = a * D^-beta
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(x, d, dpow)
        ctx.params = (size, alpha, beta)
        return out.to(a.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        # dL/da[j] = g[j] D[j]^-beta - 2 alpha beta a[j] sum_{i: j in window(i)} g[i] b[i] / D[i]
        x, d, dpow = ctx.saved_tensors
        size, alpha, beta = ctx.params
        before, after = _window(size, x.shape[1])
        grad = grad_out.to(x.dtype) * dpow                           # the direct term g D^-beta
        t = (grad * x).div_(d)                                       # g * b / D
        c = -2.0 * alpha * beta
        grad.addcmul_(x, t, value=c)
        # i's window holds j = i - s  <=>  i = j + s: channel j gathers t[j + s], and vice versa.
        for s in range(1, before + 1):
            grad[:, :-s].addcmul_(x[:, :-s], t[:, s:], value=c)
        for s in range(1, after + 1):
            grad[:, s:].addcmul_(x[:, s:], t[:, :-s], value=c)
        return grad.to(grad_out.dtype), None, None, None, None


def _lrn_traced(a, size, alpha, beta, k):
    """The same formula out of place, for torch.compile: the window sum as a sum of shifted slices of the
    channel-padded squares; autograd derives the backward and the compiler fuses each direction into a
    few kernels (the hand-written backward's in-place slice updates are what eager mode needs, not it)."""
    x = a.to(_compute_dtype(a))
    before, after = _window(size, x.shape[1])
    c = x.shape[1]
    sq = torch.nn.functional.pad((x * x).flatten(2), (0, 0, before, after))    # (N, C + n - 1, *)
    s = sum(sq[:, i:i + c] for i in range(before + after + 1)).view_as(x)
    return (x * (k + alpha * s).pow(-beta)).to(a.dtype)


def local_response_norm(a, size=5, alpha=1e-4, beta=0.75, k=2.0):
    """Functional form of :class:`LocalResponseNorm`. a: (N, C, *) -> (N, C, *).

    Eager: `_LRNFunction` (in-place window sums, closed-form backward). Under torch.compile: `_lrn_traced`.
    """
    if a.dim() < 3:
        raise ValueError(f"local_response_norm expects (N, C, ...) input, got shape {tuple(a.shape)}")
    if a.numel() == 0:
        return a * 1.0
    if torch.compiler.is_compiling():
        return _lrn_traced(a, size, alpha, beta, k)
    return _LRNFunction.apply(a, size, alpha, beta, k)


class LocalResponseNorm(nn.Module):
    """The paper's local response normalization (Sec. 3.3): alpha is NOT divided by ``size``.

    Args:
        size: n, the number of adjacent channels summed over (5 in the paper).
        alpha, beta, k: the paper's 1e-4, 0.75, 2.
    Shape: (N, C, H, W) -> (N, C, H, W) (any (N, C, ...) works), in any memory format (channels_last
    is kept); float16 and bfloat16 inputs are computed in float32 and returned in their own dtype.
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
