"""The importance matrix: llama.cpp's semantics on the merged model, its GGUF file, and the calibration rows."""

import json

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from ftcli.errors import BadInput  # noqa: E402
from ftcli.export import calibration, imatrix  # noqa: E402
from helpers.exports import SAMPLE_TEXTS as TEXTS  # noqa: E402
from helpers.exports import builtin_dir, template_of  # noqa: E402


@pytest.mark.parametrize("name", ["tiny-llama3", "tiny-phi3"])
def test_imatrix_equals_a_direct_numpy_computation(name):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = builtin_dir(name)
    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = [tok(t)["input_ids"] for t in TEXTS]
    got = imatrix.compute(model_dir, rows, source="texts", progress=lambda *a: None)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    q_in, head_in = [], []
    with torch.no_grad():
        for ids in rows:
            ids = torch.tensor([ids])
            q_in.append(model.model.layers[0].input_layernorm(model.model.embed_tokens(ids))[0].numpy())
            head_in.append(model.model(ids).last_hidden_state[0].numpy())
    q_in, head_in = np.concatenate(q_in).astype(np.float64), np.concatenate(head_in).astype(np.float64)
    first = "blk.0.attn_qkv.weight" if name == "tiny-phi3" else "blk.0.attn_q.weight"
    head = "output.weight" if name == "tiny-phi3" else "token_embd.weight"   # tiny-llama3 ties its embeddings
    means = got.means()
    np.testing.assert_allclose(means[first], (q_in ** 2).mean(0), rtol=1e-5)
    np.testing.assert_allclose(means[head], (head_in ** 2).mean(0), rtol=1e-5)
    assert got.counts[first] == sum(len(r) for r in rows)
    n_linear = sum(1 for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert len(got.sums) == n_linear


def test_the_file_is_llama_cpps_imatrix_format_and_reads_back(tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(builtin_dir("tiny-qwen3"))
    got = imatrix.compute(builtin_dir("tiny-qwen3"), [tok(t)["input_ids"] for t in TEXTS], source="texts.jsonl",
                          progress=lambda *a: None)
    path = imatrix.save(got, tmp_path / imatrix.FILE)
    reader = gguf.GGUFReader(str(path))
    field = reader.fields["general.type"]
    assert bytes(field.parts[field.data[0]]).decode() == "imatrix"
    tensors = {t.name: t for t in reader.tensors}
    sums = tensors["blk.1.ffn_down.weight.in_sum2"]
    assert list(sums.shape) == [256, 1] and sums.tensor_type.name == "F32"   # ne0 = columns, ne1 = matrices
    assert list(tensors["blk.1.ffn_down.weight.counts"].shape) == [1, 1]
    back = imatrix.load(path)
    assert back.datasets == ["texts.jsonl"] and back.chunks == len(TEXTS) and set(back.sums) == set(got.sums)
    for name in got.sums:
        np.testing.assert_allclose(back.means()[name], got.means()[name], rtol=1e-6)


def test_calibration_and_heldout_rows_are_disjoint_and_capped(tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(builtin_dir("tiny-llama3"))
    path = tmp_path / "cal.jsonl"
    lines = [{"text": f"row {i}: " + TEXTS[i % 4]} for i in range(40)]
    lines += [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": f"Hello {i}"}]}
              for i in range(10)]
    path.write_text("\n".join(json.dumps(x) for x in lines), encoding="utf-8")
    rows = calibration.load_rows(str(path), None, tok, template_of("tiny-llama3"), calibration_tokens=200,
                                 heldout_tokens=100)
    assert 100 <= rows.heldout_tokens < 100 + calibration.MAX_ROW_TOKENS and rows.calibration_tokens <= 200
    assert not {tuple(r) for r in rows.calibration} & {tuple(r) for r in rows.heldout}
    with pytest.raises(BadInput, match="not a run directory"):
        calibration.load_rows("auto", None, tok, template_of("tiny-llama3"))
    with pytest.raises(BadInput, match="no such file"):
        calibration.load_rows(str(tmp_path / "missing.jsonl"), None, tok, template_of("tiny-llama3"))
