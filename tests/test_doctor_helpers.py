"""Shared helpers for the doctor tests (no tests here): builtin copies to break, fixture locations,
and the token facts of each real-world template fixture (from shared/fixtures/real-world/INDEX.md)."""

from __future__ import annotations

import functools
import json
import os
import shutil
from pathlib import Path


os.environ.setdefault("FTCLI_DOCTOR_STRICT", "1")  # a crashing check fails the test instead of becoming info

from support import FIXTURES, fixtures_dir  # noqa: E402,F401  (re-exported for the doctor tests)




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
