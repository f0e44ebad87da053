"""Offline, decided at once: is the Hugging Face hub reachable, is a hub model in the local cache, and which
builtin stands in for a model of its family.

Without this, an offline `from_pretrained` retries the network for half a minute (a dozen warning lines)
before it fails. Here `HF_HUB_OFFLINE`, or a hub host that does not answer within a second, sends every hub
id to the local cache or to one clear error.
"""

from __future__ import annotations

import functools
import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

from ftcli.errors import BadInput

# The builtin of a model's family, by a word of its name; the first match wins.
FAMILY_BUILTINS = (("gemma", "builtin:tiny-gemma3"), ("qwen", "builtin:tiny-qwen3"), ("phi", "builtin:tiny-phi3"),
                   ("mistral", "builtin:tiny-mistral"), ("llama", "builtin:tiny-llama3"))
PROBE_SECONDS = 1.0
_TRUE = {"1", "true", "yes", "on"}


def builtin_for(*names: str | None) -> str:
    """The builtin of the family that the first of `names` (template name, model id) that names one belongs to."""
    for name in names:
        lowered = (name or "").lower()
        for word, builtin in FAMILY_BUILTINS:
            if word in lowered:
                return builtin
    return "builtin:tiny-llama3"


def offline_reason() -> str | None:
    """Why the hub cannot be used right now, or None when it can. Decided once per process."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return f"{var}={os.environ[var]}"
    return _probe_network()


@functools.cache
def _probe_network() -> str | None:
    """One TCP connection to the hub (or the HTTPS proxy), bounded in time, DNS included."""
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlparse(proxy or os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    outcome: dict = {}

    def connect():
        try:
            socket.create_connection((host, port), timeout=PROBE_SECONDS).close()
            outcome["ok"] = True
        except OSError as err:
            outcome["error"] = err

    thread = threading.Thread(target=connect, daemon=True)  # getaddrinfo has no timeout of its own
    thread.start()
    thread.join(PROBE_SECONDS + 0.5)
    if outcome.get("ok"):
        return None
    error = outcome.get("error")
    return f"no network: {host} did not answer" + (f" ({error.strerror or error})" if error else " in time")


def cached_snapshot(repo_id: str) -> Path | None:
    """The local cache's copy of a hub model, or None when it was never downloaded."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001 (LocalEntryNotFoundError, a bad id: either way there is no copy)
        return None


def looks_like_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).exists()


def local_or_fail(repo_id: str, what: str = "model.name") -> str | None:
    """For a hub id while offline: its cached folder, or a BadInput that names the builtin of its family.
    None when the hub is reachable (load from the hub as usual)."""
    reason = offline_reason()
    if reason is None:
        return None
    snapshot = cached_snapshot(repo_id)
    if snapshot is not None:
        return str(snapshot)
    builtin = builtin_for(repo_id)
    raise BadInput(f"{what} {repo_id!r}: the Hugging Face hub is offline ({reason}) and the model is not in the "
                   "local cache",
                   hint=f"try it offline with --set model.name={builtin} (a tiny model of the same family), or "
                        "download the model once while online")
