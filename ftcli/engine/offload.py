"""Gradient checkpointing of decoder layers, with each layer's saved input held in pinned host memory.

Plain checkpointing keeps one hidden state ([batch, seq, hidden]) per decoder layer on the GPU for the
recomputation in backward; at long sequence lengths that is most of the activation memory. Here the
layer input is copied to a pinned CPU buffer on a side CUDA stream during the forward (overlapping the
layer's own compute) and copied back during the backward of the layer after it, once that layer's MLP
backward (where its peak is) is done, so the copy overlaps the attention backward.

The recompute makes only what the backward reads: where the MLP output only enters the residual add, the
fused LoRA MLP skips its down projection (kernels/lora_mlp.py `output_unused`), and the recomputed layer
output, which no backward reads, is freed before the backward through it runs.

transformers' `GradientCheckpointingLayer` calls `layer._gradient_checkpointing_func(partial(forward, **kwargs),
*args)` when checkpointing is on (5.17: from `__call__`, even under no_grad; 5.24: from `forward`, only with
grad enabled). `enable()` swaps that function for `_LayerCheckpoint`, a reentrant-style checkpoint: the
forward runs under no_grad, the backward reruns the layer with grad and calls `torch.autograd.backward`.

With split blocks (ftcli/engine/layer_blocks.py) a layer has two slots, its input and the hidden state between
attention and MLP, and the MLP block's backward may run in token chunks (`Tokenwise`).

Only the first positional argument (hidden_states) is offloaded. Keyword arguments are bound in the partial
and kept by reference (cos/sin and masks are shared by all layers, so copying them would free nothing).

The last layer's input is kept on the GPU when `keep_last` is set: its backward comes first, so a round trip
through the host would free memory only for the time when the layer is being run. "Last" is the last
checkpointed layer in `model.modules()` order. That is the execution order of a decoder stack; where it
is not, one layer is kept on or offloaded that need not be, and the gradients do not change.

Host buffers (host_buffers.py) are kept per layer and reused across steps. A buffer is in use from the forward that fills it
until that layer's backward. If a second forward of the same layer comes first (two forwards, one backward),
it gets a buffer of its own instead of overwriting the first one. If a backward finds that its buffer was
reused since its forward (retain_graph, with a new forward before the second backward), it raises.
"""
from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass

import torch
from transformers.modeling_layers import GradientCheckpointingLayer

from ftcli.engine import layer_blocks, memory
from ftcli.engine.host_buffers import MIN_BYTES, Offloader
from ftcli.models.hf_compat import enable_checkpointing

_OFFLOADERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # base model -> Offloader


def enable(model, offload: bool, *, layers: int | None = None, split: bool = False, min_bytes: int = MIN_BYTES,
           keep_last: bool = True, min_chunk_rows: int | None = None) -> int:
    """Checkpoint the first `layers` decoder layers (default: all), non-reentrant; with `offload`, through
    `_LayerCheckpoint`, and with `split` too, each layer as an attention and an MLP block (ftcli/engine/layer_blocks.py)
    where the architecture's layout is known. A split MLP block recomputes in token chunks (of at least
    `min_chunk_rows` tokens, default memory.MIN_CHUNK_ROWS) when that keeps it under the attention block's peak.

    `model` may be a peft PeftModel. Returns the number of checkpointed layers. Calling it again replaces the
    earlier setting (and the earlier host buffers).
    """
    if split and not offload:
        raise ValueError("split blocks need offload: kept on the GPU, the second checkpoint per layer costs "
                         "more memory than the split saves")
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    every = [m for m in base.modules() if isinstance(m, GradientCheckpointingLayer)]
    for layer in every:
        layer_blocks.remove(layer)
    enable_checkpointing(base)
    n = len(every) if layers is None else max(0, min(layers, len(every)))
    for i, layer in enumerate(every):
        layer.gradient_checkpointing = i < n
    chosen = every[:n]
    _OFFLOADERS.pop(base, None)
    if offload:
        layout = layer_blocks.layout_for(base.config)
        known = [layout is not None and layer_blocks.fits(layer, layout) for layer in chosen]
        halves = [split and k for k in known]
        unused = layout is not None and layer_blocks.mlp_output_only_added(layout)
        chunks = memory.mlp_chunks_wanted(memory.Shape.from_config(base.config)) if any(halves) else 1
        off = Offloader(n + sum(halves), min_bytes=min_bytes, keep_last=keep_last)
        slot = 0
        for layer, halved, whole_known in zip(chosen, halves, known):
            if halved:
                tokenwise = _tokenwise(layer_blocks.mlp_block_modules(layer, layout), chunks, min_chunk_rows)
                layer_blocks.install(layer, layout, _LayerCheckpoint(off, slot),
                                     _LayerCheckpoint(off, slot + 1, tokenwise, mlp_output_unused=unused))
            else:
                layer._gradient_checkpointing_func = _LayerCheckpoint(
                    off, slot, mlp=layer.mlp if whole_known else None, mlp_output_unused=whole_known and unused)
            slot += 1 + halved
        _OFFLOADERS[base] = off
    return n


