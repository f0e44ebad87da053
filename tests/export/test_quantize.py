"""Quantisation through llama.cpp: every supported type from one f16 file, fallbacks reported."""

import pytest

pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")

from ftcli.errors import BadInput  # noqa: E402
from ftcli.export import gguf as writer  # noqa: E402
from ftcli.export import quantize  # noqa: E402
from ftcli.export.verify import open_gguf  # noqa: E402
from helpers.exports import builtin_dir  # noqa: E402


def test_quant_names_are_checked_against_the_supported_list():
    assert quantize.parse_quants("Q4_K_M, q8_0,q4_k_m") == ["q4_k_m", "q8_0"]
    for name in ("f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0"):
        assert quantize.parse_quants([name]) == [name]
    with pytest.raises(BadInput) as err:
        quantize.parse_quants("q4_k_m,q3_k_xl")
    assert "q3_k_xl" in err.value.message and "q4_k_m" in err.value.hint and err.value.exit_code == 2


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("quant") / "model-f16.gguf"
    writer.write_gguf(builtin_dir("tiny-llama3"), path, "f16")
    return path


def test_every_type_from_one_f16_file_loads_and_reports_its_fallbacks(base):
    expected_type = {"bf16": "BF16", "q8_0": "Q8_0", "q6_k": "Q6_K", "q5_k_m": "Q5_K", "q4_k_m": "Q4_K",
                     "q4_0": "Q4_0"}
    for name, ggml_type in expected_type.items():
        result = quantize.quantize(base, base.with_name(f"model-{name}.gguf"), name)
        assert result.path.is_file() and result.bytes < base.stat().st_size or name == "bf16"
        assert result.tensor_types.get("F32")  # norms stay F32
        if ggml_type in ("Q6_K", "Q5_K", "Q4_K"):
            # tiny-llama3 rows are 96 wide: k-quants need 256, so llama.cpp falls back per tensor
            assert result.fallbacks, name
            assert all(f["row_length"] % 256 for f in result.fallbacks)
            assert {f["wanted"] for f in result.fallbacks} & {ggml_type, "Q6_K"}
            assert "blk.0.attn_q.weight" in {f["tensor"] for f in result.fallbacks}
        else:
            assert ggml_type in result.tensor_types, (name, result.tensor_types)
            assert not [f for f in result.fallbacks if f["tensor"] != "token_embd.weight"], result.fallbacks
        with open_gguf(result.path, logits_all=False) as llm:  # llama.cpp loads it
            assert llm.n_vocab() > 0


def test_requantising_a_quantised_file_is_refused(base):
    q8 = quantize.quantize(base, base.with_name("again-q8_0.gguf"), "q8_0")
    with pytest.raises(quantize.QuantizeFailed, match="requantiz") as err:
        quantize.quantize(q8.path, base.with_name("bad.gguf"), "q4_k_m")
    assert err.value.exit_code == 1
    assert not list(base.parent.glob(".bad.gguf.tmp*")) and not base.with_name("bad.gguf").exists()
