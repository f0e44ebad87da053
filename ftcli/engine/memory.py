"""Pre-flight estimate of peak GPU memory for a recipe, from the model config alone.

peak ≈ weights + trainable state (LoRA or full weights: parameter, gradient, two Adam
moments) + activations (all layers, or one checkpoint per layer plus one layer, or one
block of a split layer, being recomputed) + the loss head + a fixed CUDA workspace. The
activation coefficients are counts of the tensors a Hugging Face decoder layer saves for backward; docs/memory.md
records how close the estimate came to measured peaks on an H200.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ftcli.engine import layer_blocks

GiB = 1024**3
WORKSPACE_BYTES = 0.5 * GiB      # cuBLAS workspace and allocator slack (the CUDA context is not counted)
NF4_BYTES_PER_PARAM = 0.5 + 0.03  # 4-bit values, plus double-quantised absmax per 64-block
LOSS_CHUNK_BYTES = 256 * 2**20   # logits of one chunk of the fused loss (kernels/fused_linear_ce.CHUNK_BYTES)
LORA_MLP_CHUNK_ROWS = 2048       # rows of the fused LoRA MLP's product made at a time (kernels/lora_mlp.CHUNK_ROWS)
MIN_CHUNK_ROWS = 1024            # a token chunk of a split MLP block's recompute has at least this many tokens


@dataclass
class Shape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    sandwich_norms: bool = False  # Gemma: RMSNorm after attention and after the MLP too
    qk_norm: bool = False         # Qwen3, Gemma 3: RMSNorm on q and k per head
    masked_attention: bool = False  # sliding-window layers: SDPA gets a mask, k/v are expanded to q's heads
    splits_blocks: bool = False   # offloaded recompute runs attention and MLP as two blocks (ftcli/engine/layer_blocks.py)

    @classmethod
    def from_config(cls, config) -> "Shape":
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        heads = text.num_attention_heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
        model_type = getattr(text, "model_type", "")
        layer_types = getattr(text, "layer_types", None) or []
        return cls(hidden=text.hidden_size, intermediate=text.intermediate_size, layers=text.num_hidden_layers,
                   heads=heads, kv_heads=getattr(text, "num_key_value_heads", None) or heads, head_dim=head_dim,
                   vocab=text.vocab_size, tied=bool(getattr(text, "tie_word_embeddings", False)),
                   sandwich_norms=model_type.startswith(("gemma2", "gemma3")),
                   qk_norm=model_type.startswith(("qwen3", "gemma3")),
                   masked_attention=any("sliding" in t for t in layer_types),
                   splits_blocks=layer_blocks.layout_for(text) is not None)

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each projection of one decoder layer."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        h, i = self.hidden, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def layer_params(self) -> int:
        return sum(a * b for a, b in self.linear_shapes().values()) + 2 * self.hidden

    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)


@dataclass
class Estimate:
    weights: float
    trainable_state: float
    activations: float   # kept from the forward until the backward: whole layers, and recomputed layers' inputs
    working: float       # the largest short-lived memory on top: the loss head at the end of the forward,
                         # a layer's backward temporaries, or one recomputed layer (kept layers freed by then)
    workspace: float
    trainable_params: int

    @property
    def total(self) -> float:
        return self.weights + self.trainable_state + self.activations + self.working + self.workspace

    def rows(self) -> list[tuple[str, float]]:
        return [("weights", self.weights), ("trainable state (param, grad, Adam)", self.trainable_state),
                ("activations", self.activations), ("loss head / backward working memory", self.working),
                ("CUDA workspace", self.workspace), ("total", self.total)]


def lora_params(shape: Shape, r: int, targets) -> int:
    names = shape.linear_shapes()
    chosen = names if targets == "all-linear" else {k: v for k, v in names.items() if k in set(targets)}
    return shape.layers * sum(r * (a + b) for a, b in chosen.values())


def activation_bytes_per_token_layer(shape: Shape, dtype_bytes: int, fused_kernels: bool = False) -> float:
    """Tensors one decoder layer keeps for backward, per token (its attention and MLP blocks)."""
    return sum(activation_bytes_per_token_block(shape, dtype_bytes, fused_kernels))


def activation_bytes_per_token_block(shape: Shape, dtype_bytes: int, fused_kernels: bool = False) -> tuple:
    """(attention block, MLP block): tensors each half of a decoder layer keeps for backward, per token.

    Hugging Face + PEFT: residual in/out and the two norm outputs (4h), q/k/v before and after
    RoPE and the attention output (2q + 4kv + q), the MLP's gate, up, activation and product
    (4i), and the fp32 copies the RMSNorms save (2 norms x 2h x 4 bytes).
    ftcli's kernels: the two norm inputs and outputs (4h), attention q and output, its
    contiguous copy for o_proj and k/v (3q + 2kv), gate and up (2i: the fused LoRA MLP recomputes
    their product in backward). With the product kept (3i) this count gave 1.125 GiB per layer at
    8192 tokens on the Llama-3.1-8B shape; an H200 measured 1.0-1.08.
    Family extras: Gemma's two more norms (2h), q/k norms (q + kv), and k/v expanded to q's
    heads where attention takes a mask (2(q - kv)). With them the estimate came within -3..+5%
    of the peaks measured on an H200 for the Llama-3.1-8B, Qwen3-8B and Gemma-3-4B shapes
    (docs/benchmarks.md).
    """
    h, i = shape.hidden, shape.intermediate
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    sandwich = h if shape.sandwich_norms else 0  # one more norm in each block
    attention_extra = sandwich + (q + kv if shape.qk_norm else 0) + (2 * (q - kv) if shape.masked_attention else 0)
    if fused_kernels:
        return (dtype_bytes * (2 * h + 3 * q + 2 * kv + attention_extra), dtype_bytes * (2 * h + 2 * i + sandwich))
    norm_fp32 = 2 * h * 4  # each block's RMSNorm keeps an fp32 copy of its input and output
    return (dtype_bytes * (2 * h + 3 * q + 4 * kv + attention_extra) + norm_fp32,
            dtype_bytes * (2 * h + 4 * i + sandwich) + norm_fp32)


def mlp_backward_temporaries_per_token(shape: Shape, dtype_bytes: int) -> float:
    """An MLP backward's activation gradients (gate, up) and its input gradient."""
    return (2 * shape.intermediate + shape.hidden) * dtype_bytes


