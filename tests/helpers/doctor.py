"""Shared helpers for the doctor tests (no tests here): builtin copies to break, fixture locations,
and the token facts of each real-world template fixture (from shared/fixtures/real-world/INDEX.md)."""

from __future__ import annotations

import functools
import json
import os
import shutil
from pathlib import Path

import torch

os.environ.setdefault("FTCLI_DOCTOR_STRICT", "1")  # a crashing check fails the test instead of becoming info

from helpers.runs import FIXTURES, fixtures_dir  # noqa: E402,F401  (re-exported for the doctor tests)


@functools.lru_cache(maxsize=None)
def builtin_dir(name: str) -> Path:
    from ftcli.models.builtin import builtin_path

    return builtin_path(f"builtin:{name}")


def copy_builtin(name: str, dest: Path, weights: bool = True) -> Path:
    """A private copy of a builtin folder to break one thing in."""
    src = builtin_dir(name)
    dest.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.suffix == ".safetensors" and not weights:
            continue
        shutil.copyfile(f, dest / f.name)
    return dest


def edit_json(path: Path, func) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    func(data)  # edits in place (its return value, e.g. of dict.pop, is ignored)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")


def ids(findings, severity: str | None = None) -> set[str]:
    return {f.check for f in findings if severity is None or f.severity == severity}


# --------------------------------------------------------------------------- template fixtures
# Token facts per release (INDEX.md "Special tokens" column; Llama/Phi/Gemma ids from the rows cited there).
LLAMA3_IDS = {"<|begin_of_text|>": 128000, "<|end_of_text|>": 128001, "<|finetune_right_pad_id|>": 128004,
              "<|start_header_id|>": 128006, "<|end_header_id|>": 128007, "<|eom_id|>": 128008,
              "<|eot_id|>": 128009, "<|python_tag|>": 128010}
LLAMA4_IDS = {"<|begin_of_text|>": 200000, "<|end_of_text|>": 200001, "<|header_start|>": 200005,
              "<|header_end|>": 200006, "<|eom|>": 200007, "<|eot|>": 200008, "<|finetune_right_pad|>": 200018}
QWEN_IDS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<tool_call>": 151657,
            "</tool_call>": 151658, "<tool_response>": 151665, "</tool_response>": 151666, "<think>": 151667,
            "</think>": 151668}
PHI3_IDS = {"<unk>": 0, "<s>": 1, "</s>": 2, "<|endoftext|>": 32000, "<|assistant|>": 32001, "<|system|>": 32006,
            "<|end|>": 32007, "<|placeholder6|>": 32009, "<|user|>": 32010}
PHI4_IDS = {"<|endoftext|>": 100257, "<|im_start|>": 100264, "<|im_end|>": 100265, "<|im_sep|>": 100266,
            "<|dummy_85|>": 100349}
MISTRAL_IDS = {"<unk>": 0, "<s>": 1, "</s>": 2, "[INST]": 3, "[/INST]": 4, "[TOOL_CALLS]": 5,
               "[AVAILABLE_TOOLS]": 6, "[/AVAILABLE_TOOLS]": 7, "[TOOL_RESULTS]": 8, "[/TOOL_RESULTS]": 9,
               "[SYSTEM_PROMPT]": 17, "[/SYSTEM_PROMPT]": 18, "<pad>": 10}
GEMMA2_IDS = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<start_of_turn>": 106, "<end_of_turn>": 107}
GEMMA3_IDS = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<start_of_turn>": 105, "<end_of_turn>": 106}
DEEPSEEK_IDS = {"<｜end▁of▁sentence｜>": 151643, "<｜begin▁of▁sentence｜>": 151646, "<｜User｜>": 151644,
                "<｜Assistant｜>": 151645, "<think>": 151648, "</think>": 151649}
SMOL_IDS = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}

