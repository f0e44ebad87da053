"""Per-token log-probs for DPO and GRPO without [tokens, vocab] logits.

TRL (>= 1.15) already gives its DPO and GRPO trainers a "fused LM head": it patches the model's
forward so that `model(..., labels=labels, fused_lm_head=True)` runs the backbone, then projects
only the labelled positions through lm_head in tiles and returns per-token log-probs
(`trl.trainer.utils.add_fused_lm_head`). Both trainers compute every log-prob they need
(policy, old policy, reference) through that call, so it is the one place to hook.

`install` swaps that forward, per model instance, for one that does the same with ftcli's
kernel (`ftcli.kernels.fused_linear_ce.selected_logprobs`: prompt rows skipped, chunks sized by
memory, the hidden-state gradient formed in the forward so the backward is a per-row scale).
Where our Triton kernel cannot run (CPU without TRITON_INTERPRET=1), or for configurations it
does not cover (MoE router losses, unusual logit scalings), TRL's own fused head stays; it is
also chunked. Nothing global is patched.
"""

from __future__ import annotations

import functools
import types

import torch

from ftcli import kernels

_UNSUPPORTED_SCALINGS = ("output_multiplier", "lm_head_multiplier", "logits_scaling")


def _base(model):
    """The transformers model under PEFT (TRL patches that one)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def supported(model) -> str | None:
    """None when our kernel can serve this model, else the reason it cannot."""
    base = _base(model)
    device = next(base.parameters()).device
    if not kernels.triton_runnable(device):
        return f"Triton cannot run on {device.type} here"
    text_config = base.config.get_text_config()
    if getattr(text_config, "output_router_logits", False):
        return "mixture-of-experts router losses"
    for name in _UNSUPPORTED_SCALINGS:
        if getattr(text_config, name, None) is not None:
            return f"config.{name}"
    return None


def install(model, temperature: float = 1.0, outputs: tuple[str, ...] = ("log_probs",)) -> str | None:
    """Route TRL's fused-head calls on `model` through ftcli's kernel. Returns why not, or None when done.

    Call after the TRL trainer is built (it installs its fused forward in __init__).
    """
    reason = supported(model)
    if reason is not None:
        return reason
    from trl.trainer.utils import FusedCausalLMOutput

    from ftcli.kernels.fused_linear_ce import selected_logprobs  # loads Triton: only when installed

    base = _base(model)
    trl_forward = getattr(base, "_ftcli_trl_forward", None) or base.forward
    text_config = base.config.get_text_config()
    softcap = getattr(text_config, "final_logit_softcapping", None)
    logit_scale = getattr(text_config, "logit_scale", None)
    logit_scale = 1.0 if logit_scale is None else float(logit_scale)
    wanted = tuple(dict.fromkeys(("log_probs", *outputs)))

    @functools.wraps(type(base).forward)  # generate() checks its kwargs against this signature
    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None,
                **kwargs):
        if not fused_lm_head:
            return trl_forward(*args, labels=labels, shift_labels=shift_labels,
                               num_items_in_batch=num_items_in_batch, **kwargs)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state
        if shift_labels is None:
            hidden, targets = hidden[:, :-1], labels[:, 1:]
        else:
            targets = shift_labels
        head = self.get_output_embeddings()
        hidden = hidden.to(head.weight.device)
        targets = targets.to(head.weight.device)
        out = selected_logprobs(hidden, head.weight, targets, head.bias, temperature=temperature,
                                softcap=softcap, logit_scale=logit_scale, outputs=wanted)
        mask = targets != -100
        log_probs = out["log_probs"]
        loss = -log_probs.sum() / (mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch)
        return FusedCausalLMOutput(loss=loss, log_probs=log_probs, entropy=out["entropy"],
                                   log_sum_sq_probs=out["log_sum_sq_probs"], mean_logits=out["mean_logits"],
                                   is_top1=out["is_top1"], label_mask=mask)

    base._ftcli_trl_forward = trl_forward
    base.forward = types.MethodType(forward, base)
    return None


def uninstall(model) -> None:
    base = _base(model)
    trl_forward = getattr(base, "_ftcli_trl_forward", None)
    if trl_forward is not None:
        base.forward = trl_forward
        del base._ftcli_trl_forward


def full_logits_logprobs(model, input_ids, attention_mask, labels) -> torch.Tensor:
    """Reference: log p(label) from a plain forward that materialises all logits (tests, checks)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    targets = labels[:, 1:]
    logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.where(targets != -100, logp, torch.zeros_like(logp))