def _tokenwise(modules: list, chunks: int, min_rows: int | None) -> Tokenwise | None:
    """Chunked recompute for a token-wise block, unless it has active dropout (chunks would draw other masks)."""
    dropout = any(isinstance(m, torch.nn.Dropout) and m.p > 0 for module in modules for m in module.modules())
    if chunks <= 1 or dropout:
        return None
    return Tokenwise(chunks, [p for module in modules for p in module.parameters()], min_rows)


def offloader(model) -> Offloader | None:
    """The Offloader that `enable(model, offload=True)` set up, or None."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _OFFLOADERS.get(base)


class _RngState:
    """CPU and CUDA RNG states at the layer's forward, so the recompute draws the same dropout masks."""

    def __init__(self, args):
        self.cpu = torch.get_rng_state()
        self.devices: list[int] = []
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            devs = {a.device.index for a in args if isinstance(a, torch.Tensor) and a.is_cuda}
            devs.add(torch.cuda.current_device())
            self.devices = sorted(devs)
        self.cuda = [torch.cuda.get_rng_state(d) for d in self.devices]

    @contextlib.contextmanager
    def restored(self):
        """Run with the saved states; the global RNG is left as it was found."""
        with torch.random.fork_rng(devices=self.devices, device_type="cuda"):
            torch.set_rng_state(self.cpu)
            for d, state in zip(self.devices, self.cuda):
                torch.cuda.set_rng_state(state, d)
            yield


def _autocast_state(device_type: str) -> list[tuple[str, dict]]:
    types = [device_type] if device_type == "cpu" else [device_type, "cpu"]
    return [(t, {"enabled": torch.is_autocast_enabled(t), "dtype": torch.get_autocast_dtype(t),
                 "cache_enabled": torch.is_autocast_cache_enabled()}) for t in types]


