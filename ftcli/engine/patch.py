"""Apply ftcli's kernels to a loaded model *instance* (never to transformers' classes), reversibly.

    report = patch.apply(model, ops="auto", log=print)   # model: a causal LM or a PEFT model of one
    ...train...
    patch.undo(report)

What is replaced (per module instance, by binding a new `forward` on the instance):
  rms_norm         every <Family>RMSNorm (Gemma's in `(1 + w)` fp32 mode; q_norm/k_norm included)
  rope             every attention module: the same forward with our q+k RoPE
  window_attention the decoder model: tells the layers when the batch is one row of packed sequences (one
                   varlen FlashAttention call each, no mask) or plain rows (sliding layers: a windowed call)
  swiglu / geglu   every MLP: down(act(gate(x)) * up(x)); Phi-3's fused gate_up_proj read in place. With
                   lora_linear too (Triton), LoRA gate/up/down run as one Function that recomputes
                   act(gate) * up in backward instead of saving it (kernels/lora_mlp.py)
  lora_linear      every PEFT LoRA Linear (plain or bitsandbytes 4-bit base) whose active adapter has
                   dropout 0, no DoRA/variant, no LoRA bias; others keep PEFT's forward. Checked again at
                   each call: disabled/merged adapters, mixed-adapter batches fall back to PEFT.
  fused_linear_ce  the causal-LM forward (ftcli/engine/causal_lm_head.py): with labels in training, loss =
                   fused lm_head + CE honouring `num_items_in_batch`; with `fused_lm_head=True` (TRL >= 1.16's
                   protocol), per-token log-probs/entropy/accuracy from our chunked op. Otherwise (generation,
                   eval, no labels) the model's own forward runs unchanged.

TRL's trainers install their own fused LM head (`add_fused_lm_head`) on the instance when they are
built. If `apply` finds it, it takes that call path over (same outputs, same temperature) unless
TRL asked for something we do not do (fp32 lm_head); call `apply` after building the trainer.

`ops`: "auto" = every op, Triton where it can run (CUDA, or CPU under TRITON_INTERPRET=1), the
plain-PyTorch references elsewhere (so CPU runs exercise the same code path); True = every op and
Triton required (KernelsUnavailable otherwise); False = nothing; a list = those ops only.
Unknown architectures are left unpatched with a one-line notice.
"""

from __future__ import annotations

import functools
import sys
import types
from dataclasses import dataclass, field
from typing import Callable

import torch

from ftcli import kernels
from ftcli.engine import causal_lm_head, window_attention
from ftcli.models.hf_compat import hub_kernels_off
from ftcli.recipe import KERNEL_OPS

SUPPORTED = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3",
             "gemma3_text": "gemma3", "phi3": "phi3"}
ALL_OPS = KERNEL_OPS
_MISSING = object()


class KernelsUnavailable(ValueError):
    """`train.kernels: true` (or impl="triton") where Triton cannot run, or an unknown op name."""


@dataclass
class PatchReport:
    architecture: str | None = None
    impl: str = "none"                      # "triton" | "reference" | "none"
    requested: list[str] = field(default_factory=list)
    replaced: dict[str, list[str]] = field(default_factory=dict)   # op -> module names
    notices: list[str] = field(default_factory=list)
    _undo: list = field(default_factory=list, repr=False)

    @property
    def applied(self) -> list[str]:
        return [op for op, names in self.replaced.items() if names]

    def as_dict(self) -> dict:
        """What the run manifest records."""
        return {"architecture": self.architecture, "impl": self.impl, "requested": list(self.requested),
                "ops": {op: len(names) for op, names in self.replaced.items() if names},
                "modules": {op: list(names) for op, names in self.replaced.items() if names},
                "notices": list(self.notices)}

    def summary(self) -> str:
        if not self.applied:
            return "kernels: none applied" + (f" ({self.notices[0]})" if self.notices else "")
        ops = ", ".join(f"{op} x{len(self.replaced[op])}" for op in self.applied)
        return f"kernels ({self.impl}, {self.architecture}): {ops}"


