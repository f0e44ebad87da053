"""GeGLU with the tanh-approximate GELU Gemma uses (`gelu_pytorch_tanh`): h = gelu_tanh(e) * g.

u = sqrt(2/pi) * (e + 0.044715 e^3);  gelu_tanh(e) = e/2 * (1 + tanh u) = e * sigmoid(2u)
(tanh u = 2 sigmoid(2u) - 1: one stable sigmoid serves f and f').
f'(e) = s + 2 e s (1 - s) u',  s = sigmoid(2u),  u' = sqrt(2/pi) (1 + 3 * 0.044715 e^2).
Backward: dg = dh * f;  de = dh * g * f'(e). Precision, saved tensors and strided inputs as in
swiglu.py (f rounded to the activation dtype before the product, as transformers does).
"""

from __future__ import annotations

import torch

from ._triton import kernel
from .swiglu import make_functions

try:
    import triton.language as tl
except ImportError:
    tl = None


@kernel
def geglu_fwd(E, G, H, se, sg, sh, n_cols, BLOCK: tl.constexpr, ACC: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = cols < n_cols
    e = tl.load(E + row * se + cols, mask=m, other=0.0).to(ACC)
    g = tl.load(G + row * sg + cols, mask=m, other=0.0).to(ACC)
    u = 0.7978845608028654 * (e + 0.044715 * e * e * e)
    # sigmoid saturates long before |2u| = 80; the clamp only keeps exp() finite
    f = (e * tl.sigmoid(tl.minimum(tl.maximum(2.0 * u, -80.0), 80.0))).to(H.dtype.element_ty).to(ACC)
    tl.store(H + row * sh + cols, (f * g).to(H.dtype.element_ty), mask=m)


@kernel
def geglu_bwd(DH, E, G, DE, DG, sdh, se, sg, sde, sdg, n_cols, BLOCK: tl.constexpr, ACC: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = cols < n_cols
    dh = tl.load(DH + row * sdh + cols, mask=m, other=0.0).to(ACC)
    e = tl.load(E + row * se + cols, mask=m, other=0.0).to(ACC)
    g = tl.load(G + row * sg + cols, mask=m, other=0.0).to(ACC)
    u = 0.7978845608028654 * (e + 0.044715 * e * e * e)
    s = tl.sigmoid(tl.minimum(tl.maximum(2.0 * u, -80.0), 80.0))
    f = (e * s).to(DG.dtype.element_ty).to(ACC)
    du = 0.7978845608028654 * (1.0 + 0.134145 * e * e)
    df = s + 2.0 * e * s * (1.0 - s) * du
    tl.store(DG + row * sdg + cols, (dh * f).to(DG.dtype.element_ty), mask=m)
    tl.store(DE + row * sde + cols, (dh * g * df).to(DE.dtype.element_ty), mask=m)


GeGLUFunction, PackedGeGLUFunction = make_functions(geglu_fwd, geglu_bwd)


def geglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Triton `gelu_tanh(gate) * up` (Gemma's MLP activation)."""
    return GeGLUFunction.apply(gate, up)


def geglu_reference(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.gelu(gate, approximate="tanh") * up