class _OffloadedCheckpoint(torch.autograd.Function):
    # `_grad_anchor` requires grad so that this node is always recorded: otherwise a layer whose inputs do not
    # require grad (no enable_input_require_grads) would silently give its LoRA weights no gradient.
    @staticmethod
    def forward(ctx, ckpt: _LayerCheckpoint, function, _grad_anchor, *args):
        off, slot = ckpt.off, ckpt.slot
        ctx.ckpt, ctx.function = ckpt, function
        device_type = next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")
        ctx.autocast = _autocast_state(device_type)
        ctx.rng = _RngState(args)
        ctx.offloaded = bool(args) and off.wants(slot, args[0])
        if ctx.offloaded:
            x = args[0]
            ctx.host, ctx.lease, ctx.fill = off.to_host(slot, x)
            ctx.x_device, ctx.x_requires_grad = x.device, x.requires_grad
        ctx.is_tensor = [isinstance(a, torch.Tensor) for a in args]
        ctx.non_tensors = [None if t else a for a, t in zip(args, ctx.is_tensor)]
        ctx.save_for_backward(*(a for i, a in enumerate(args) if ctx.is_tensor[i] and not (i == 0 and ctx.offloaded)))
        with torch.no_grad():
            return function(*args)

    @staticmethod
    def backward(ctx, *grad_outputs):
        ckpt = ctx.ckpt
        # a whole layer of a known layout starts the previous slot's copy once its MLP's backward (the layer's
        # peak) is over: the copy then overlaps the attention's backward and is not alive at the peak
        deferred = ckpt.mlp is not None
        saved = iter(ctx.saved_tensors)
        inputs = []
        for i, (a, is_tensor) in enumerate(zip(ctx.non_tensors, ctx.is_tensor)):
            if i == 0 and ctx.offloaded:
                x = ckpt.off.restore(ckpt.slot, ctx.host, ctx.fill, ctx.x_device, prefetch=not deferred)
                ctx.lease = None  # the buffer may now take the next forward of this layer
                inputs.append(x.requires_grad_(ctx.x_requires_grad))
            elif is_tensor:
                t = next(saved)
                if i == 0 and not deferred:  # kept on the GPU (the last slot, or small): still start the copy
                    ckpt.off.prefetch_before(ckpt.slot, t.device)
                inputs.append(t.detach().requires_grad_(t.requires_grad))
            else:
                inputs.append(a)
        if ckpt.tokenwise is not None and len(inputs) == 1 and grad_outputs[0] is not None:
            return (None,) * 3 + (_tokenwise_backward(ctx, inputs[0], grad_outputs[0]),)
        prefetch = _PrefetchAfterMlp(ckpt, inputs[0].device) if deferred and ctx.is_tensor[:1] == [True] else None
        with _replay(ctx), _saved_storages() as kept, prefetch.armed() if prefetch else contextlib.nullcontext():
            outputs = ctx.function(*inputs)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        pairs = [(o, g) for o, g in zip(outputs, grad_outputs)
                 if isinstance(o, torch.Tensor) and o.requires_grad and g is not None]
        _free_unread(outputs, kept, inputs)
        if pairs:
            torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        if prefetch is not None:
            prefetch.start()  # the MLP's input had no gradient to wait for
        grads = tuple(a.grad if isinstance(a, torch.Tensor) and a.requires_grad else None for a in inputs)
        return (None,) * 3 + grads


class _PrefetchAfterMlp:
    """Starts the copy of the previous slot's input when the layer's MLP input gets its gradient."""

    def __init__(self, ckpt: _LayerCheckpoint, device: torch.device):
        self.ckpt, self.device, self.started = ckpt, device, False

    def start(self, *_):
        if not self.started:
            self.started = True
            self.ckpt.off.prefetch_before(self.ckpt.slot, self.device)

    @contextlib.contextmanager
    def armed(self):
        def on_forward(module, args, output):
            if args and isinstance(args[0], torch.Tensor) and args[0].requires_grad:
                args[0].register_hook(self.start)

        handle = self.ckpt.mlp.register_forward_hook(on_forward)
        try:
            yield
        finally:
            handle.remove()