def apply(model, ops="auto", log: Callable[[str], None] = lambda _: None, impl: str = "auto") -> PatchReport:
    """Patch `model` in place; returns what was replaced. `impl`: "auto" | "triton" | "reference"."""
    requested = _resolve_ops(ops)
    report = PatchReport(requested=list(requested))
    if not requested:
        return report
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    hub_kernels_off(lm)  # else its next train()/eval() would unbind what we bind here
    config = getattr(lm, "config", None)
    model_type = getattr(config, "model_type", None)
    family = SUPPORTED.get(model_type)
    report.architecture = model_type
    if family is None:
        report.notices.append(f"kernels: architecture {model_type or type(lm).__name__!r} is not supported "
                              f"({', '.join(SUPPORTED)}); training unpatched")
        log(report.notices[-1])
        return report
    device = next((p.device for p in lm.parameters()), torch.device("cpu"))
    if ops is True and impl == "auto":
        impl = "triton"
    if impl == "auto":
        impl = "triton" if kernels.triton_runnable(device) else "reference"
    if impl == "triton" and not kernels.triton_runnable(device):
        raise KernelsUnavailable(f"Triton kernels cannot run on {device.type} here (need CUDA, or "
                                 "TRITON_INTERPRET=1 on CPU); use train.kernels: auto to fall back")
    report.impl = impl
    fns = _functions(impl)
    for op in requested:
        report.replaced.setdefault(op, [])
    for name, module in lm.named_modules():
        if getattr(module, "_ftcli_patched", None):
            continue
        cls = type(module).__name__
        if "rms_norm" in requested and cls.endswith("RMSNorm") and hasattr(module, "weight"):
            _bind(report, "rms_norm", name, module, functools.partial(
                _norm_forward, fn=fns["rms_norm"], gemma=cls.startswith("Gemma")))
        elif "rope" in requested and cls.endswith("Attention") and hasattr(module, "o_proj"):
            _bind(report, "rope", name, module, functools.partial(_attention_forward, rope=fns["rope"],
                                                                  family=family))
        elif cls.endswith("MLP") and hasattr(module, "down_proj"):
            act = _activation(module)
            if act in requested and act == "swiglu" and hasattr(module, "gate_up_proj"):
                _bind(report, act, name, module, functools.partial(_packed_mlp_forward, fn=fns["swiglu_packed"]))
            elif act in requested and hasattr(module, "gate_proj"):
                fused = fns["lora_mlp"] if "lora_linear" in requested and impl == "triton" else None
                _bind(report, act, name, module, functools.partial(_mlp_forward, fn=fns[act], act=act, fused=fused))
        elif "lora_linear" in requested and _is_lora_linear(module):
            if _lora_fusable(module):
                _bind(report, "lora_linear", name, module, functools.partial(_lora_forward, fn=fns["lora_linear"]))
            else:
                report.notices.append(f"lora_linear: {name} kept PEFT's forward (dropout, DoRA, bias or base type)")
    if "window_attention" in requested and "rope" in requested:
        _patch_decoder(report, lm, sliding=bool(getattr(config, "sliding_window", None)))
    if "fused_linear_ce" in requested:
        _patch_causal_lm(report, lm, fns)
    log(report.summary())
    for notice in report.notices[:3]:
        log(notice)
    return report


def packed_attention_blocker(model, ops) -> str | None:
    """Why packed rows of `model` would not run as variable-length FlashAttention once `ops` (train.kernels)
    are applied; None when they will. Elsewhere transformers' block-diagonal mask keeps them exact, slower."""
    requested = _resolve_ops(ops) if ops not in (False, None) else ()
    if not {"window_attention", "rope"} <= set(requested):
        return "train.kernels leaves out window_attention or rope"
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    if SUPPORTED.get(getattr(lm.config, "model_type", None)) is None:
        return f"architecture {lm.config.model_type!r} is not patched"
    param = next(lm.parameters())
    dtype = param.dtype if param.is_floating_point() else getattr(lm.config, "dtype", None) or torch.float32
    return window_attention.packed_path_blocker(lm.config, param.device, dtype)