# file -> (token ids, bos, eos, pad, add_bos_token, generation_config eos ids or None, gen pad or None)
TEMPLATE_CONTEXT = {
    "llama-3-instruct.2024-04-original.jinja": (LLAMA3_IDS, "<|begin_of_text|>", "<|end_of_text|>", None, True, [128001], None),
    "llama-3-instruct.jinja": (LLAMA3_IDS, "<|begin_of_text|>", "<|eot_id|>", None, True, [128001, 128009], None),
    "llama-3.1-instruct.jinja": (LLAMA3_IDS, "<|begin_of_text|>", "<|eot_id|>", None, True, [128001, 128008, 128009], None),
    "llama-3.2-instruct.jinja": (LLAMA3_IDS, "<|begin_of_text|>", "<|eot_id|>", None, True, [128001, 128008, 128009], None),
    "llama-3.3-instruct.jinja": (LLAMA3_IDS, "<|begin_of_text|>", "<|eot_id|>", None, True, [128001, 128008, 128009], None),
    "llama-4-instruct.jinja": (LLAMA4_IDS, "<|begin_of_text|>", "<|eot|>", "<|finetune_right_pad|>", True, [200001, 200007, 200008], None),
    "hermes-3-chatml-tool-use.jinja": ({**LLAMA3_IDS, "<|im_start|>": 128002, "<|im_end|>": 128003},
                                       "<|begin_of_text|>", "<|im_end|>", None, True, [128003], None),
    "qwen2.5-instruct.jinja": (QWEN_IDS, None, "<|im_end|>", "<|endoftext|>", False, [151645, 151643], None),
    "qwen3.jinja": (QWEN_IDS, None, "<|im_end|>", "<|endoftext|>", False, [151645, 151643], None),
    "qwen3.2025-04-original.jinja": (QWEN_IDS, None, "<|im_end|>", "<|endoftext|>", False, [151645, 151643], None),
    "chatml.jinja": (QWEN_IDS, None, "<|im_end|>", "<|endoftext|>", False, None, None),
    "phi-3-mini-4k-instruct.jinja": (PHI3_IDS, "<s>", "<|endoftext|>", "<|endoftext|>", False, None, None),
    "phi-3.5-mini-instruct.jinja": (PHI3_IDS, "<s>", "<|endoftext|>", "<|endoftext|>", False, None, None),
    "phi-3-mini-128k-instruct.2024-04-original.jinja": (PHI3_IDS, "<s>", "<|endoftext|>", "<|endoftext|>", True, None, None),
    "phi-4.jinja": (PHI4_IDS, "<|endoftext|>", "<|im_end|>", "<|dummy_85|>", False, None, None),
    "phi-4.2024-12-original.jinja": (PHI4_IDS, "<|endoftext|>", "<|endoftext|>", "<|endoftext|>", False, None, None),
    "mistral-7b-instruct-v0.3.jinja": (MISTRAL_IDS, "<s>", "</s>", None, True, [2], None),
    "mistral-7b-instruct-v0.2.original.jinja": (MISTRAL_IDS, "<s>", "</s>", None, True, [2], None),
    "mistral-nemo-instruct-2407.jinja": (MISTRAL_IDS, "<s>", "</s>", "<pad>", True, [2], None),
    "mistral-small-3.2-24b-instruct-2506.jinja": (MISTRAL_IDS, "<s>", "</s>", "<pad>", True, [2], None),
    "deepseek-r1-distill.jinja": (DEEPSEEK_IDS, "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", None, True, [151643], None),
    "deepseek-r1-distill.2025-01-original.jinja": (DEEPSEEK_IDS, "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", None, True, [151643], None),
    "smollm2-instruct.jinja": (SMOL_IDS, "<|im_start|>", "<|im_end|>", None, False, [2], 2),
    "gemma-2-it.jinja": (GEMMA2_IDS, "<bos>", "<eos>", "<pad>", True, [1, 107], None),
    "gemma-3-it.jinja": (GEMMA3_IDS, "<bos>", "<eos>", "<pad>", True, None, None),
}


