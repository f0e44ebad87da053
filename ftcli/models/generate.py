"""Generate a reply with the training chat template and its stop tokens."""

from __future__ import annotations

import torch

from ftcli.data import templates
from ftcli.data.messages import fold_system
from ftcli.data.templates import stop_token_ids


@torch.no_grad()
def reply(model, tokenizer, template, messages: list[dict], max_new_tokens: int = 64, streamer=None) -> str:
    """Greedy reply to `messages` (the conversation so far), decoded without special tokens."""
    if not template.supports_system:
        messages = fold_system(messages)
    ids = templates.prompt_ids(template, messages, tokenizer)
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], device=device)
    was_training = model.training
    model.eval()
    try:
        output = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=stop_token_ids(template, tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            streamer=streamer,
        )
    finally:
        model.train(was_training)
    return tokenizer.decode(output[0, input_ids.shape[1]:], skip_special_tokens=True)