def undo(report: PatchReport) -> None:
    """Put back every forward this report replaced (those still holding our function), newest first."""
    while report._undo:
        module, attr, previous, ours = report._undo.pop()
        if module.__dict__.get(attr) is not ours:
            continue  # someone (e.g. a trainer) wrapped it after us: leave theirs in place
        if previous is _MISSING:
            del module.__dict__[attr]
        else:
            module.__dict__[attr] = previous
        module.__dict__.pop("_ftcli_patched", None)
        module.__dict__.pop("_ftcli_fused_head", None)
    report.replaced = {op: [] for op in report.replaced}


# ---------------------------------------------------------------------------------------------
# plumbing


def _resolve_ops(ops) -> tuple[str, ...]:
    if ops is None or ops is False or (isinstance(ops, str) and ops.lower() in ("false", "off", "none")):
        return ()
    if ops is True or (isinstance(ops, str) and ops.lower() in ("auto", "true", "on", "all")):
        return ALL_OPS
    names = [ops] if isinstance(ops, str) else list(ops)
    unknown = [n for n in names if n not in ALL_OPS]
    if unknown:
        raise KernelsUnavailable(f"unknown kernel op(s) {unknown}; known: {', '.join(ALL_OPS)}")
    return tuple(n for n in ALL_OPS if n in names)


def _functions(impl: str) -> dict[str, Callable]:
    # The op modules load Triton: imported when a model is patched, not when the engine is imported.
    from ftcli.kernels import fused_linear_ce, geglu, lora_linear, lora_mlp, rms_norm, rope, swiglu

    ref = impl == "reference"
    pick = (lambda mod, name: getattr(mod, name + "_reference" if ref else name))
    return {"rms_norm": pick(rms_norm, "rms_norm"), "rope": pick(rope, "rope"), "swiglu": pick(swiglu, "swiglu"),
            "swiglu_packed": pick(swiglu, "swiglu_packed"), "geglu": pick(geglu, "geglu"),
            "ce": pick(fused_linear_ce, "fused_linear_cross_entropy"),
            "logprobs": pick(fused_linear_ce, "selected_logprobs"), "lora_linear": pick(lora_linear, "lora_linear"),
            "lora_mlp": pick(lora_mlp, "lora_mlp")}


def _bind(report, op, name, module, fn, attr="forward"):
    previous = module.__dict__.get(attr, _MISSING)
    ours = types.MethodType(fn, module)
    module.__dict__[attr] = ours
    module.__dict__["_ftcli_patched"] = op
    report._undo.append((module, attr, previous, ours))
    report.replaced.setdefault(op, []).append(name or type(module).__name__)
    return ours


def _patch_decoder(report, lm, sliding: bool) -> None:
    """Bind `_decoder_forward` on the module that runs the decoder layers."""
    decoder = getattr(lm, "model", None)
    if decoder is None or not hasattr(decoder, "layers") or getattr(decoder, "_ftcli_patched", None):
        return
    original = decoder.__dict__.get("forward") or types.MethodType(type(decoder).forward, decoder)
    _bind(report, "window_attention", "model", decoder, functools.partial(_decoder_forward, original=original,
                                                                                  sliding=sliding))


def _activation(mlp) -> str | None:
    act = getattr(mlp, "act_fn", None) or getattr(mlp, "activation_fn", None)
    kind = type(act).__name__
    if kind in ("SiLUActivation", "SiLU"):
        return "swiglu"
    if kind in ("GELUTanh", "PytorchGELUTanh") or (kind == "GELU" and getattr(act, "approximate", "") == "tanh"):
        return "geglu"
    return None


# ---- norms, attention, MLP


