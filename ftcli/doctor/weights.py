"""Embedding and lm_head rows, from a live model, from safetensors files (reading only the rows
asked for), or from a GGUF's unquantised token_embd tensor."""

from __future__ import annotations

import json
from pathlib import Path

import torch

EMBED_SUFFIXES = ("embed_tokens.weight", "wte.weight", "tok_embeddings.weight", "word_embeddings.weight")
HEAD_SUFFIXES = ("lm_head.weight",)


class Weights:
    """`rows(which, ids)` -> float32 [len(ids), hidden]; which is "embed" or "head"."""

    n_embed: int = 0
    n_head: int = 0
    tied: bool = True
    source: str = ""

    def rows(self, which: str, ids: list[int]) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def mean_row(self, which: str, exclude: set[int]) -> torch.Tensor:
        """Mean of all rows except `exclude`, computed in chunks."""
        n = self.n_embed if which == "embed" else self.n_head
        total, count = None, 0
        for start in range(0, n, 8192):
            ids = [i for i in range(start, min(n, start + 8192)) if i not in exclude]
            if not ids:
                continue
            block = self.rows(which, ids)
            total = block.sum(0) if total is None else total + block.sum(0)
            count += len(ids)
        return total / max(count, 1)

    def sample_ids(self, which: str, exclude: set[int], k: int = 512) -> list[int]:
        n = self.n_embed if which == "embed" else self.n_head
        step = max(1, n // k)
        return [i for i in range(0, n, step) if i not in exclude][:k]


class ModelWeights(Weights):
    def __init__(self, model):
        emb = model.get_input_embeddings()
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        self.embed = emb.weight
        self.head = head.weight if head is not None else None
        self.n_embed = self.embed.shape[0]
        self.n_head = self.head.shape[0] if self.head is not None else 0
        self.tied = self.head is None or self.head.data_ptr() == self.embed.data_ptr()
        self.source = "the loaded model"

    def rows(self, which, ids):
        w = self.embed if which == "embed" else self.head
        if w is None or not ids:
            return torch.empty(0)
        idx = torch.tensor(ids, dtype=torch.long, device=w.device)
        return w.detach().index_select(0, idx).float().cpu()


class SafetensorsWeights(Weights):
    def __init__(self, files: dict[str, Path], embed_name: str, head_name: str | None):
        from safetensors import safe_open

        self._open = safe_open
        self.files = files
        self.embed_name, self.head_name = embed_name, head_name
        self.n_embed = self._shape(embed_name)[0]
        self.n_head = self._shape(head_name)[0] if head_name else 0
        self.tied = head_name is None
        self.source = "the safetensors files"

    def _shape(self, name):
        with self._open(str(self.files[name]), framework="pt") as f:
            return f.get_slice(name).get_shape()

    def rows(self, which, ids):
        name = self.embed_name if which == "embed" or self.tied else self.head_name
        if not ids:
            return torch.empty(0)
        with self._open(str(self.files[name]), framework="pt") as f:
            sl = f.get_slice(name)
            lo, hi = min(ids), max(ids) + 1
            if hi - lo <= 4 * len(ids) + 64:
                block = sl[lo:hi]
                return block[[i - lo for i in ids]].float()
            return torch.stack([sl[i:i + 1][0] for i in ids]).float()


def from_folder(folder: Path) -> Weights | None:
    """Safetensors weights of a model folder (single file or sharded), or None."""
    index = folder / "model.safetensors.index.json"
    files: dict[str, Path] = {}
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map") or {}
        except ValueError:
            weight_map = {}
        files = {name: folder / f for name, f in weight_map.items()}
    else:
        candidates = sorted(folder.glob("*.safetensors"))
        if not candidates:
            return None
        from safetensors import safe_open

        for path in candidates:
            try:
                with safe_open(str(path), framework="pt") as f:
                    files.update({name: path for name in f.keys()})
            except Exception:  # noqa: BLE001
                continue
    embed = next((n for n in files if n.endswith(EMBED_SUFFIXES) and "vision" not in n), None)
    if embed is None:
        return None
    head = next((n for n in files if n.endswith(HEAD_SUFFIXES)), None)
    try:
        return SafetensorsWeights(files, embed, head)
    except Exception:  # noqa: BLE001
        return None


class TensorWeights(Weights):
    """Plain tensors (GGUF token_embd / output when unquantised)."""

    def __init__(self, embed: torch.Tensor, head: torch.Tensor | None, source: str):
        self.embed, self.head = embed, head
        self.n_embed = embed.shape[0]
        self.n_head = head.shape[0] if head is not None else 0
        self.tied = head is None
        self.source = source

    def rows(self, which, ids):
        w = self.embed if which == "embed" or self.head is None else self.head
        return w[torch.tensor(ids, dtype=torch.long)].float() if ids else torch.empty(0)
