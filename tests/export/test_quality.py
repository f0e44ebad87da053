"""The quality report: KLD of f16 against itself is 0, a real quant is close, a broken one is far."""

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")

from ftcli.export import gguf as writer  # noqa: E402
from ftcli.export import quality, quantize  # noqa: E402
from helpers.exports import SAMPLE_TEXTS as TEXTS  # noqa: E402
from helpers.exports import wide_llama  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("quality")
    model = wide_llama(root / "hf", layers=2)
    base = writer.write_gguf(model, root / "model-f16.gguf", "f16").path
    q8 = quantize.quantize(base, root / "model-q8_0.gguf", "q8_0").path
    broken = root / "model-broken.gguf"
    broken.write_bytes(q8.read_bytes())
    reader = gguf.GGUFReader(str(broken), "r+")
    for t in reader.tensors:
        if t.name.endswith("ffn_down.weight"):  # a wrong scale: every Q8_0 block's f16 scale times 8
            blocks = t.data.reshape(-1, 34)
            blocks[:, :2] = (blocks[:, :2].copy().view(np.float16) * 8).view(np.uint8)
    del reader
    tok = AutoTokenizer.from_pretrained(model)
    rows = [tok(t)["input_ids"] for t in TEXTS]
    return base, q8, broken, rows


def test_f16_against_itself_is_exactly_zero_and_a_broken_scale_is_caught(files, tmp_path):
    base, q8, broken, rows = files
    figures = quality.measure(base, {"f16": base, "q8_0": q8, "broken": broken}, rows, progress=lambda *a: None)
    same, good, bad = figures["f16"], figures["q8_0"], figures["broken"]
    assert same["kld_mean"] == same["kld_max"] == 0.0 and same["top1_agreement"] == 1.0
    assert same["ppl_change_pct"] == 0.0 and same["ppl"] == same["ppl_f16"]
    assert 0 < good["kld_mean"] < 0.05 and good["top1_agreement"] > 0.8, good
    assert bad["kld_mean"] > 20 * good["kld_mean"] and bad["kld_mean"] > 0.05, (bad, good)   # negative control
    assert bad["kld_p99"] >= bad["kld_mean"] and bad["kld_max"] >= bad["kld_p99"]
    assert good["tokens"] == sum(len(r) for r in rows)
    assert 8 < good["bits_per_weight"] < 9 and 16.0 < same["bits_per_weight"] < 16.1   # + the F32 norms
    png = quality.plot(figures, tmp_path / quality.PLOT)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    header, *rows_out = quality.table_rows(figures)
    assert header[:4] == ["quant", "size", "bpw", "KLD mean"] and rows_out[-1][0] == "f16"   # sorted by size
