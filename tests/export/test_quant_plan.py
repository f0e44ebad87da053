"""Per-tensor type plans: llama.cpp's own mixes reproduced byte for byte, overrides that take effect, exact sizes."""

import ctypes
import filecmp

import numpy as np
import pytest

pytest.importorskip("gguf")
llama_cpp = pytest.importorskip("llama_cpp")

from ftcli.export import ggml  # noqa: E402
from ftcli.export import gguf as writer  # noqa: E402
from ftcli.export import quant_plan, quantize  # noqa: E402
from helpers.exports import wide_llama  # noqa: E402


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def base(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("plan")
    path = root / "model-f16.gguf"
    writer.write_gguf(wide_llama(root / "hf", tied=request.param), path, "f16")
    return path


def _llama_cpp_default(base, out, preset):
    """llama.cpp's quantiser with nothing but the file type: the reference."""
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = quantize.QUANT_TYPES[preset][0], 2
    with quantize.capture_llama_log():
        assert llama_cpp.llama_model_quantize(str(base).encode(), str(out).encode(), ctypes.byref(params)) == 0
    return out


@pytest.mark.parametrize("preset", ["q4_k_m", "q3_k_m", "q2_k", "q4_0"])
def test_our_per_tensor_plan_is_byte_identical_to_llama_cpp(base, preset):
    ours = quantize.quantize(base, base.with_name(f"ours-{preset}.gguf"), preset)
    ref = _llama_cpp_default(base, base.with_name(f"ref-{preset}.gguf"), preset)
    assert filecmp.cmp(ours.path, ref, shallow=False)
    info = quant_plan.read_base(base)
    assert set(ours.plan) == {t.name for t in info.tensors if quant_plan.quantizable(t)}  # a type for every tensor
    assert quant_plan.planned_bytes(info, ours.plan) == ours.bytes
    if preset == "q4_k_m":  # the mix is not uniform: use_more_bits layers (2 and 3 of 4) get Q6_K
        assert ours.plan["blk.2.ffn_down.weight"] == ours.plan["blk.3.attn_v.weight"] == "Q6_K"
        assert ours.plan["blk.1.ffn_down.weight"] == ours.plan["blk.0.attn_q.weight"] == "Q4_K"


def test_overrides_reach_every_tensor_and_ggml_writes_what_llama_cpp_writes(base):
    import gguf

    info = quant_plan.read_base(base)
    plan = quant_plan.standard_plan(info, "q4_k_m")
    plan["blk.0.attn_q.weight"], plan["blk.1.ffn_up.weight"] = "Q8_0", "Q2_K"
    result = quantize.quantize(base, base.with_name("custom.gguf"), "q4_k_m", plan=plan)
    tensors = {t.name: t for t in gguf.GGUFReader(str(result.path)).tensors}
    assert {n: tensors[n].tensor_type.name for n in plan} == plan
    src = {t.name: t for t in gguf.GGUFReader(str(base)).tensors}["blk.1.ffn_up.weight"]
    w = np.asarray(src.data, dtype=np.float32)
    assert np.array_equal(ggml.quantize_rows(w, "Q2_K"), np.asarray(tensors["blk.1.ffn_up.weight"].data).ravel())
    back = ggml.fake_quantize(w, "Q2_K")
    assert back.shape == w.shape and 0 < np.abs(back - w).mean() < np.abs(w).mean()


def test_imatrix_changes_the_quantised_bytes(base):
    import gguf

    info = quant_plan.read_base(base)
    cols = {t.name: t.row_length for t in info.tensors if quant_plan.quantizable(t) and t.name != "token_embd.weight"}
    rng = np.random.default_rng(0)
    imatrix = {name: rng.uniform(0.01, 10, n).astype(np.float32) for name, n in cols.items()}
    plain = quantize.quantize(base, base.with_name("plain.gguf"), "q4_k_m")
    weighted = quantize.quantize(base, base.with_name("weighted.gguf"), "q4_k_m", imatrix=imatrix)
    assert plain.bytes == weighted.bytes and not filecmp.cmp(plain.path, weighted.path, shallow=False)
    src = {t.name: t for t in gguf.GGUFReader(str(base)).tensors}["blk.0.attn_q.weight"]
    got = {t.name: t for t in gguf.GGUFReader(str(weighted.path)).tensors}["blk.0.attn_q.weight"]
    expected = ggml.quantize_rows(np.asarray(src.data, dtype=np.float32), "Q4_K", imatrix["blk.0.attn_q.weight"])
    assert np.array_equal(expected, np.asarray(got.data).ravel())


@pytest.mark.parametrize("name", ["tiny-gemma3", "tiny-phi3", "tiny-qwen3"])
def test_byte_identical_on_the_builtins_with_their_narrow_rows(tmp_path, name):
    """Rows of 72-192 values: llama.cpp's shape fallbacks (Q5_0, Q8_0, F16) and phi3's fused attn_qkv follow the plan."""
    from helpers.exports import builtin_dir

    base = writer.write_gguf(builtin_dir(name), tmp_path / "f16.gguf", "f16").path
    for preset in ("q4_k_m", "q8_0"):
        ours = quantize.quantize(base, tmp_path / f"ours-{preset}.gguf", preset)
        ref = _llama_cpp_default(base, tmp_path / f"ref-{preset}.gguf", preset)
        assert filecmp.cmp(ours.path, ref, shallow=False), (name, preset)
