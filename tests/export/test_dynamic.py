"""Dynamic presets: the budget, the choice by sensitivity, and `ftcli export --gguf dynamic-q4 --imatrix auto` end to end."""

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

gguf = pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")

from ftcli.cli import app  # noqa: E402
from ftcli.export import dynamic, quant_plan  # noqa: E402
from ftcli.export import gguf as writer  # noqa: E402
from ftcli.export import imatrix as im  # noqa: E402
from helpers.exports import SAMPLE_TEXTS, wide_llama  # noqa: E402


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("dyn")
    return quant_plan.read_base(writer.write_gguf(wide_llama(root / "hf", layers=2), root / "f16.gguf", "f16").path)


def _synthetic(base, sensitive: str) -> dynamic.Sensitivity:
    """Equal sensitivities except one tensor; rounding errors that halve per type step."""
    names = [t.name for t in base.tensors if quant_plan.quantizable(t)]
    _, types = dynamic.PRESETS["dynamic-q4"]
    return dynamic.Sensitivity(low="Q4_K", kl={n: (1.0 if n == sensitive else 0.001) for n in names},
                               error={n: {t: 0.5 ** i for i, t in enumerate(types)} for n in names})


@pytest.mark.parametrize("preset", list(dynamic.PRESETS))
def test_the_plan_stays_within_the_reference_size_and_upgrades_the_most_sensitive_first(base, preset):
    _, types = dynamic.PRESETS[preset]
    sens = _synthetic(base, "blk.1.attn_v.weight")
    sens.low = types[0]
    sens.error = {n: {t: 0.5 ** i for i, t in enumerate(types)} for n in sens.kl}
    plan, section = dynamic.choose(base, preset, sens)
    budget = quant_plan.planned_bytes(base, quant_plan.standard_plan(base, dynamic.PRESETS[preset][0]))
    assert section["budget_bytes"] == budget and section["planned_bytes"] == quant_plan.planned_bytes(base, plan)
    assert 0.97 * budget <= section["planned_bytes"] <= budget
    assert plan["blk.1.attn_v.weight"] == "Q8_0"                       # the sensitive one goes all the way up
    assert section["sensitivity"][0]["tensor"] == "blk.1.attn_v.weight"
    assert set(plan) == set(sens.kl) and len(section["sensitivity"]) == len(plan)


@pytest.mark.slow
def test_sensitivity_is_measured_kl_and_grows_as_the_type_shrinks(base):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base.path.parent / "hf")
    rows = [tok(t)["input_ids"] for t in SAMPLE_TEXTS]
    names = ["blk.0.ffn_down.weight", "blk.1.attn_k.weight"]
    sub = quant_plan.BaseFile(base.path, [t for t in base.tensors if t.name in names or not quant_plan.quantizable(t)],
                              base.n_layer, base.n_gqa, base.header_bytes, base.alignment)
    q4 = dynamic.measure(base.path.parent / "hf", sub, rows, "Q4_K", ("Q4_K", "Q8_0"), progress=lambda *a: None)
    q2 = dynamic.measure(base.path.parent / "hf", sub, rows, "Q2_K", ("Q2_K",), progress=lambda *a: None)
    for name in names:
        assert 0 < q4.kl[name] < q2.kl[name], (name, q4.kl, q2.kl)
        assert q4.error[name]["Q8_0"] < q4.error[name]["Q4_K"]


@pytest.mark.slow
def test_export_dynamic_q4_with_imatrix_auto_on_a_run(tmp_path):
    run = tmp_path / "run"
    model = wide_llama(run / "model", layers=2)
    data = tmp_path / "data.jsonl"
    rng = np.random.default_rng(0)
    words = " ".join(SAMPLE_TEXTS).split()
    data.write_text("".join(json.dumps({"text": " ".join(rng.choice(words, 40))}) + "\n" for _ in range(40)))
    (run / "recipe.resolved.yaml").write_text(yaml.safe_dump({
        "model": {"name": str(model), "dtype": "float32"}, "template": {"name": "llama3"},
        "dataset": {"path": str(data), "format": "text", "eval_fraction": 0.25}, "train": {"seed": 1},
        "export": {"formats": [], "gguf_quant": []}, "_run": {"status": "done"}}))
    result = CliRunner().invoke(app, ["export", str(run), "--gguf", "q4_k_m,dynamic-q4", "--imatrix", "auto",
                                      "--calibration-tokens", "256"])
    assert result.exit_code == 0, result.output
    out = run / "export"
    report = json.loads((out / "export-report.json").read_text())
    files = {f["quant"]: f for f in report["files"]}
    assert {"model-q4_k_m.gguf", "model-dynamic-q4.gguf", im.FILE, "quant-quality.png"} <= {p.name for p in out.iterdir()}
    assert "data.jsonl (eval split)" in report["calibration"]["source"]
    assert set(im.load(out / im.FILE).sums) >= {"blk.0.attn_q.weight", "output.weight"}
    dyn = files["dynamic-q4"]
    assert files["q4_k_m"]["imatrix"] and dyn["imatrix"]
    assert 0.97 <= dyn["bytes"] / files["q4_k_m"]["bytes"] <= 1.03
    assert dyn["dynamic"]["sensitivity"] and dyn["tensor_plan"]["blk.0.attn_q.weight"] in {"Q4_K", "Q5_K", "Q6_K", "Q8_0"}
    for quant, entry in files.items():
        figures = entry["quality"]
        assert figures["tokens"] == report["calibration"]["heldout_tokens"]
        assert (figures["kld_mean"] == 0.0) if quant == "f16" else (figures["kld_mean"] > 0), (quant, figures)
    assert not files["f16"]["kept"]   # the intermediate f16 was measured (KLD 0), then removed
    assert "KLD mean" in result.output and "dynamic-q4" in result.output


def test_dynamic_presets_need_calibration_rows(tmp_path):
    model = wide_llama(tmp_path / "hf", layers=1)
    result = CliRunner().invoke(app, ["export", str(model), "--gguf", "dynamic-q2", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--imatrix FILE.jsonl" in result.output
    result = CliRunner().invoke(app, ["export", str(model), "--gguf", "f16", "--imatrix", "auto", "--out",
                                      str(tmp_path / "o2")])
    assert result.exit_code == 2 and "none is asked for" in result.output


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny-llama3", "tiny-gemma3", "tiny-qwen3", "tiny-phi3", "tiny-mistral"])
def test_dynamic_q4_exports_every_family(tmp_path, name):
    from helpers.exports import builtin_dir

    data = tmp_path / "cal.jsonl"
    data.write_text("".join(json.dumps({"text": f"{i}: {t}"}) + "\n" for i in range(12) for t in SAMPLE_TEXTS))
    out = tmp_path / "export"
    result = CliRunner().invoke(app, ["export", str(builtin_dir(name)), "--gguf", "dynamic-q4", "--imatrix", str(data),
                                      "--calibration-tokens", "256", "--out", str(out)])
    assert result.exit_code == 0, result.output
    entry = {f["quant"]: f for f in json.loads((out / "export-report.json").read_text())["files"]}["dynamic-q4"]
    section = entry["dynamic"]
    assert entry["bytes"] == section["planned_bytes"] <= section["budget_bytes"]
    assert entry["parity"]["top1_agreement"] > 0.3 and entry["quality"]["kld_mean"] > 0
