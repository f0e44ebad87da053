"""The kernel plumbing: the op registry, when Triton can run, the interpreter's bf16 rounding, float64 exactness."""

from __future__ import annotations

import pytest
import torch
from helpers.numerics import launched, rel_err

from ftcli import kernels
from ftcli.kernels import _triton

pytestmark = pytest.mark.usefixtures("interpret")


def test_registry_lists_every_op_with_triton_and_reference():
    assert set(kernels.OPS) == {"rms_norm", "rope", "swiglu", "geglu", "fused_linear_ce", "lora_linear"}
    for name, op in kernels.OPS.items():
        assert callable(op.triton) and callable(op.reference), name
        assert op.triton.__name__ + "_reference" == op.reference.__name__, name


def test_triton_runnable_follows_interpreter_env(monkeypatch):
    assert kernels.triton_runnable("cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not kernels.triton_runnable("cpu")
    assert kernels.triton_runnable() == torch.cuda.is_available()


def test_interpreter_rounds_bf16_like_the_gpu():
    """The interpreter shim: fp32 -> bf16 rounds to nearest even (stock Triton 3.x truncates)."""
    import triton
    import triton.language as tl

    def cast_kernel(X, Y, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = offs < n
        tl.store(Y + offs, tl.load(X + offs, mask=m).to(tl.bfloat16), mask=m)

    k = _triton.kernel(cast_kernel)
    x = torch.randn(5000) * 3
    y = torch.empty(5000, dtype=torch.bfloat16)
    with launched("cast_kernel"):
        k[(triton.cdiv(5000, 1024),)](x, y, 5000, BLOCK=1024)
    assert torch.equal(y, x.to(torch.bfloat16))


def test_float64_inputs_are_computed_in_float64():
    """The exact-GA tests run whole models in float64: every kernel must then stay exact to fp64 rounding."""
    from ftcli.kernels import fused_linear_ce, geglu, lora_linear, rms_norm, rope, swiglu

    g = torch.Generator().manual_seed(0)
    f64 = dict(dtype=torch.float64)
    x = torch.randn(3, 5, 40, generator=g, **f64)
    w = torch.randn(40, generator=g, **f64)
    tight = 1e-12
    truth = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * (1 + w)  # (HF itself casts to fp32)
    assert rel_err(rms_norm.rms_norm(x, w, 1e-6, gemma=True), truth) < tight
    assert rel_err(swiglu.swiglu(x, x.flip(-1)), swiglu.swiglu_reference(x, x.flip(-1))) < tight
    assert rel_err(geglu.geglu(x, x.flip(-1)), geglu.geglu_reference(x, x.flip(-1))) < tight
    q, k = torch.randn(2, 4, 5, 16, generator=g, **f64), torch.randn(2, 2, 5, 16, generator=g, **f64)
    cos, sin = torch.randn(2, 5, 16, generator=g, **f64), torch.randn(2, 5, 16, generator=g, **f64)
    assert rel_err(rope.rope(q, k, cos, sin)[1], rope.rope_reference(q, k, cos, sin)[1]) < tight
    W, A, B = (torch.randn(s, generator=g, **f64) for s in ((30, 40), (8, 40), (30, 8)))
    assert rel_err(lora_linear.lora_linear(x, W, A, B, 2.0), lora_linear.lora_linear_reference(x, W, A, B, 2.0)) < tight
    labels = torch.randint(0, 30, (3, 5), generator=g)
    got = fused_linear_ce.selected_logprobs(x, W, labels)["log_probs"]
    assert rel_err(got, fused_linear_ce.selected_logprobs_reference(x, W, labels)["log_probs"]) < tight


def _python_at_repo_root(code: str, env_extra: dict | None = None) -> str:
    """Run `python -c code` with the repository root as the working directory (so it is first on sys.path)."""
    import os
    import subprocess
    import sys

    from helpers.runs import REPO

    env = {**os.environ, **(env_extra or {})}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_the_repository_root_does_not_shadow_hugging_faces_kernels_package():
    """From the repository root our kernels/ folder is what `find_spec("kernels")` finds (the shadow exists),
    yet transformers' probe answers as it does elsewhere (Hugging Face's package installed or not; newer
    transformers depend on it) and `import kernels` never loads our kernels as top-level `kernels`."""
    import importlib.machinery
    import sys
    from pathlib import Path

    from helpers.runs import REPO

    elsewhere = [p for p in sys.path if p and Path(p).resolve() != REPO.resolve()]
    installed = importlib.machinery.PathFinder.find_spec("kernels", elsewhere) is not None
    out = _python_at_repo_root(
        "import importlib.util, os; spec = importlib.util.find_spec('kernels');"
        "print(os.path.dirname(spec.origin) == os.path.abspath('kernels'));"
        "from transformers.utils.import_utils import is_kernels_available; print(is_kernels_available());"
        "import kernels; print(hasattr(kernels, 'OPS'))")
    assert out.splitlines() == ["True", str(installed), "False"]


def test_the_real_kernels_package_wins_where_it_is_installed(tmp_path):
    """With a package named `kernels` installed elsewhere on the path, importing `kernels` from the repository
    root gives that package, not our folder."""
    fake = tmp_path / "site" / "kernels"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("__version__ = '0.9.0'\nHUGGING_FACE = True\n")
    out = _python_at_repo_root("import kernels; print(kernels.HUGGING_FACE, kernels.__version__, hasattr(kernels, 'OPS'))",
                               {"PYTHONPATH": str(tmp_path / "site")})
    assert out == "True 0.9.0 False"