def template_subject(name: str):
    """A Subject for a template fixture with its release's special tokens (no vocab file)."""
    from ftcli.doctor.probes import MARKER_RE, template_literals
    from ftcli.doctor.subject import Subject

    source = (fixtures_dir() / "templates" / name).read_text(encoding="utf-8")
    token_ids, bos, eos, pad, add_bos, gen_eos, gen_pad = TEMPLATE_CONTEXT[name]
    tokens = dict(token_ids)
    # Every control-looking literal of a released template is a token of that release's vocabulary.
    for literal in template_literals(source):
        for m in MARKER_RE.finditer(literal):
            if m.group(0).startswith(("<|", "<｜", "[")) and m.group(0) not in tokens:
                tokens[m.group(0)] = 300000 + len(tokens)
    decoder = {str(i): {"content": t, "special": t not in ("<think>", "</think>", "<tool_call>", "</tool_call>",
                                                           "<tool_response>", "</tool_response>")}
               for t, i in tokens.items()}
    tc = {"bos_token": bos, "eos_token": eos, "pad_token": pad, "add_bos_token": add_bos,
          "added_tokens_decoder": decoder, "chat_template": source}
    gen = None if gen_eos is None else {"eos_token_id": gen_eos, **({"pad_token_id": gen_pad} if gen_pad is not None else {})}
    return Subject(name=name, tokenizer_config=tc, generation_config=gen, template=source, variants={"default": source})


CHATML_NO_AGP = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] "
                 "+ '<|im_end|>' + '\\n'}}{% endfor %}")


CHATML = CHATML_NO_AGP + "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"


LLAMA3_ORIGINAL = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
                   "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + "
                   "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
                   "{{ content }}{% endfor %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}")


LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def set_template(folder: Path, source):
    edit_json(folder / "tokenizer_config.json", lambda d: d.__setitem__("chat_template", source))


def sub_template(folder: Path, old: str, new: str, count: int = 0):
    def edit(d):
        assert old in d["chat_template"], old
        d["chat_template"] = d["chat_template"].replace(old, new, count or -1)
    edit_json(folder / "tokenizer_config.json", edit)


def live(name: str, dtype=torch.float32):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftcli.data import templates

    folder = builtin_dir(name)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    tok = AutoTokenizer.from_pretrained(folder)
    return model, tok, templates.resolve("auto", tok)


# --------------------------------------------------------------------------- breakers (folder)
# check id -> (builtin, function(folder) that breaks exactly one thing)
def _no_pad(f):
    edit_json(f / "tokenizer_config.json", lambda d: d.__setitem__("pad_token", None))
    for name in ("config.json", "generation_config.json"):
        edit_json(f / name, lambda d: d.pop("pad_token_id", None))


def _zero_row(token: str):
    def breaker(f):
        from safetensors.torch import load_file, save_file
        from tokenizers import Tokenizer

        i = Tokenizer.from_file(str(f / "tokenizer.json")).token_to_id(token)
        tensors = load_file(str(f / "model.safetensors"))
        name = next(n for n in tensors if n.endswith("embed_tokens.weight"))
        tensors[name][i] = 0
        save_file(tensors, str(f / "model.safetensors"), metadata={"format": "pt"})
    return breaker


def _untie(f):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(f / "model.safetensors"))
    emb = next(t for n, t in tensors.items() if n.endswith("embed_tokens.weight"))
    tensors["lm_head.weight"] = emb + 0.5
    save_file(tensors, str(f / "model.safetensors"), metadata={"format": "pt"})


def not_special(token):
    def breaker(f):
        def tj(d):
            for e in d["added_tokens"]:
                if e["content"] == token:
                    e["special"] = False
        edit_json(f / "tokenizer.json", tj)

        def tc(d):
            for e in d["added_tokens_decoder"].values():
                if e["content"] == token:
                    e["special"] = False
        edit_json(f / "tokenizer_config.json", tc)
    return breaker


def _rename_decoder(f):
    def tc(d):
        for e in d["added_tokens_decoder"].values():
            if e["content"] == "<|im_start|>":
                e["content"] = "<|im_begin|>"
    edit_json(f / "tokenizer_config.json", tc)


def _stale_pp(f):
    edit_json(f / "tokenizer.json", lambda d: d["post_processor"]["special_tokens"]["<|begin_of_text|>"]
              .__setitem__("ids", [5]))


