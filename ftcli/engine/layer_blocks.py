"""A decoder layer recomputed as two checkpointed blocks: attention, then MLP.

A layer checkpointed whole recomputes all its activations before the backward of its MLP starts, so
the attention's saved tensors (norm output, q/k/v, attention output) sit in memory through the MLP's
backward, where the peak is. Checkpointing the two halves separately keeps the hidden state between
them as a second checkpoint (offloaded to the host like the first, so it costs no GPU memory), and only
one half's activations exist at a time (ftcli/engine/memory.py prices both; docs/speed.md has the figures).

Each half is "norm, sublayer, (norm), residual add", so its gradient is the same as the whole layer's.
The MLP half treats every token on its own, so ftcli/engine/offload.py may also recompute it in token chunks.
Only the families whose layer forward we know are split (the `model_type`s in LAYOUTS); any other
layer is checkpointed whole.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from functools import partial

import torch


@dataclass(frozen=True)
class Layout:
    """Submodule names of one decoder layer, in call order; a name a layer lacks is skipped."""

    attention_in: str
    attention_out: tuple[str, ...]
    mlp_in: str
    mlp_out: tuple[str, ...]


_PRE_NORM = Layout("input_layernorm", ("resid_attn_dropout",), "post_attention_layernorm", ("resid_mlp_dropout",))
_SANDWICH = Layout("input_layernorm", ("post_attention_layernorm",), "pre_feedforward_layernorm",
                   ("post_feedforward_layernorm",))
LAYOUTS = {"llama": _PRE_NORM, "mistral": _PRE_NORM, "qwen2": _PRE_NORM, "qwen3": _PRE_NORM, "phi3": _PRE_NORM,
           "gemma3": _SANDWICH, "gemma3_text": _SANDWICH}


def layout_for(config) -> Layout | None:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return LAYOUTS.get(getattr(text, "model_type", None))


def mlp_output_only_added(layout: Layout) -> bool:
    """Whether the MLP's output goes straight into the residual add (through dropout at most): then no backward
    reads its value, and a recompute may skip making it (kernels/lora_mlp.py `output_unused`)."""
    return all("dropout" in name for name in layout.mlp_out)


def fits(layer, layout: Layout) -> bool:
    """Whether `layer` has the layout's modules (a vision tower's layers, say, do not)."""
    return all(hasattr(layer, name) for name in (layout.attention_in, "self_attn", layout.mlp_in, "mlp"))


def mlp_block_modules(layer, layout: Layout) -> list:
    """The modules of the MLP block, which treats every token on its own (so it may recompute in chunks)."""
    names = (layout.mlp_in, "mlp", *layout.mlp_out)
    return [getattr(layer, name) for name in names if getattr(layer, name, None) is not None]


def _run(layer, names, x):
    for name in names:
        module = getattr(layer, name, None)
        if module is not None:
            x = module(x)
    return x


def _attention_block(hidden_states, *, layer, layout, **kwargs):
    x = getattr(layer, layout.attention_in)(hidden_states)
    x = layer.self_attn(hidden_states=x, **kwargs)[0]
    return hidden_states + _run(layer, layout.attention_out, x)


def _mlp_block(hidden_states, *, layer, layout):
    x = layer.mlp(getattr(layer, layout.mlp_in)(hidden_states))
    return hidden_states + _run(layer, layout.mlp_out, x)


def _split_forward(self, hidden_states, *args, **kwargs):
    attention_ckpt, mlp_ckpt, layout, whole = self._ftcli_blocks
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if args or cache is not None or not (self.training and torch.is_grad_enabled()):
        return whole(hidden_states, *args, **kwargs)  # generation, eval, or a call we do not know: as written
    h = attention_ckpt(partial(_attention_block, layer=self, layout=layout, **kwargs), hidden_states)
    return mlp_ckpt(partial(_mlp_block, layer=self, layout=layout), h)


def install(layer, layout: Layout, attention_ckpt, mlp_ckpt) -> None:
    """Make `layer` recompute as two blocks. `*_ckpt(function, hidden_states)` checkpoints one block."""
    remove(layer)
    layer.gradient_checkpointing = False  # transformers must not checkpoint the whole layer as well
    layer._ftcli_blocks = (attention_ckpt, mlp_ckpt, layout, layer.forward)
    layer._ftcli_forward_before = layer.__dict__.get("forward")  # an instance-level forward someone bound
    layer.forward = types.MethodType(_split_forward, layer)


def remove(layer) -> None:
    """Undo `install` (nothing if it was not installed)."""
    if layer.__dict__.pop("_ftcli_blocks", None) is None:
        return
    before = layer.__dict__.pop("_ftcli_forward_before")
    if before is None:
        del layer.forward  # the class's forward again
    else:
        layer.forward = before


def is_split(layer) -> bool:
    return "_ftcli_blocks" in layer.__dict__
