"""Conversations as message lists: plain text to messages, the recipe's system prompt, folding it into the
first user turn for templates that have no system role."""

from __future__ import annotations


def fold_system(messages: list[dict]) -> list[dict]:
    """For templates without a system role: prepend the system text to the first user turn."""
    if not messages or messages[0]["role"] != "system":
        return messages
    system, rest = messages[0]["content"], messages[1:]
    for i, msg in enumerate(rest):
        if msg["role"] == "user":
            return rest[:i] + [{"role": "user", "content": f"{system}\n\n{msg['content']}"}] + rest[i + 1:]
    return rest


def with_system(messages: list[dict], system: str | None) -> list[dict]:
    if system and messages[0]["role"] != "system":
        return [{"role": "system", "content": system}] + messages
    return messages


def as_messages(value, role: str) -> list[dict]:
    """A prompt or reply given as plain text becomes one message of `role`; message lists pass through."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return [{"role": m["role"], "content": m["content"]} for m in value]


def prompt_messages(value, system: str | None, template) -> list[dict]:
    """The prompt as the template will see it: the recipe's system prompt added, folded when unsupported."""
    messages = with_system(as_messages(value, "user"), system)
    return messages if template.supports_system else fold_system(messages)
