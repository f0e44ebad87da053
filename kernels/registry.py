"""The op registry `ftcli.engine.patch` reads: op name -> its Triton entry point and its reference."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

# op name -> (module, Triton entry point); the reference is "<entry point>_reference"
_TABLE: dict[str, tuple[str, str]] = {
    "rms_norm": ("rms_norm", "rms_norm"),
    "rope": ("rope", "rope"),
    "swiglu": ("swiglu", "swiglu"),
    "geglu": ("geglu", "geglu"),
    "fused_linear_ce": ("fused_linear_ce", "fused_linear_cross_entropy"),
    "lora_linear": ("lora_linear", "lora_linear"),
}


@dataclass(frozen=True)
class Op:
    name: str
    module: str
    triton: Callable
    reference: Callable


def op(name: str) -> Op:
    """The registry entry of one op (imports its module)."""
    module_name, fn = _TABLE[name]
    module = importlib.import_module(f"{__package__}.{module_name}")
    return Op(name, module.__name__, getattr(module, fn), getattr(module, fn + "_reference"))


class _Registry(dict):
    """`OPS[name]` -> Op, importing op modules on first use (keeps `import ftcli.kernels` light)."""

    def __missing__(self, name: str) -> Op:
        if name not in _TABLE:
            raise KeyError(f"unknown kernel op {name!r}; known: {', '.join(_TABLE)}")
        self[name] = entry = op(name)
        return entry

    def __iter__(self):
        return iter(_TABLE)

    def __len__(self):
        return len(_TABLE)

    def __contains__(self, name):
        return name in _TABLE

    def keys(self):
        return list(_TABLE)

    def items(self):
        return [(n, self[n]) for n in _TABLE]

    def values(self):
        return [self[n] for n in _TABLE]


OPS: dict[str, Op] = _Registry()