def fused_mlp_backward_temporaries_per_token(shape: Shape, dtype_bytes: int, tokens: int) -> float:
    """The same with the fused LoRA MLP (kernels/lora_mlp.py): gate and up take their own gradients in place, so
    beside them live the output's gradient, the input's, and one row chunk of the product or its gradient."""
    chunk = min(1.0, LORA_MLP_CHUNK_ROWS / max(tokens, 1))
    return (2 * shape.hidden + shape.intermediate * chunk) * dtype_bytes


def block_backward_bytes_per_token(shape: Shape, dtype_bytes: int, fused_kernels: bool) -> tuple:
    """(attention, MLP): each block's activations plus its backward's temporaries, per token (attention's
    q/k/v and output gradients; the MLP's as above)."""
    attention, mlp = activation_bytes_per_token_block(shape, dtype_bytes, fused_kernels)
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    return (attention + (2 * q + 2 * kv + shape.hidden) * dtype_bytes,
            mlp + mlp_backward_temporaries_per_token(shape, dtype_bytes))


def mlp_chunks_wanted(shape: Shape) -> int:
    """How many token chunks a split layer's MLP block should recompute in to stay under the attention
    block's peak."""
    attention, mlp = block_backward_bytes_per_token(shape, 2, fused_kernels=True)
    return max(1, math.ceil(mlp / attention))


def offloaded_bytes(shape: Shape, *, batch: int, seq: int, recomputed_layers: int, split: bool,
                    dtype_bytes: int = 2, **_) -> float:
    """Pinned host memory for the offloaded hidden states: one per recomputed layer, two when split."""
    return recomputed_layers * (2 if split else 1) * batch * seq * shape.hidden * dtype_bytes


