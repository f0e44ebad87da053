"""The importance matrix: per input column of every linear weight, the mean of the squared activations.

These are llama.cpp's imatrix semantics (tools/imatrix): for each matrix multiplication the
sum over tokens of x_j², and the number of tokens; llama.cpp's quantiser weights each column's
rounding error by sum / count. We compute it on the merged model in torch (float32), one
calibration row at a time, with a forward pre-hook on every linear layer that only adds into
two running vectors, so memory is the model plus one row's activations.

Saved in llama.cpp's GGUF imatrix format (`general.type = imatrix`, `<tensor>.in_sum2` and
`<tensor>.counts` tensors, `imatrix.datasets` / `imatrix.chunk_count` / `imatrix.chunk_size`),
so `llama-quantize --imatrix model-imatrix.gguf` can reuse it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ftcli.export.gguf_hparams import read_config
from ftcli.export.gguf_tensors import detect_arch, gguf_name

FILE = "imatrix.gguf"


@dataclass
class Imatrix:
    sums: dict[str, np.ndarray] = field(default_factory=dict)   # GGUF tensor name -> sum of x² per column
    counts: dict[str, int] = field(default_factory=dict)        # GGUF tensor name -> tokens seen
    datasets: list[str] = field(default_factory=list)
    chunks: int = 0
    chunk_size: int = 0

    def means(self) -> dict[str, np.ndarray]:
        """What llama.cpp's quantiser takes: sum / count per column."""
        return {k: (v / max(1, self.counts[k])).astype(np.float32) for k, v in self.sums.items()}


def linear_names(model, arch: str, tied: bool) -> dict[str, str]:
    """HF module name of every linear layer -> the GGUF tensor its weight becomes."""
    import torch

    out = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            target = gguf_name(arch, name + ".weight")
            if target == "output.weight" and tied:
                target = "token_embd.weight"   # llama.cpp multiplies by token_embd when the output is tied
            if target is not None:
                out[name] = target
    return out


def compute(model_dir: Path, rows: list[list[int]], source: str = "", progress=None) -> Imatrix:
    """The imatrix of the model in `model_dir` on token `rows` (one forward per row)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = read_config(Path(model_dir))
    arch = detect_arch(config)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.eval()
    tied = model.get_output_embeddings() is not None and (
        model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr())
    result = Imatrix(datasets=[source] if source else [], chunks=len(rows),
                     chunk_size=max((len(r) for r in rows), default=0))
    sums: dict[str, torch.Tensor] = {}
    handles = []
    for module_name, target in linear_names(model, arch, tied).items():
        def hook(_module, args, target=target):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            sums[target] = sums.get(target, 0) + (x * x).sum(0)
            result.counts[target] = result.counts.get(target, 0) + x.shape[0]
        handles.append(model.get_submodule(module_name).register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            for ids in progress_iter(rows, "imatrix", progress):
                model(torch.tensor([ids]))
    finally:
        for h in handles:
            h.remove()
        del model
    result.sums = {k: v.numpy() for k, v in sums.items()}
    return result


def progress_iter(rows, what: str, progress, unit: str = "row"):
    """Iterate `rows` with a progress bar (tqdm on stderr) unless a `progress` callable is given."""
    if progress is not None:
        for i, row in enumerate(rows):
            progress(what, i, len(rows))
            yield row
        progress(what, len(rows), len(rows))
        return
    from tqdm.auto import tqdm

    yield from tqdm(rows, desc=what, unit=unit, leave=False)


def save(imatrix: Imatrix, path: Path) -> Path:
    """Write `path` in llama.cpp's GGUF imatrix format (tensor names sorted, as llama-imatrix does)."""
    import gguf

    path = Path(path)
    w = gguf.GGUFWriter(str(path), arch="imatrix")
    w.add_string("general.type", "imatrix")
    w.add_array("imatrix.datasets", imatrix.datasets or ["ftcli"])
    w.add_uint32("imatrix.chunk_count", imatrix.chunks)
    w.add_uint32("imatrix.chunk_size", imatrix.chunk_size)
    for name in sorted(imatrix.sums):
        w.add_tensor(f"{name}.in_sum2", imatrix.sums[name].astype(np.float32).reshape(1, -1))
        w.add_tensor(f"{name}.counts", np.array([[float(imatrix.counts[name])]], dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def load(path: Path) -> Imatrix:
    """Read an imatrix written by `save` or by llama-imatrix (GGUF format, one matrix per tensor)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    tensors = {t.name: np.asarray(t.data, dtype=np.float64) for t in reader.tensors}
    out = Imatrix()
    for name, values in tensors.items():
        if name.endswith(".in_sum2"):
            base = name.removesuffix(".in_sum2")
            out.sums[base] = values.reshape(-1)
            out.counts[base] = int(tensors[base + ".counts"].reshape(-1)[0])
    field_ = reader.fields.get("imatrix.datasets")
    if field_ is not None:
        out.datasets = [bytes(field_.parts[i]).decode() for i in field_.data]
    for key, attr in (("imatrix.chunk_count", "chunks"), ("imatrix.chunk_size", "chunk_size")):
        if key in reader.fields:
            setattr(out, attr, int(reader.fields[key].parts[reader.fields[key].data[0]][0]))
    return out