@contextlib.contextmanager
def _saved_storages():
    """Yields the set of storages (data pointers) of the tensors saved for backward inside, or None where
    saved-tensor hooks are switched off (then nothing is known to be unread)."""
    if not torch._C._autograd._saved_tensors_hooks_is_enabled():
        yield None
        return
    kept: set[int] = set()

    def pack(t):
        kept.add(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield kept


def _free_unread(outputs, kept: set | None, inputs) -> None:
    """Free the memory of recomputed outputs that no backward reads (not saved, not an input's storage): the
    backward through them needs only their grad_fn. A decoder layer's output is a hidden state, as big as the
    offloaded input, and would otherwise sit through the layer's backward."""
    if kept is None:
        return
    keep = kept | {a.untyped_storage().data_ptr() for a in inputs if isinstance(a, torch.Tensor)}
    for o in outputs:
        if isinstance(o, torch.Tensor) and o.requires_grad and o.untyped_storage().data_ptr() not in keep:
            o.untyped_storage().resize_(0)


@contextlib.contextmanager
def _replay(ctx):
    """The forward's RNG state and autocast settings, with grad on: the recompute sees what the forward saw.
    Where the layer's MLP output only enters the residual add, the fused LoRA MLP skips making it."""
    with ctx.rng.restored(), torch.enable_grad(), contextlib.ExitStack() as stack:
        for device_type, kwargs in ctx.autocast:
            stack.enter_context(torch.autocast(device_type, **kwargs))
        if ctx.ckpt.mlp_output_unused:
            from ftcli.kernels import lora_mlp  # loads Triton: only where the fused MLP runs

            stack.enter_context(lora_mlp.output_unused())
        yield


@dataclass
class Tokenwise:
    """A block that treats each token on its own (norm, MLP, residual add), recomputed in `chunks` token chunks.

    `params`: its parameters; those that require grad when the backward runs get gradients, summed over the
    chunks and handed to autograd once, as one whole backward would, so DDP's per-parameter hooks fire once.
    """

    chunks: int
    params: list
    min_rows: int | None = None  # memory.MIN_CHUNK_ROWS


def _tokenwise_backward(ctx, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Recompute and backpropagate `ctx.function` chunk by chunk over the tokens; returns dx."""
    tokenwise = ctx.ckpt.tokenwise
    params = [p for p in tokenwise.params if p.requires_grad]
    shape = x.shape
    # all tokens in one row, so that each chunk is contiguous whatever the batch size
    x, grad = x.detach().reshape(1, -1, shape[-1]), grad.reshape(1, -1, shape[-1])
    chunks = memory.token_chunks(tokenwise.chunks, x.shape[1], tokenwise.min_rows)
    dx = torch.empty_like(x)
    dparams: list = [None] * len(params)
    start = 0
    for piece, grad_piece in zip(x.chunk(chunks, dim=-2), grad.chunk(chunks, dim=-2)):
        piece = piece.requires_grad_(True)
        with _replay(ctx):
            out = ctx.function(piece)
        got = torch.autograd.grad(out, [piece, *params], grad_piece, allow_unused=True)
        dx.narrow(-2, start, piece.shape[-2]).copy_(got[0])
        start += piece.shape[-2]
        for i, g in enumerate(got[1:]):
            if g is not None:
                dparams[i] = g if dparams[i] is None else dparams[i].add_(g)
        del out, got
    pairs = [(p, g) for p, g in zip(params, dparams) if g is not None]
    if pairs:
        torch.autograd.backward([p for p, _ in pairs], [g for _, g in pairs])
    return dx.view(shape)


class _LayerCheckpoint:
    """A layer's `_gradient_checkpointing_func`: `(function, *args)`; other keyword arguments are ignored.

    `tokenwise`: the block may recompute in token chunks. `mlp`: the layer's MLP module, whose input gradient
    marks the end of the MLP's backward (when the previous slot's copy starts). `mlp_output_unused`: the MLP's
    output only enters the residual add, so the recompute need not make it."""

    def __init__(self, off: Offloader, slot: int, tokenwise: Tokenwise | None = None, *, mlp=None,
                 mlp_output_unused: bool = False):
        self.off, self.slot, self.tokenwise = off, slot, tokenwise
        self.mlp, self.mlp_output_unused = mlp, mlp_output_unused

    def __call__(self, function, *args, **_ignored):
        if not torch.is_grad_enabled():  # transformers 5.17 comes here under no_grad too: nothing to save
            return function(*args)
        anchor = torch.empty(0, requires_grad=True)
        return _OffloadedCheckpoint.apply(self, function, anchor, *args)
