"""Write a Hugging Face model folder as a GGUF file that llama.cpp loads, on the `gguf` package.

The file is written in two passes over the safetensors shards (shapes first, then one tensor
at a time), so memory holds one tensor, not the model. Tied embeddings: no output.weight,
llama.cpp reuses token_embd. Tensor names and transforms: gguf_tensors.py; hyperparameters:
gguf_hparams.py; the vocabulary: vocab.py.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ftcli.errors import BadInput, MissingPackage
from ftcli.export.gguf_hparams import read_config, write_hparams
from ftcli.export.gguf_tensors import arch_enum, detect_arch, gguf_name, is_f32, to_numpy, transform
from ftcli.export.vocab import Vocab, read_vocab

OUTTYPES = ("f32", "f16", "bf16")
STOP_KEY = "ftcli.chat.stop_tokens"  # our own keys (llama.cpp ignores unknown ones): what `ftcli chat` needs
TEMPLATE_NAME_KEY = "ftcli.chat.template_name"


@dataclass
class GgufResult:
    path: Path
    arch: str
    outtype: str
    tensors: int
    vocab_size: int
    tokenizer_model: str
    tokenizer_pre: str
    tied_embeddings: bool
    add_bos: bool = False
    padded_tokens: int = 0
    notes: list[str] = field(default_factory=list)


def write_gguf(model_dir: Path, out_path: Path, outtype: str = "f16", *, chat_template: str | None = None,
               end_of_turn: str | None = None, stop_tokens: list[str] | None = None, template_name: str | None = None,
               name: str | None = None) -> GgufResult:
    """Convert `model_dir` to `out_path` (written to a temp name and renamed when complete).

    `chat_template` (the training template) goes to tokenizer.chat_template, its end-of-turn
    token to tokenizer.ggml.eot_token_id, and its stop strings to ftcli.chat.stop_tokens.
    """
    try:
        import gguf
    except ImportError:
        raise MissingPackage("gguf", "GGUF export", "pip install 'ftcli[export]'  (gguf==0.19.0)") from None

    if outtype not in OUTTYPES:
        raise BadInput(f"GGUF base type {outtype!r} is not one of {', '.join(OUTTYPES)}")
    model_dir, out_path = Path(model_dir), Path(out_path)
    config = read_config(model_dir)
    arch = detect_arch(config)
    notes: list[str] = []
    plan, tied, n_rows = _plan_tensors(model_dir, arch, config)
    vocab = read_vocab(model_dir, n_rows, end_of_turn)
    if vocab.padded:
        notes.append(f"{vocab.padded} embedding rows have no token; written as [PAD<i>] (unused)")

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
    w = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[arch_enum(gguf, arch)])
    try:
        w.add_name(_safe_name(name or model_dir.name, vocab))
        w.add_type("model")
        file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                     "bf16": gguf.LlamaFileType.MOSTLY_BF16}[outtype]
        w.add_file_type(int(file_type))
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        extra = write_hparams(w, arch, config, notes)
        vocab.write(w, chat_template)
        if stop_tokens:
            w.add_array(STOP_KEY, list(stop_tokens))
        if template_name:
            w.add_string(TEMPLATE_NAME_KEY, template_name)
        entries = _entries(extra, plan, outtype)
        _write_header(w, entries)
        _write_tensor_data(w, entries, arch, config)
        w.close()
        os.replace(tmp, out_path)
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
    return GgufResult(path=out_path, arch=arch, outtype=outtype, tensors=len(entries), vocab_size=n_rows,
                      tokenizer_model=vocab.model, tokenizer_pre=vocab.pre, tied_embeddings=tied, add_bos=vocab.add_bos,
                      padded_tokens=vocab.padded, notes=notes)


def _shards(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [model_dir / f for f in files]
    single = model_dir / "model.safetensors"
    if single.is_file():
        return [single]
    raise BadInput(f"{model_dir} has no model.safetensors (or index): save the model with safe_serialization=True")


def _plan_tensors(model_dir: Path, arch: str, config: dict) -> tuple[list[tuple[str, Path, str, tuple]], bool, int]:
    """Pass 1, names and shapes only: (gguf name, shard, hf name, shape) in file order, whether the
    embeddings are tied, and the number of embedding rows."""
    from safetensors import safe_open

    plan: list[tuple[str, Path, str, tuple]] = []  # (gguf name, shard, hf name, shape)
    for shard in _shards(model_dir):
        with safe_open(str(shard), framework="pt") as f:
            for key in f.keys():
                target = gguf_name(arch, key)
                if target is not None:
                    plan.append((target, shard, key, tuple(f.get_slice(key).get_shape())))
    names = {p[0]: p for p in plan}
    if "token_embd.weight" not in names:
        raise BadInput(f"{model_dir} has no model.embed_tokens.weight")
    tied = "output.weight" not in names or (
        config.get("tie_word_embeddings", False) and _same_tensor(names["output.weight"], names["token_embd.weight"]))
    if arch == "gemma3" and not tied:
        raise BadInput("Gemma 3 in GGUF always ties lm_head to the embeddings, but this lm_head differs")
    if tied:
        plan = [p for p in plan if p[0] != "output.weight"]
    n_rows = names["token_embd.weight"][3][0]
    key = lambda p: (0, 0, "") if p[0] == "token_embd.weight" else (  # noqa: E731
        (2, 0, "") if p[0].startswith("output") else (1, int(p[0].split(".")[1]), p[0]))
    plan.sort(key=key)
    return plan, tied, n_rows


def _entries(extra: list[tuple[str, np.ndarray]], plan: list[tuple[str, Path, str, tuple]], outtype: str) -> list:
    """(gguf name, source, qtype, shape) of every tensor: the generated ones, then the planned ones."""
    entries = []  # (gguf name, source, qtype, shape)
    for target, arr in extra:
        entries.append((target, arr, "f32", arr.shape))
    for target, shard, hf, shape in plan:
        entries.append((target, (shard, hf), "f32" if is_f32(target, len(shape)) else outtype, shape))
    return entries


def _write_header(w, entries: list) -> None:
    """Tensor infos, then header, key-values and tensor infos to the file."""
    import gguf

    raw = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
           "bf16": gguf.GGMLQuantizationType.BF16}
    for target, _, qtype, shape in entries:
        nbytes = int(np.prod(shape)) * (4 if qtype == "f32" else 2)
        w.add_tensor_info(target, shape, np.dtype(np.float32 if qtype == "f32" else np.float16), nbytes,
                          raw_dtype=raw[qtype])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()


def _write_tensor_data(w, entries: list, arch: str, config: dict) -> None:
    """Pass 2: one tensor at a time from its shard, transformed as llama.cpp expects."""
    import torch
    from safetensors import safe_open

    handles = {}
    try:
        for target, source, qtype, _ in entries:
            if isinstance(source, np.ndarray):
                w.write_tensor_data(source.astype(np.float32))
                continue
            shard, hf = source
            if shard not in handles:
                handles[shard] = safe_open(str(shard), framework="pt").__enter__()
            with torch.no_grad():
                t = transform(arch, target, handles[shard].get_tensor(hf), config)
            w.write_tensor_data(to_numpy(t, qtype))
    finally:
        for h in handles.values():
            h.__exit__(None, None, None)


def _same_tensor(a: tuple, b: tuple) -> bool:
    from safetensors import safe_open

    if a[3] != b[3]:
        return False
    with safe_open(str(a[1]), framework="pt") as fa, safe_open(str(b[1]), framework="pt") as fb:
        return bool((fa.get_tensor(a[2]) == fb.get_tensor(b[2])).all())


def _safe_name(name: str, vocab: Vocab) -> str:
    """general.name, chosen so llama.cpp tokenizes like the Hugging Face tokenizer.

    llama.cpp keys a tokenizer quirk on the *name*: when it contains "phi3"/"phi-3", every
    special token strips the whitespace after it (as the released Phi-3 tokenizer's
    rstrip=True tokens do), and the Phi-3 tokens <unk>, <s>, </s>, <|endoftext|> must exist.
    So the name carries "phi3" exactly when the tokenizer behaves that way.
    """
    has_phi3 = re.search(r"(?i)phi-?3", name) is not None
    phi3_tokens = {"<unk>", "<s>", "</s>", "<|endoftext|>"} <= set(vocab.tokens)
    if has_phi3 and not (vocab.rstrip_special and phi3_tokens):
        return re.sub(r"(?i)phi-?3", "phi_3", name)
    if not has_phi3 and vocab.rstrip_special and phi3_tokens and vocab.model == "llama":
        return f"{name} (phi3)"
    return name
