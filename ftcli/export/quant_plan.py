"""Per-tensor type plans: which ggml type every tensor of a GGUF gets.

A plan is a dict `tensor name -> ggml type name` for every tensor llama.cpp would quantise,
handed to llama.cpp's quantiser as one exact-name override per tensor (quantize.py). The
standard presets reproduce llama.cpp's own mixes (`llama_tensor_get_type` in
src/llama-quant.cpp of the llama.cpp that llama-cpp-python 0.3.36 vendors) for dense models:

* q4_k_m / q5_k_m: attn_v (and fused attn_qkv) and ffn_down of the layers `use_more_bits`
  picks (first and last eighth, every third in between) in Q6_K;
* q3_k_m: attn_v of the first two layers Q5_K, the rest Q4_K; ffn_down Q4_K (first
  sixteenth Q5_K); attn_output Q4_K;
* q2_k: attn_v Q4_K with 4+ query heads per KV head, else Q3_K; ffn_down and attn_output Q3_K;
* output.weight (or token_embd when the embeddings are tied) in Q6_K, Q8_0 when its rows do
  not divide into the type's blocks;
* then llama.cpp's shape fallback (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, Q2_K/Q3_K -> Q4_0,
  F16 when even 32 does not divide).

tests/export/test_quant_plan.py checks these plans byte for byte against llama.cpp's quantiser.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# preset -> (llama_ftype written to general.file_type, default ggml type of the matrices)
FTYPES = {"q8_0": (7, "Q8_0"), "q6_k": (18, "Q6_K"), "q5_k_m": (17, "Q5_K"), "q4_k_m": (15, "Q4_K"),
          "q4_0": (2, "Q4_0"), "q3_k_m": (12, "Q3_K"), "q2_k": (10, "Q2_K")}
_FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0", "Q2_K": "Q4_0", "Q3_K": "Q4_0",
             "Q4_0": "F16", "Q4_1": "F16", "Q5_0": "F16", "Q5_1": "F16", "Q8_0": "F16"}


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]     # ggml order: row length (ne0) first
    type: str                  # type in the base file
    bytes: int

    @property
    def row_length(self) -> int:
        return self.shape[0]


@dataclass
class BaseFile:
    """What a plan needs to know of the 16-bit base GGUF."""
    path: Path
    tensors: list[TensorInfo]
    n_layer: int
    n_gqa: int
    header_bytes: int
    alignment: int

    @property
    def tied(self) -> bool:
        return not any(t.name == "output.weight" for t in self.tensors)


def read_base(path: Path) -> BaseFile:
    import gguf

    reader = gguf.GGUFReader(str(path))
    arch = _field(reader, "general.architecture")
    n_layer = int(_field(reader, f"{arch}.block_count"))
    heads = int(_field(reader, f"{arch}.attention.head_count") or 1)
    kv = int(_field(reader, f"{arch}.attention.head_count_kv") or heads)
    alignment = int(_field(reader, "general.alignment") or 32)
    tensors = [TensorInfo(t.name, tuple(int(x) for x in t.shape), t.tensor_type.name, int(t.n_bytes))
               for t in reader.tensors]
    header = int(min(t.data_offset for t in reader.tensors)) if reader.tensors else Path(path).stat().st_size
    return BaseFile(Path(path), tensors, n_layer, max(1, heads // max(1, kv)), header, alignment)


def _field(reader, key: str):
    f = reader.fields.get(key)
    if f is None:
        return None
    value = f.parts[f.data[0]]
    return bytes(value).decode() if f.types[0].name == "STRING" else value[0]


def quantizable(t: TensorInfo) -> bool:
    """llama.cpp's rule: 2-D+ weights except norms (and a few tensors our architectures do not have)."""
    return len(t.shape) >= 2 and t.name.endswith("weight") and "_norm.weight" not in t.name


def role(name: str) -> str:
    """llama.cpp's tensor category: token_embd, output, attn_qkv, attn_v, attn_k, attn_q, attn_output,
    ffn_up, ffn_gate, ffn_down, other."""
    if name == "output.weight":
        return "output"
    if name == "token_embd.weight":
        return "token_embd"
    for key in ("attn_qkv.weight", "attn_v.weight", "attn_k.weight", "attn_q.weight", "attn_output.weight"):
        if key in name:
            return key.removesuffix(".weight")
    for key in ("ffn_up", "ffn_gate", "ffn_down"):
        if key in name:
            return key
    return "other"


