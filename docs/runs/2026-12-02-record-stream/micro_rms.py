"""RMSNorm fwd+bwd time on the per-head q-norm shape of Qwen3-8B (8192 tokens x 32 heads x 128) and on the
hidden shape, with row tiles (now) and one row per program (before)."""
import torch

from ftcli.kernels import rms_norm as op


def timed(x, w, reps=20):
    x = x.detach().requires_grad_()
    dy = torch.randn_like(x)
    for _ in range(3):
        op.rms_norm(x, w, 1e-6).backward(dy)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        op.rms_norm(x, w, 1e-6).backward(dy)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps * 1000


for shape in [(4, 2048, 32, 128), (4, 2048, 8, 128), (8192, 4096)]:
    x = torch.randn(*shape, device="cuda", dtype=torch.bfloat16)
    w = torch.ones(shape[-1], device="cuda", dtype=torch.bfloat16)
    tiled = timed(x, w)
    op.TILE_ELEMENTS = 1
    single = timed(x, w)
    op.TILE_ELEMENTS = 2048
    ideal = 4 * x.numel() * 2 / 4.0e12 * 1e6  # read x, dy, x again; write y, dx: ~4 passes at 4 TB/s
    print(f"rms_norm fwd+bwd {shape}: tiled {tiled:.0f} us, one row per program {single:.0f} us, "
          f"~{ideal:.0f} us at 4 TB/s")
