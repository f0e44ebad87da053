"""RMSNorm (Llama casting and Gemma's fp32 `(1 + w)`) and a fused residual-add + RMSNorm.

Math per row of n = hidden elements: r = 1/sqrt(mean(x^2) + eps), xhat = x*r,
y = w * xhat (Llama) or y = (1 + w) * xhat (Gemma). Backward with g = dy * w':
dx = r * (g - xhat * mean(g * xhat)), dw = sum over rows of dy * xhat.

Precision, as Hugging Face does it:
- Llama mode: statistics in fp32, xhat rounded to the input dtype *before* the multiply by w;
  the output dtype is `promote(w.dtype, x.dtype)` (fp32 when PEFT's k-bit prep upcast w).
- Gemma mode: everything in fp32, `(1 + w)` included; only y is rounded, to x's dtype.
- The fused variant rounds h = x + residual to x's dtype (as the residual add in the model
  does) and normalises that rounded h.
Saved for backward: the normalised input, w and r (one fp32 per row). dw is only computed
when the weight requires grad (it is frozen under LoRA).
"""

from __future__ import annotations

import torch

from ._triton import acc_type, kernel, next_pow2, num_warps_for

try:
    import triton.language as tl
except ImportError:  # Triton is optional: the references still work
    tl = None

TILE_ELEMENTS = 2048  # a program normalises rows until its tile has about this many elements


