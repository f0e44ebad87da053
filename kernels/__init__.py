"""ftcli's Triton kernels (installed as `ftcli.kernels`; never import this folder as `kernels`).

One module per op; each has Triton forward and backward kernels behind a
`torch.autograd.Function`, and a plain-PyTorch `<op>_reference` with the same signature:

    rms_norm         rms_norm / add_rms_norm (Llama casting, Gemma `(1 + w)` in fp32)
    rope             rope(q, k, cos, sin, position_ids=None)
    swiglu, geglu    swiglu(gate, up) / geglu(gate, up) (Gemma's tanh GELU)
    fused_linear_ce  fused_linear_cross_entropy (lm_head + CE, chunked; re-exports selected_logprobs)
    selected_logprobs selected_logprobs (per-token log p(label) of the lm_head, chunked; not an op of its own)
    lora_linear      lora_linear (base matmul + low-rank path in one Function on cuBLAS; QLoRA dequant)
    lora_mlp         lora_mlp (LoRA gate/up/down + SwiGLU/GeGLU in one Function; used by ftcli.engine.patch
                     with lora_linear and an activation op, not an op of its own)

logit_rows.py holds the chunked Triton row kernel those two share; _triton.py the shared Triton plumbing.

`OPS` is the registry `ftcli.engine.patch` reads; `triton_runnable()` says whether Triton can run here.
"""

if __name__ == __spec__.name and __name__.endswith("ftcli.kernels"):
    from ._triton import LAUNCHES, interpreting, triton_importable, triton_runnable
    from .registry import OPS, Op, op

    __all__ = ["OPS", "Op", "LAUNCHES", "interpreting", "triton_importable", "triton_runnable", "op"]
else:
    # Imported as the top-level name `kernels`: Python runs from the repository root, so this folder sits on
    # sys.path and shadows Hugging Face's `kernels` package (transformers probes for it). Hand the import over
    # to that package where it is installed; otherwise look like what this folder is there, a shadow and not
    # an installation (no __file__, no version), which transformers' probe reads as "not available".
    import importlib.machinery as _machinery
    import importlib.util as _util
    import os as _os
    import sys as _sys

    _here = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    _path = [p for p in _sys.path if _os.path.abspath(p or _os.curdir) != _here]
    _real = _machinery.PathFinder.find_spec(__name__, _path)
    if _real is not None and _real.loader is not None:
        _module = _util.module_from_spec(_real)
        _sys.modules[__name__] = _module
        _real.loader.exec_module(_module)
    else:
        __file__ = None