def token_chunks(wanted: int, rows: int, min_rows: int | None = None) -> int:
    """`wanted` chunks of `rows` tokens, as long as each keeps `min_rows` (default MIN_CHUNK_ROWS: smaller
    GEMMs lose efficiency)."""
    return max(1, min(wanted, rows // max(1, min_rows or MIN_CHUNK_ROWS)))


def recompute_peak_bytes(shape: Shape, tokens: int, dtype_bytes: int, fused_kernels: bool, split: bool) -> float:
    """Memory of one recomputed layer during its backward. Split into two blocks, only one block's
    activations exist at a time, and the MLP block's only one token chunk's."""
    attention, mlp = block_backward_bytes_per_token(shape, dtype_bytes, fused_kernels)
    if split:
        return tokens * max(attention, mlp / token_chunks(mlp_chunks_wanted(shape), tokens))
    # whole: the attention's activations wait through the MLP's backward (its temporaries come later)
    if fused_kernels:
        return tokens * (sum(activation_bytes_per_token_block(shape, dtype_bytes, True))
                         + fused_mlp_backward_temporaries_per_token(shape, dtype_bytes, tokens))
    return tokens * (activation_bytes_per_token_block(shape, dtype_bytes, fused_kernels)[0] + mlp)


def estimate(shape: Shape, *, batch: int, seq: int, dtype_bytes: int = 2, load_in_4bit: bool = False,
             lora_r: int | None = 16, lora_targets="all-linear", gradient_checkpointing: bool = True,
             recomputed_layers: int | None = None, offload: bool = False, split: bool = False,
             fused_kernels: bool = False) -> Estimate:
    """`recomputed_layers` (default: all when gradient_checkpointing, else none) recompute in backward;
    with `offload` their saved inputs live in CPU memory, and with `split` too, they recompute as an
    attention and an MLP block (where `shape.splits_blocks`)."""
    tokens = batch * seq
    layer_weights = shape.layers * shape.layer_params()
    embed = shape.embedding_params()
    if load_in_4bit:
        weights = layer_weights * NF4_BYTES_PER_PARAM + embed * dtype_bytes
    else:
        weights = (layer_weights + embed) * dtype_bytes
    if lora_r is None:  # full finetune: gradients in the weights' dtype, Adam moments in fp32
        trainable = layer_weights + embed
        state = trainable * (dtype_bytes + 8)
    else:  # LoRA weights, gradients and both Adam moments in fp32
        trainable = lora_params(shape, lora_r, lora_targets)
        state = trainable * 16
    per_layer = activation_bytes_per_token_layer(shape, dtype_bytes, fused_kernels) * tokens
    if recomputed_layers is None:
        recomputed_layers = shape.layers if gradient_checkpointing else 0
    recomputed = max(0, min(recomputed_layers, shape.layers))
    # kept layers hold all their activations; a recomputed one holds its input (unless offloaded),
    # and one recomputed layer's (or, split, one block's) activations exist at a time in backward
    saved_inputs = 0 if offload else recomputed * tokens * shape.hidden * dtype_bytes
    kept = (shape.layers - recomputed) * per_layer
    transient = tokens * (fused_mlp_backward_temporaries_per_token(shape, dtype_bytes, tokens) if fused_kernels
                          else mlp_backward_temporaries_per_token(shape, dtype_bytes))  # a kept layer's backward
    if fused_kernels:  # final norm output and its gradient, one chunk of logits and its softmax gradient
        chunk_rows = 1 << (max(1, LOSS_CHUNK_BYTES // (shape.vocab * dtype_bytes)).bit_length() - 1)
        loss_head = 2 * tokens * shape.hidden * dtype_bytes + 2 * min(tokens, chunk_rows) * shape.vocab * dtype_bytes
    else:  # transformers materialises the logits, their fp32 upcast and its gradient
        loss_head = tokens * shape.vocab * (dtype_bytes + 8)
    # Backward runs the kept (last) layers first and frees them, so a recomputed layer never coexists with them.
    split = split and offload and shape.splits_blocks
    recompute = recompute_peak_bytes(shape, tokens, dtype_bytes, fused_kernels, split) - kept if recomputed else 0
    working = max(loss_head, transient if kept else 0, recompute)
    return Estimate(weights=weights, trainable_state=state, activations=kept + saved_inputs, working=working,
                    workspace=WORKSPACE_BYTES, trainable_params=trainable)


def flops_per_token(config, seq: int, lora_params: int) -> float:
    """Model FLOPs per token of a LoRA step: 4N + 6·L·d_attn·T + 6·N_lora (research/kernels.md §1.2)."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    q, kv = heads * head_dim, config.num_key_value_heads * head_dim
    block = layers * (h * q + 2 * h * kv + q * h + 3 * h * i)
    matmul_params = block + config.vocab_size * h
    return 4 * matmul_params + 6 * layers * q * seq + 6 * lora_params


# Dense bf16 matrix throughput by GPU name (datasheet), for MFU; unknown GPUs get no MFU.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "L40S": 362e12, "4090": 165e12}


def peak_flops(device_name: str) -> float | None:
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in device_name), None)