def layer_of(name: str) -> int | None:
    m = re.match(r"blk\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def _more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def fallback(qtype: str, row_length: int) -> str:
    """llama.cpp's type for a tensor whose rows do not divide into `qtype`'s blocks."""
    from ftcli.export.ggml import block_of

    if row_length % block_of(qtype)[0] == 0:
        return qtype
    if qtype not in _FALLBACK:
        raise ValueError(f"rows of {row_length} values cannot be stored as {qtype}")
    used = _FALLBACK[qtype]
    return used if row_length % block_of(used)[0] == 0 else "F16"


def standard_plan(base: BaseFile, preset: str, imatrix: bool = False) -> dict[str, str]:
    """llama.cpp's own type for every quantisable tensor of `base` under `preset` (shape fallbacks applied)."""
    return with_fallbacks(base, wanted_types(base, preset, imatrix))[0]


def with_fallbacks(base: BaseFile, wanted: dict[str, str]) -> tuple[dict[str, str], list[dict]]:
    """The plan after llama.cpp's shape fallbacks, and one report entry per tensor that fell back."""
    from ftcli.export.ggml import block_of

    plan, fell = {}, []
    for t in base.tensors:
        if t.name in wanted:
            plan[t.name] = fallback(wanted[t.name], t.row_length)
            if plan[t.name] != wanted[t.name]:
                fell.append({"tensor": t.name, "row_length": t.row_length, "block": block_of(wanted[t.name])[0],
                             "wanted": wanted[t.name], "used": plan[t.name]})
    return plan, fell


def wanted_types(base: BaseFile, preset: str, imatrix: bool = False) -> dict[str, str]:
    """llama.cpp's mix for `preset` before the shape fallbacks."""
    from ftcli.export.ggml import block_of

    default = FTYPES[preset][1]
    plan: dict[str, str] = {}
    i_v = 0
    n_v = sum(1 for t in base.tensors if quantizable(t) and role(t.name) in ("attn_v", "attn_qkv"))
    n = base.n_layer
    for t in base.tensors:
        if not quantizable(t):
            continue
        r, new = role(t.name), default
        if r == "output" or (base.tied and r == "token_embd"):
            new = "Q8_0" if t.row_length % block_of(default)[0] else ("Q6_K" if default != "Q8_0" else "Q8_0")
        elif r in ("attn_v", "attn_qkv"):
            if preset == "q2_k":
                new = "Q4_K" if base.n_gqa >= 4 else "Q3_K"
            elif preset == "q3_k_m":
                new = "Q5_K" if i_v < 2 else "Q4_K"
            elif preset in ("q4_k_m", "q5_k_m") and _more_bits(i_v, n_v):
                new = "Q6_K"
            i_v += 1
        elif r == "ffn_down":
            i = layer_of(t.name) or 0
            if preset == "q2_k":
                new = "Q3_K"
            elif preset == "q3_k_m":
                new = "Q5_K" if i < n // 16 else "Q4_K"
            elif preset in ("q4_k_m", "q5_k_m") and _more_bits(i, n):
                new = "Q6_K"
            elif preset == "q4_0" and imatrix and i < n // 8:
                new = "Q4_1"
        elif r == "attn_output":
            new = {"q2_k": "Q3_K", "q3_k_m": "Q4_K"}.get(preset, new)
        plan[t.name] = new
    return plan


def planned_bytes(base: BaseFile, plan: dict[str, str]) -> int:
    """The size of the GGUF llama.cpp writes for `plan` (header as in the base, tensors padded to the alignment)."""
    from ftcli.export.ggml import tensor_bytes

    total = base.header_bytes
    for t in base.tensors:
        size = tensor_bytes(plan[t.name], t.shape) if t.name in plan else t.bytes
        total += -(-size // base.alignment) * base.alignment
    return total


def weight_count(base: BaseFile) -> int:
    return int(sum(np.prod(t.shape) for t in base.tensors))


def type_counts(plan: dict[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for qtype in plan.values():
        counts[qtype] = counts.get(qtype, 0) + 1
    return dict(sorted(counts.items()))
