"""Sliding-window attention on the Gemma-3-4B shape (B=4, T=2048, 8/4 heads, D=256, window 1024):
which SDPA backend runs it with the boolean mask transformers builds, and at what cost, against plain
causal attention and flex_attention with a block mask. Prints ms per fwd and fwd+bwd and max errors."""
import contextlib
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

torch.manual_seed(0)
B, T, HQ, HKV, D = (int(x) for x in (sys.argv[1:6] if len(sys.argv) > 5 else (4, 2048, 8, 4, 256)))
W = int(sys.argv[6]) if len(sys.argv) > 6 else 1024
dev, dt = "cuda", torch.bfloat16
q = torch.randn(B, HQ, T, D, device=dev, dtype=dt, requires_grad=True)
k = torch.randn(B, HKV, T, D, device=dev, dtype=dt, requires_grad=True)
v = torch.randn(B, HKV, T, D, device=dev, dtype=dt, requires_grad=True)
do = torch.randn(B, HQ, T, D, device=dev, dtype=dt)
i = torch.arange(T, device=dev)
mask = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < W)   # True = attend
mask4 = mask[None, None].expand(B, 1, T, T)
rep = HQ // HKV


def timed(fn, n=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(True), torch.cuda.Event(True)
    a.record()
    for _ in range(n):
        fn()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / n


def run(name, attend, backends=None):
    def fwd():
        with torch.no_grad():
            return attend()

    def fwd_bwd():
        q.grad = k.grad = v.grad = None
        attend().backward(do)
    ctx = sdpa_kernel(backends) if backends else contextlib.nullcontext()
    try:
        with ctx:
            out = attend()
            out.backward(do)
            grads = [t.grad.clone() for t in (q, k, v)]
            f, fb = timed(fwd), timed(fwd_bwd)
        errs = [(out - ref_out).abs().max().item()] + [(g - r).abs().max().item() for g, r in zip(grads, ref_grads)]
        print(f"{name:<44} fwd {f:7.3f} ms  fwd+bwd {fb:7.3f} ms  max err out {errs[0]:.3g} dq {errs[1]:.3g} dk {errs[2]:.3g} dv {errs[3]:.3g}", flush=True)
    except Exception as e:  # noqa: BLE001
        print(f"{name:<44} unavailable: {str(e).splitlines()[0][:150]}", flush=True)
    q.grad = k.grad = v.grad = None


# reference: fp32 math with the mask
qf, kf, vf = (t.detach().float().requires_grad_() for t in (q, k, v))
ref = F.scaled_dot_product_attention(qf, kf.repeat_interleave(rep, 1), vf.repeat_interleave(rep, 1), attn_mask=mask)
ref.backward(do.float())
ref_out, ref_grads = ref.detach(), [t.grad for t in (qf, kf, vf)]

expand = lambda t: t.repeat_interleave(rep, 1)  # what transformers does when it passes a mask (no enable_gqa)
run("masked, default backend (transformers today)", lambda: F.scaled_dot_product_attention(q, expand(k), expand(v), attn_mask=mask4))
for be in (SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
    run(f"masked, {be.name}", lambda: F.scaled_dot_product_attention(q, expand(k), expand(v), attn_mask=mask4), [be])
    run(f"masked 2-D mask, gqa, {be.name}", lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True), [be])
for be in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION):
    run(f"causal (no window; speed floor), {be.name}", lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True), [be])
try:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def band(b, h, qi, ki):
        return (ki <= qi) & (qi - ki < W)
    block = create_block_mask(band, None, None, T, T, device=dev)
    flex = torch.compile(flex_attention, dynamic=False)
    run("flex_attention (compiled, block mask)", lambda: flex(q, k, v, block_mask=block, enable_gqa=True))
except Exception as e:  # noqa: BLE001
    print("flex_attention unavailable:", e)
print("torch", torch.__version__, "cudnn", torch.backends.cudnn.version(), torch.cuda.get_device_name())
