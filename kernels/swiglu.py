"""SwiGLU: h = silu(e) * g, with e = gate projection, g = up projection (Llama, Mistral, Qwen, Phi-3).

sigma = sigmoid(e), f = e * sigma. Backward: dg = dh * f;  de = dh * g * sigma * (1 + e * (1 - sigma)).
Precision as transformers: e upcast to fp32 for the sigmoid, f rounded to the activation dtype
before the multiply by g (HF's `act_fn(gate) * up` runs in bf16); gradients in fp32, one rounding.
Saved for backward: e and g only (f and h are recomputed). gate/up may be strided views, e.g.
the two halves of Phi-3's fused `gate_up_proj` output (`swiglu_packed` returns one [.., 2F] gradient).
"""

from __future__ import annotations

import torch

from ._triton import acc_type, kernel, next_pow2

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = tl = None


@kernel
def swiglu_fwd(E, G, H, se, sg, sh, n_cols, BLOCK: tl.constexpr, ACC: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = cols < n_cols
    e = tl.load(E + row * se + cols, mask=m, other=0.0).to(ACC)
    g = tl.load(G + row * sg + cols, mask=m, other=0.0).to(ACC)
    f = (e * tl.sigmoid(e)).to(H.dtype.element_ty).to(ACC)
    tl.store(H + row * sh + cols, (f * g).to(H.dtype.element_ty), mask=m)


@kernel
def swiglu_bwd(DH, E, G, DE, DG, sdh, se, sg, sde, sdg, n_cols, BLOCK: tl.constexpr, ACC: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = cols < n_cols
    dh = tl.load(DH + row * sdh + cols, mask=m, other=0.0).to(ACC)
    e = tl.load(E + row * se + cols, mask=m, other=0.0).to(ACC)
    g = tl.load(G + row * sg + cols, mask=m, other=0.0).to(ACC)
    sig = tl.sigmoid(e)
    f = (e * sig).to(DG.dtype.element_ty).to(ACC)
    tl.store(DG + row * sdg + cols, (dh * f).to(DG.dtype.element_ty), mask=m)
    tl.store(DE + row * sde + cols, (dh * g * sig * (1.0 + e * (1.0 - sig))).to(DE.dtype.element_ty), mask=m)


def _rows(t):
    t2 = t.reshape(-1, t.shape[-1]) if t.dim() != 2 else t
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def _grid(n_rows, n_cols):
    block = min(next_pow2(n_cols), 1024)
    return (n_rows, -(-n_cols // block)), block


def launch_fwd(fwd, e, g):
    e2, g2 = _rows(e), _rows(g)
    n_rows, n_cols = e2.shape
    h = torch.empty((n_rows, n_cols), dtype=e.dtype, device=e.device)
    grid, block = _grid(n_rows, n_cols)
    if n_rows and n_cols:
        fwd[grid](e2, g2, h, e2.stride(0), g2.stride(0), h.stride(0), n_cols, BLOCK=block, ACC=acc_type(e2))
    return h.view(*e.shape[:-1], n_cols)


def launch_bwd(bwd, dh, e, g, de, dg):
    """Writes de, dg (2-D [rows, F] views, possibly halves of one buffer)."""
    dh2, e2, g2 = _rows(dh), _rows(e), _rows(g)
    n_rows, n_cols = e2.shape
    grid, block = _grid(n_rows, n_cols)
    if n_rows and n_cols:
        bwd[grid](dh2, e2, g2, de, dg, dh2.stride(0), e2.stride(0), g2.stride(0), de.stride(0), dg.stride(0),
                  n_cols, BLOCK=block, ACC=acc_type(e2))


def make_functions(fwd, bwd):
    class GLUFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, gate, up):
            ctx.save_for_backward(gate, up)
            return launch_fwd(fwd, gate, up)

        @staticmethod
        def backward(ctx, dh):
            gate, up = ctx.saved_tensors
            n_cols = gate.shape[-1]
            de = torch.empty(gate.numel() // max(n_cols, 1), n_cols, dtype=gate.dtype, device=gate.device)
            dg = torch.empty(up.numel() // max(n_cols, 1), n_cols, dtype=up.dtype, device=up.device)
            launch_bwd(bwd, dh, gate, up, de, dg)
            return de.view(gate.shape), dg.view(up.shape)

    class PackedGLUFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            f = x.shape[-1] // 2
            ctx.save_for_backward(x)
            return launch_fwd(fwd, x[..., :f], x[..., f:])

        @staticmethod
        def backward(ctx, dh):
            (x,) = ctx.saved_tensors
            f = x.shape[-1] // 2
            dx = torch.empty(x.numel() // max(x.shape[-1], 1), 2 * f, dtype=x.dtype, device=x.device)
            launch_bwd(bwd, dh, x[..., :f], x[..., f:], dx[:, :f], dx[:, f:])
            return dx.view(x.shape)

    return GLUFunction, PackedGLUFunction


SwiGLUFunction, PackedSwiGLUFunction = make_functions(swiglu_fwd, swiglu_bwd)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Triton `silu(gate) * up`."""
    return SwiGLUFunction.apply(gate, up)


def swiglu_packed(gate_up: torch.Tensor) -> torch.Tensor:
    """Triton SwiGLU of Phi-3's fused projection: gate = first half, up = second half of the last dim."""
    return PackedSwiGLUFunction.apply(gate_up)


def swiglu_reference(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.silu(gate) * up


def swiglu_packed_reference(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return up * torch.nn.functional.silu(gate)