@kernel
def rms_norm_fwd(X, RES, W, Y, HOUT, RSTD, stride_x, stride_r, stride_y, stride_h, n_rows, n_cols, eps,
                 GEMMA: tl.constexpr, HAS_RES: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr,
                 ACC: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    row_ok = rows < n_rows
    mask = row_ok[:, None] & (cols < n_cols)[None, :]
    x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(ACC)
    if HAS_RES:
        res = tl.load(RES + rows[:, None] * stride_r + cols[None, :], mask=mask, other=0.0).to(ACC)
        h = (x + res).to(HOUT.dtype.element_ty)
        tl.store(HOUT + rows[:, None] * stride_h + cols[None, :], h, mask=mask)
        x = h.to(ACC)
    w = tl.load(W + cols, mask=cols < n_cols, other=0.0).to(ACC)[None, :]
    mean_sq = tl.sum(x * x, axis=1) / n_cols
    if ACC == tl.float64:
        rstd = 1.0 / tl.sqrt(mean_sq + tl.cast(eps, ACC))
    else:
        rstd = 1.0 / tl.sqrt_rn(mean_sq + tl.cast(eps, ACC))  # IEEE-rounded, like torch.rsqrt's fp32
    tl.store(RSTD + rows, rstd, mask=row_ok)
    xhat = x * rstd[:, None]
    if GEMMA:
        y = xhat * (1.0 + w)
    else:
        y = xhat.to(X.dtype.element_ty).to(ACC) * w
    tl.store(Y + rows[:, None] * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)


@kernel
def rms_norm_bwd(DY, X, W, RSTD, DX, DRES, DWP, stride_dy, stride_x, stride_dx, stride_dres, n_rows, n_cols,
                 tiles_per_prog, GEMMA: tl.constexpr, HAS_DRES: tl.constexpr, COMPUTE_DW: tl.constexpr,
                 ROWS: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    col_ok = cols < n_cols
    w = tl.load(W + cols, mask=col_ok, other=0.0).to(ACC)
    if GEMMA:
        w = w + 1.0
    dw = tl.zeros((BLOCK,), dtype=ACC)
    for i in range(0, tiles_per_prog):
        rows = ((pid * tiles_per_prog + i) * ROWS + tl.arange(0, ROWS)).to(tl.int64)
        row_ok = rows < n_rows
        mask = row_ok[:, None] & col_ok[None, :]
        x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(ACC)
        dy = tl.load(DY + rows[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(ACC)
        rstd = tl.load(RSTD + rows, mask=row_ok, other=0.0)[:, None]
        xhat = x * rstd
        g = dy * w[None, :]
        c = (tl.sum(g * xhat, axis=1) / n_cols)[:, None]
        dx = rstd * (g - xhat * c)
        if HAS_DRES:
            dx += tl.load(DRES + rows[:, None] * stride_dres + cols[None, :], mask=mask, other=0.0).to(ACC)
        tl.store(DX + rows[:, None] * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
        if COMPUTE_DW:
            if GEMMA:
                dw += tl.sum(dy * xhat, axis=0)
            else:
                dw += tl.sum(dy * xhat.to(X.dtype.element_ty).to(ACC), axis=0)
    if COMPUTE_DW:
        tl.store(DWP + pid.to(tl.int64) * n_cols + cols, dw, mask=col_ok)


def _rows_per_tile(n_cols: int) -> int:
    """Rows one program handles: narrow rows (Qwen3's and Gemma 3's per-head q/k norms, 128-256 wide) in
    tiles of about 2048 elements, since one 256-byte row per program leaves the GPU mostly idle."""
    return max(1, min(16, TILE_ELEMENTS // next_pow2(n_cols)))


def _rows(t: torch.Tensor) -> torch.Tensor:
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def _out_dtype(x: torch.Tensor, weight: torch.Tensor, gemma: bool) -> torch.dtype:
    return x.dtype if gemma else torch.promote_types(weight.dtype, x.dtype)


def _forward(x2, res2, weight, eps, gemma):
    n_rows, n_cols = x2.shape
    y = torch.empty((n_rows, n_cols), dtype=_out_dtype(x2, weight, gemma), device=x2.device)
    h = torch.empty_like(x2) if res2 is not None else None
    rstd = torch.empty(n_rows, dtype=torch.float64 if x2.dtype == torch.float64 else torch.float32,
                       device=x2.device)
    block, tile = next_pow2(n_cols), _rows_per_tile(n_cols)
    if n_rows:
        rms_norm_fwd[(-(-n_rows // tile),)](
            x2, res2 if res2 is not None else x2, weight, y, h if h is not None else y, rstd,
            x2.stride(0), res2.stride(0) if res2 is not None else 0, y.stride(0), h.stride(0) if h is not None else 0,
            n_rows, n_cols, eps, GEMMA=gemma, HAS_RES=res2 is not None, ROWS=tile, BLOCK=block, ACC=acc_type(x2),
            num_warps=num_warps_for(block * tile))
    return y, h, rstd


def _backward(dy2, x2, weight, rstd, dres2, gemma, need_dw):
    n_rows, n_cols = x2.shape
    dx = torch.empty_like(x2)
    dy2 = dy2 if dy2.stride(-1) == 1 else dy2.contiguous()
    block, tile = next_pow2(n_cols), _rows_per_tile(n_cols)
    tiles = -(-n_rows // tile)
    # with dw, few programs that each sum their tiles' rows (then one sum over programs); without, one per tile
    progs = (min(tiles, 4 * _sm_count(x2.device)) or 1) if need_dw else max(tiles, 1)
    tiles_per_prog = -(-tiles // progs) if n_rows else 0
    dwp = torch.empty((progs, n_cols), dtype=rstd.dtype, device=x2.device) if need_dw else rstd
    if n_rows:
        rms_norm_bwd[(progs,)](
            dy2, x2, weight, rstd, dx, dres2 if dres2 is not None else dx, dwp,
            dy2.stride(0), x2.stride(0), dx.stride(0), dres2.stride(0) if dres2 is not None else 0,
            n_rows, n_cols, tiles_per_prog, GEMMA=gemma, HAS_DRES=dres2 is not None, COMPUTE_DW=need_dw,
            ROWS=tile, BLOCK=block, ACC=acc_type(x2), num_warps=num_warps_for(block * tile))
    dw = None
    if need_dw:
        dw = (dwp.sum(0) if n_rows else torch.zeros(n_cols, dtype=rstd.dtype, device=x2.device)).to(weight.dtype)
    return dx, dw


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 2


class RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps, gemma):
        x2 = _rows(x)
        y, _, rstd = _forward(x2, None, weight, eps, gemma)
        ctx.save_for_backward(x2, weight, rstd)
        ctx.gemma = gemma
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, dy):
        x2, weight, rstd = ctx.saved_tensors
        dx, dw = _backward(dy.reshape(-1, dy.shape[-1]), x2, weight, rstd, None, ctx.gemma, ctx.needs_input_grad[1])
        return dx.view(dy.shape[:-1] + (x2.shape[-1],)), dw, None, None


class AddRMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, residual, weight, eps, gemma):
        x2, r2 = _rows(x), _rows(residual.to(x.dtype))
        y, h, rstd = _forward(x2, r2, weight, eps, gemma)
        ctx.save_for_backward(h, weight, rstd)
        ctx.gemma = gemma
        ctx.set_materialize_grads(False)
        shape = x.shape[:-1]
        return y.view(*shape, y.shape[-1]), h.view(*shape, h.shape[-1])

    @staticmethod
    def backward(ctx, dy, dh):
        h2, weight, rstd = ctx.saved_tensors
        shape = h2.shape
        if dy is None:
            dx = dh.reshape(shape).to(h2.dtype)
            dw = torch.zeros_like(weight) if ctx.needs_input_grad[2] else None
        else:
            dres = None if dh is None else _rows(dh)
            dx, dw = _backward(dy.reshape(-1, dy.shape[-1]), h2, weight, rstd, dres, ctx.gemma,
                               ctx.needs_input_grad[2])
        out_shape = (dy if dy is not None else dh).shape[:-1] + (shape[-1],)
        dx = dx.view(out_shape)
        return dx, dx, dw, None, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, gemma: bool = False) -> torch.Tensor:
    """Triton RMSNorm over the last dimension. `gemma=True`: Gemma's `(1 + w)` in fp32."""
    return RMSNormFunction.apply(x, weight, float(eps), bool(gemma))


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6,
                 gemma: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton fused `h = x + residual; y = rms_norm(h)`; returns `(y, h)` (h feeds the next residual)."""
    return AddRMSNormFunction.apply(x, residual, weight, float(eps), bool(gemma))


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, gemma: bool = False) -> torch.Tensor:
    """Plain PyTorch, exactly as transformers' LlamaRMSNorm / Gemma3RMSNorm compute it."""
    if gemma:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        return (y * (1.0 + weight.float())).type_as(x)
    xf = x.to(torch.float32)
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def add_rms_norm_reference(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6,
                           gemma: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    h = x + residual.to(x.dtype)
    return rms_norm_reference(h, weight, eps, gemma), h
