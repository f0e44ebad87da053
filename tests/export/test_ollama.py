"""The Modelfile TEMPLATE, rendered by Go's real text/template, equals the Jinja chat template
for every family in templates/ on golden conversations."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from ftcli.data import templates
from ftcli.errors import BadInput
from ftcli.export import ollama
from ftcli.export.vocab import adds_special
from helpers.exports import builtin_dir

GO_SOURCE = Path(__file__).parent / "go" / "render.go"
# A builtin whose tokenizer has each family's special tokens (bos/eos are what the templates print).
TOKENIZER_OF = {"chatml": "tiny-qwen3", "gemma3": "tiny-gemma3", "llama3": "tiny-llama3", "llama3.1": "tiny-llama3",
                "mistral": "tiny-mistral", "phi3": "tiny-phi3", "phi4": "tiny-qwen3", "qwen3": "tiny-qwen3"}
EXTRA = [  # beyond the golden ones: odd turns Ollama may send; the Go template must do what shape.render does
    [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
    [{"role": "user", "content": "a"}, {"role": "tool", "content": "{}"}, {"role": "assistant", "content": "c"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "system", "content": "s"},
     {"role": "user", "content": "d"}],
    [{"role": "system", "content": "only a system message"}],
    [{"role": "user", "content": "{{ not a template }} \"\"\" done"}],
]


@pytest.fixture(scope="module")
def go_render(tmp_path_factory):
    """Build tests/go/render.go; skip without Go, except on CI where Go must be there."""
    if shutil.which("go") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("Go is not installed: .ci/run must install golang-go for the Modelfile parity test")
        pytest.skip("Go is not installed (apt-get install golang-go)")
    tmp = tmp_path_factory.mktemp("go")
    env = {**os.environ, "GOCACHE": str(tmp / "cache"), "GOPATH": str(tmp / "gopath"), "GOFLAGS": "-mod=mod",
           "GO111MODULE": "off"}
    binary = tmp / "render"
    subprocess.run(["go", "build", "-o", str(binary), str(GO_SOURCE)], check=True, env=env, capture_output=True,
                   timeout=300)

    def render(template: str, conversations: list) -> list[str]:
        out = subprocess.run([str(binary)], input=json.dumps({"template": template, "conversations": conversations}),
                             capture_output=True, text=True, check=True, timeout=60)
        return json.loads(out.stdout)

    return render


def _setup(family):
    tokenizer = AutoTokenizer.from_pretrained(builtin_dir(TOKENIZER_OF[family]))
    return templates.load_family(family), tokenizer, adds_special(tokenizer, tokenizer.bos_token_id, first=True)


@pytest.mark.parametrize("family", templates.FAMILIES)
def test_go_template_renders_exactly_the_jinja_template(go_render, family):
    template, tokenizer, strip_bos = _setup(family)
    modelfile = ollama.build_modelfile("model-q8_0.gguf", template, tokenizer, strip_bos)
    render = ollama._Renderer(template, tokenizer, strip_bos)
    golden = [c for c in ollama.GOLDEN if render(c) is not None]
    assert len(golden) >= 2 and modelfile.golden_checked == len(golden)
    assert go_render(modelfile.template, golden) == [render(c) for c in golden]
    if strip_bos:
        assert tokenizer.bos_token not in modelfile.template  # llama.cpp adds BOS itself
    shape = ollama.derive_shape(template, tokenizer, strip_bos)
    assert go_render(modelfile.template, EXTRA) == [shape.render(c) for c in EXTRA]


def test_modelfile_has_from_template_stops_and_system():
    template, tokenizer, strip_bos = _setup("llama3.1")
    mf = ollama.build_modelfile("model-q4_k_m.gguf", template, tokenizer, strip_bos, system="Be brief.",
                                parameters={"temperature": 0.6})
    lines = mf.text.splitlines()
    assert "FROM ./model-q4_k_m.gguf" in lines
    for stop in ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"):
        assert f'PARAMETER stop "{stop}"' in lines
    assert "PARAMETER temperature 0.6" in lines and 'SYSTEM """Be brief."""' in lines
    assert mf.text.count('TEMPLATE """') == 1 and "{{ .Prompt }}" not in mf.text
    assert "Cutting Knowledge Date" in mf.template  # the 3.1 system header is reproduced, not dropped


def test_mistral_folds_the_system_message_as_training_does():
    template, tokenizer, strip_bos = _setup("mistral")
    shape = ollama.derive_shape(template, tokenizer, strip_bos)
    text = shape.render([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}])
    assert text == "[INST] S\n\nU[/INST]"
    assert any("folded" in n for n in shape.notes)


def test_a_template_that_cannot_be_translated_exits_2(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(builtin_dir("tiny-qwen3"))
    numbered = tmp_path / "numbered.jinja"  # turn numbers: not a function of the roles alone
    numbered.write_text("{% for m in messages %}<|im_start|>{{ m.role }} #{{ loop.index }}\n{{ m.content }}<|im_end|>\n"
                        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    template = templates.resolve(str(numbered), tokenizer)
    with pytest.raises(BadInput, match="cannot write an Ollama TEMPLATE") as err:
        ollama.build_modelfile("m.gguf", template, tokenizer, strip_bos=False)
    assert err.value.exit_code == 2 and "--ollama" in err.value.hint
