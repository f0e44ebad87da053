"""The causal-LM forward that patch.py binds for `fused_linear_ce`: the loss (or TRL's per-token
log-probs) from the final hidden states through ftcli's chunked op, without materialising logits.

In training with labels it returns the fused loss, honouring `num_items_in_batch`; with
`fused_lm_head=True` (TRL's protocol) per-token log-probs/entropy/accuracy; otherwise the model's
own forward runs unchanged (generation, eval, no labels).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from dataclasses import dataclass

import torch


def trl_fused_head_config(bound) -> dict | None:
    """TRL's `add_fused_lm_head` wrapper's settings (temperature, outputs, ...), or None if not it."""
    func = getattr(bound, "__func__", None)
    code = getattr(func, "__code__", None)  # (functools.wraps renamed the function itself)
    if code is None or code.co_name != "_fused_forward" or "trl" not in code.co_filename:
        return None
    cfg = {}
    for name, cell in zip(func.__code__.co_freevars, func.__closure__ or ()):
        try:
            cfg[name] = cell.cell_contents
        except ValueError:
            pass
    return {k: cfg[k] for k in ("temperature", "outputs", "cast_lm_head_to_fp32") if k in cfg}


def fused_output_class():
    try:
        from trl.trainer.utils import FusedCausalLMOutput
        return FusedCausalLMOutput
    except Exception:  # TRL absent or moved: an equivalent output type
        from transformers.utils import ModelOutput

        @dataclass
        class FusedCausalLMOutput(ModelOutput):
            loss: torch.Tensor | None = None
            log_probs: torch.Tensor | None = None
            entropy: torch.Tensor | None = None
            log_sum_sq_probs: torch.Tensor | None = None
            mean_logits: torch.Tensor | None = None
            is_top1: torch.Tensor | None = None
            label_mask: torch.Tensor | None = None
            aux_loss: torch.Tensor | None = None
        return FusedCausalLMOutput


def causal_lm_forward(class_forward, fns):
    signature = inspect.signature(class_forward)
    var_kw = next((p.name for p in signature.parameters.values() if p.kind is p.VAR_KEYWORD), None)

    @functools.wraps(class_forward)
    def forward(self, *args, **kwargs):
        fused_head = kwargs.pop("fused_lm_head", False)
        if not fused_head and (not self.training or (kwargs.get("labels") is None
                                                     and kwargs.get("shift_labels") is None)):
            return class_forward(self, *args, **kwargs)
        bound = signature.bind_partial(self, *args, **kwargs).arguments
        params = {k: v for k, v in bound.items() if k not in ("self", var_kw)}
        params.update(bound.get(var_kw, {}) if var_kw else {})
        labels = params.pop("labels", None)
        shift_labels = params.pop("shift_labels", None)
        num_items = params.pop("num_items_in_batch", None)
        ignore_index = params.pop("ignore_index", -100)
        return_dict = params.pop("return_dict", True)
        params.pop("logits_to_keep", None)
        if fused_head:
            params["use_cache"] = False
        out = getattr(self, self.base_model_prefix)(**params)
        hidden = out.last_hidden_state
        head = self.get_output_embeddings()
        softcap = getattr(self.config, "final_logit_softcapping", None)
        scale = getattr(self.config, "logit_scale", None) or 1.0
        if fused_head:
            if shift_labels is None:
                hidden, labels = hidden[:, :-1], labels[:, 1:]
            else:
                labels = shift_labels
            labels = labels.to(hidden.device)
            cfg = self.__dict__.get("_ftcli_fused_head", {})
            res = fns["logprobs"](hidden, head.weight, labels, head.bias, ignore_index=-100,
                                  temperature=cfg.get("temperature", 1.0), softcap=softcap, logit_scale=scale,
                                  outputs=tuple(cfg.get("outputs", ("log_probs",))))
            mask = labels != -100
            denom = mask.sum().clamp(min=1) if num_items is None else num_items
            loss = -res["log_probs"].sum() / denom
            return fused_output_class()(loss=loss, label_mask=mask, **res)
        if shift_labels is None:
            shift_labels = torch.nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]
        loss = fns["ce"](hidden, head.weight, shift_labels.to(hidden.device), head.bias, ignore_index=ignore_index,
                         num_items_in_batch=num_items, softcap=softcap, logit_scale=scale)
        from transformers.modeling_outputs import CausalLMOutputWithPast

        # the backbone's cache / hidden_states / attentions, under whatever names this transformers uses
        fields = {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} - {"loss", "logits"}
        result = CausalLMOutputWithPast(loss=loss, logits=None, **{k: v for k, v in out.items() if k in fields})
        return result if return_dict is not False else result.to_tuple()

    return forward