def _no_bos_gemma(f):
    edit_json(f / "tokenizer.json", lambda d: d.__setitem__("post_processor", None))
    edit_json(f / "tokenizer_config.json", lambda d: d.__setitem__("add_bos_token", False))
    sub_template(f, "{{ bos_token }}", "")


def _llama31_with_llama3_stops(f):
    from ftcli.data import templates

    set_template(f, templates.load_family("llama3.1").source)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(f / "tokenizer.json"))
    stops = [tok.token_to_id("<|eot_id|>"), tok.token_to_id("<|end_of_text|>")]
    for name in ("config.json", "generation_config.json"):
        edit_json(f / name, lambda d: d.__setitem__("eos_token_id", stops))


def _phi3_eos_only(f):
    for name in ("config.json", "generation_config.json"):
        edit_json(f / name, lambda d: d.__setitem__("eos_token_id", [d["eos_token_id"][0]]))


def _wrong_regex(f):
    edit_json(f / "tokenizer.json", lambda d: d.__setitem__("pre_tokenizer", {
        "type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}))


def _rope_no_factor(f):
    edit_json(f / "config.json", lambda d: d["rope_parameters"].pop("factor"))


def _gemma2(f):
    edit_json(f / "config.json", lambda d: d.update(model_type="gemma2", num_hidden_layers=42,
                                                    query_pre_attn_scalar=224))


FOLDER_BREAKERS = {
    "pad-missing": ("tiny-llama3", _no_pad),
    "pad-is-eos": ("tiny-qwen3", lambda f: edit_json(f / "tokenizer_config.json",
                                                      lambda d: d.__setitem__("pad_token", "<|im_end|>"))),
    "pad-out-of-range": ("tiny-llama3", lambda f: edit_json(f / "config.json",
                                                             lambda d: d.__setitem__("pad_token_id", 99999))),
    "eos-not-end-of-turn": ("tiny-phi3", _phi3_eos_only),
    "stop-tokens-incomplete": ("tiny-llama3", _llama31_with_llama3_stops),
    "double-bos": ("tiny-llama3", lambda f: sub_template(f, "bos_token + content", "bos_token + bos_token + content")),
    "missing-bos": ("tiny-gemma3", _no_bos_gemma),
    "post-processor-mismatch": ("tiny-llama3", lambda f: edit_json(f / "tokenizer_config.json",
                                                                    lambda d: d.__setitem__("add_bos_token", False))),
    "post-processor-stale": ("tiny-llama3", _stale_pp),
    "tokenizer-files-disagree": ("tiny-qwen3", _rename_decoder),
    "special-token-missing": ("tiny-phi3", lambda f: edit_json(f / "tokenizer_config.json",
                                                                lambda d: d.__setitem__("unk_token", "<unknown>"))),
    "vocab-size-mismatch": ("tiny-qwen3", lambda f: edit_json(f / "config.json",
                                                               lambda d: d.__setitem__("vocab_size", 1000))),
    "special-token-not-special": ("tiny-qwen3", not_special("<|im_end|>")),
    "template-unknown-special": ("tiny-gemma3", lambda f: sub_template(f, "'<end_of_turn>\n'", "'<end_of_turns>\n'")),
    "legacy-tokenizer": ("tiny-mistral", lambda f: edit_json(f / "tokenizer.json", lambda d: d.__setitem__(
        "normalizer", {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
                                                          {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}))),
    "mistral-regex": ("tiny-mistral", _wrong_regex),
    "add-bos-without-bos": ("tiny-qwen3", lambda f: edit_json(f / "tokenizer_config.json",
                                                               lambda d: d.__setitem__("add_bos_token", True))),
    "template-missing": ("tiny-llama3", lambda f: edit_json(f / "tokenizer_config.json", lambda d: d.pop("chat_template"))),
    "template-variants": ("tiny-qwen3", lambda f: edit_json(f / "tokenizer_config.json", lambda d: d.__setitem__(
        "chat_template", [{"name": "default", "template": d["chat_template"]}, {"name": "tool_use", "template": CHATML}]))),
    "template-render-error": ("tiny-qwen3", lambda f: set_template(f, "{% for m in messages %}{{ m.content | nosuch }}{% endfor %}")),
    "template-no-generation-prompt": ("tiny-qwen3", lambda f: set_template(f, CHATML_NO_AGP)),
    "template-header-every-turn": ("tiny-llama3", lambda f: set_template(f, LLAMA3_ORIGINAL)),
    "template-no-end-of-turn": ("tiny-qwen3", lambda f: set_template(f, CHATML.replace("'<|im_end|>' + ", ""))),
    "template-drops-system": ("tiny-qwen3", lambda f: set_template(
        f, CHATML.replace("{{'<|im_start|>'", "{% if message['role'] != 'system' %}{{'<|im_start|>'").replace(
            "{% endfor %}", "{% endif %}{% endfor %}"))),
    "template-strict-alternation": ("tiny-qwen3", lambda f: set_template(
        f, "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
           "{{ raise_exception('roles must alternate') }}{% endif %}" + CHATML[len("{% for message in messages %}"):])),
    "template-strips-reasoning": ("tiny-llama3", lambda f: sub_template(
        f, "message['content'] | trim", "message['content'].split('</think>')[-1] | trim")),
    "template-prefills-think": ("tiny-qwen3", lambda f: set_template(
        f, CHATML.replace("'<|im_start|>assistant\\n'", "'<|im_start|>assistant\\n<think>\\n'"))),
    "template-not-prefix-preserving": ("tiny-llama3", lambda f: sub_template(
        f, "' }}{% endif %}", "' }}{% else %}{{ eos_token }}{% endif %}")),
    "template-default-system": ("tiny-qwen3", lambda f: set_template(
        f, "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful assistant named "
           "Tiny.<|im_end|>\\n' }}{% endif %}" + CHATML)),
    "template-date": ("tiny-qwen3", lambda f: set_template(
        f, "{{ '<|im_start|>system\\nToday is ' + strftime_now('%d %b %Y') + '<|im_end|>\\n' }}" + CHATML)),
    "gemma-turn-typo": ("tiny-gemma3", lambda f: sub_template(f, "{{'<start_of_turn>model", "{{'<end_of_turn>model")),
    "gemma-activation": ("tiny-gemma3", lambda f: edit_json(f / "config.json",
                                                             lambda d: d.__setitem__("hidden_activation", "gelu"))),
    "gemma2-query-scale": ("tiny-gemma3", _gemma2),
    "rope-scaling": ("tiny-llama3", _rope_no_factor),
    "max-length": ("tiny-llama3", lambda f: edit_json(f / "tokenizer_config.json",
                                                       lambda d: d.__setitem__("model_max_length", 1e30))),
    "tied-embeddings": ("tiny-qwen3", _untie),
    "untrained-special-tokens": ("tiny-llama3", _zero_row("<|eot_id|>")),
}


def broken_folder(check_id: str, tmp_path: Path) -> Path:
    name, breaker = FOLDER_BREAKERS[check_id]
    folder = copy_builtin(name, tmp_path / f"{name}-broken")
    breaker(folder)
    return folder


def write_gguf(path: Path, types_override: dict[str, int] | None = None, add_bos: bool = True):
    import gguf
    from tokenizers import Tokenizer

    folder = builtin_dir("tiny-llama3")
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    vocab = sorted(tok.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab]
    special = {a.content for a in tok.get_added_tokens_decoder().values()}
    types = [gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens]
    for t, kind in (types_override or {}).items():
        types[tokens.index(t)] = kind
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(131072)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_bos_token_id(tokens.index("<|begin_of_text|>"))
    writer.add_eos_token_id(tokens.index("<|eot_id|>"))
    writer.add_add_bos_token(add_bos)
    from ftcli.data import templates

    writer.add_chat_template(templates.load_family("llama3").source)
    writer.add_tensor("token_embd.weight", torch.randn(len(tokens), 8, generator=torch.Generator().manual_seed(0)).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