def _norm_forward(self, hidden_states, *, fn, gemma):
    eps = getattr(self, "variance_epsilon", None)
    return fn(hidden_states, self.weight, getattr(self, "eps", 1e-6) if eps is None else eps, gemma)


def _attention_forward(self, hidden_states, position_embeddings=None, attention_mask=None, cache=None, *, rope,
                       family, **kwargs):
    """transformers' attention forward for our families, with our RoPE (q_norm/k_norm, Phi-3 qkv, sliding)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if cache is None:
        cache = kwargs.pop("past_key_values", None)
    input_shape = hidden_states.shape[:-1]
    hidden_shape = (*input_shape, -1, self.head_dim)
    if family == "phi3":
        qkv = self.qkv_proj(hidden_states)
        q_end = self.config.num_attention_heads * self.head_dim
        k_end = q_end + self.num_key_value_heads * self.head_dim
        q, k, v = qkv[..., :q_end], qkv[..., q_end:k_end], qkv[..., k_end:]
    else:
        q, k, v = self.q_proj(hidden_states), self.k_proj(hidden_states), self.v_proj(hidden_states)
    q, k, v = q.view(hidden_shape), k.view(hidden_shape), v.view(hidden_shape)
    if hasattr(self, "q_norm"):  # Qwen3, Gemma 3: per-head RMSNorm before RoPE
        q, k = self.q_norm(q), self.k_norm(k)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    cos, sin = position_embeddings
    q, k = rope(q, k, cos, sin)
    if cache is not None:
        k, v = cache.update(k, v, self.layer_idx, kwargs=kwargs)
    eager = sys.modules[type(self).__module__].eager_attention_forward
    interface = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager)
    if family in ("mistral", "phi3"):
        kwargs["sliding_window"] = getattr(self.config, "sliding_window", None)
    elif family in ("qwen2", "qwen3", "gemma3"):
        kwargs["sliding_window"] = self.sliding_window
    rows = kwargs.pop(window_attention.ROWS_KWARG, False) if cache is None else False
    window = kwargs.get("sliding_window")
    if isinstance(rows, window_attention.PackedRows) and window_attention.available(q, self):
        out, weights = window_attention.attend(q, k, v, window=window, scale=self.scaling, rows=rows), None
    elif rows is True and window and q.shape[2] > window and window_attention.available(q, self):
        out, weights = window_attention.attend(q, k, v, window=window, scale=self.scaling), None
    else:
        out, weights = interface(self, q, k, v, attention_mask,
                                 dropout=self.attention_dropout if self.training else 0.0, scaling=self.scaling,
                                 **kwargs)
    out = out.reshape(*input_shape, -1).contiguous()
    return self.o_proj(out), weights


def _decoder_forward(self, *args, original, sliding, **kwargs):
    """The decoder model's forward, telling its layers whether the rows are plain or packed
    (ftcli/engine/window_attention.py)."""
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    kwargs[window_attention.ROWS_KWARG] = not args and window_attention.row_layout(
        kwargs.get("attention_mask"), kwargs.get("position_ids"), cache, plain_needed=sliding)
    return original(*args, **kwargs)


def _mlp_forward(self, x, *, fn, act=None, fused=None):
    if fused is not None:  # LoRA on gate, up and down: one Function that recomputes act(e) * g in backward
        parts = [_lora_parts(p, x.dtype) for p in (self.gate_proj, self.up_proj, self.down_proj)]
        if all(parts):
            return fused(x, act, *parts)
    return self.down_proj(fn(self.gate_proj(x), self.up_proj(x)))


def _packed_mlp_forward(self, hidden_states, *, fn):
    return self.down_proj(fn(self.gate_up_proj(hidden_states)))


# ---- LoRA


def _is_lora_linear(module) -> bool:
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return False
    if not isinstance(module, LoraLayer) or not hasattr(module, "lora_A"):
        return False
    return type(module).__name__ in ("Linear", "Linear4bit")


def _base_supported(base) -> bool:
    if type(base) is torch.nn.Linear:
        return True
    return type(base).__name__ == "Linear4bit" and getattr(base.weight, "quant_state", None) is not None


def _lora_fusable(module, adapter: str | None = None) -> bool:
    names = [adapter] if adapter else list(module.lora_A.keys())
    if not names or getattr(module, "fan_in_fan_out", False) or not _base_supported(module.get_base_layer()):
        return False
    for a in names:
        drop = module.lora_dropout[a]
        if not (isinstance(drop, torch.nn.Identity) or (isinstance(drop, torch.nn.Dropout) and drop.p == 0)):
            return False
        if getattr(module, "use_dora", {}).get(a) or a in getattr(module, "lora_variant", {}):
            return False
        if getattr(module, "lora_bias", {}).get(a):
            return False
    return True


def _lora_forward(self, x, *args, fn, **kwargs):
    peft_forward = type(self).forward
    active = self.active_adapters
    if args or kwargs or self.disable_adapters or self.merged or len(active) != 1 or active[0] not in self.lora_A \
            or not _lora_fusable(self, active[0]):
        return peft_forward(self, x, *args, **kwargs)
    name = active[0]
    base = self.get_base_layer()
    weight = base.weight
    quant_state = getattr(weight, "quant_state", None)
    if quant_state is not None:
        weight = weight.data
        x_in = x.to(quant_state.dtype)   # bitsandbytes computes in its compute dtype
        return fn(x_in, weight, self.lora_A[name].weight, self.lora_B[name].weight, self.scaling[name], base.bias,
                  quant_state).to(x.dtype)
    return fn(x, weight, self.lora_A[name].weight, self.lora_B[name].weight, self.scaling[name], base.bias, None)


def _lora_parts(module, dtype) -> tuple | None:
    """(W, A, B, scaling, quant_state) of a LoRA Linear the fused MLP can take over, else None."""
    if not _is_lora_linear(module) or module.disable_adapters or module.merged:
        return None
    active = module.active_adapters
    if len(active) != 1 or active[0] not in module.lora_A or not _lora_fusable(module, active[0]):
        return None
    base, name = module.get_base_layer(), active[0]
    if base.bias is not None:
        return None
    quant_state = getattr(base.weight, "quant_state", None)
    if quant_state is not None and quant_state.dtype != dtype:
        return None  # bitsandbytes computes in its compute dtype: leave that conversion to the per-layer path
    weight = base.weight.data if quant_state is not None else base.weight
    return (weight, module.lora_A[name].weight, module.lora_B[name].weight, module.scaling[name], quant_state)


# ---- causal-LM head


def _patch_causal_lm(report, lm, fns):
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    if type(head) is not torch.nn.Linear or not hasattr(lm, lm.base_model_prefix):
        report.notices.append("fused_linear_ce: lm_head is not a plain Linear (LoRA on lm_head?); left as is")
        return
    current = lm.__dict__.get("forward", _MISSING)
    trl_cfg = causal_lm_head.trl_fused_head_config(current)
    if current is not _MISSING and trl_cfg is None:
        report.notices.append("fused_linear_ce: the model's forward is already wrapped by someone else; left as is")
        return
    if trl_cfg is not None:
        from ftcli.kernels.fused_linear_ce import LOGPROB_OUTPUTS

        if trl_cfg.get("cast_lm_head_to_fp32") or not set(trl_cfg.get("outputs", ())) <= set(LOGPROB_OUTPUTS):
            report.notices.append("fused_linear_ce: TRL's fused LM head asks for options we do not implement; "
                                  "TRL's head stays")
            return
    forward = causal_lm_head.causal_lm_forward(type(lm).forward, fns)
    _bind(report, "fused_linear_ce", "lm_head", lm, forward)
    lm.__dict__["_ftcli_fused_head"] = {"temperature": 1.0, "outputs": ("log_probs", "entropy", "is_top1"),
                                        **(trl_cfg or {})}
