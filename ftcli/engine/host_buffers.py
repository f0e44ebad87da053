"""Pinned host buffers for offloaded layer inputs (one per checkpointed slot, reused across steps) and the side
CUDA streams that copy into and out of them, prefetching the next slot's input during backward (offload.py)."""

from __future__ import annotations

import weakref

import torch

MIN_BYTES = 1 << 20  # smaller inputs stay where they are: a copy's fixed cost exceeds what it frees


class Lease:
    """Held by a checkpoint node whose input is in its layer's shared buffer; while alive, the buffer is in use."""

    __slots__ = ("__weakref__",)


class Offloader:
    """Host buffers (one per layer, reused across steps) and the side streams that copy into and out of them."""

    def __init__(self, n_layers: int, *, min_bytes: int = MIN_BYTES, keep_last: bool = True):
        self.n_layers, self.min_bytes, self.keep_last = n_layers, min_bytes, keep_last
        self.buffers: dict[int, torch.Tensor] = {}  # slot -> flat host tensor, grown when a bigger input comes
        self.offloaded = 0  # inputs sent to the host so far (for tests and benchmarks)
        self._leases: dict[int, weakref.ref] = {}
        self._fills: dict[int, int] = {}  # slot -> how many times its buffer was filled
        self._streams: dict[torch.device, torch.cuda.Stream] = {}
        self._latest: dict[int, tuple] = {}  # slot -> (host, fill) of its latest forward, for prefetching
        self._prefetched: dict[int, tuple] = {}  # slot -> (host, fill, GPU tensor, copy event)

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers.values())

    def wants(self, slot: int, x) -> bool:
        return (isinstance(x, torch.Tensor) and x.device.type in ("cuda", "cpu")
                and x.numel() * x.element_size() >= self.min_bytes
                and not (self.keep_last and slot == self.n_layers - 1))

    def _side_stream(self, device: torch.device) -> torch.cuda.Stream:
        if device not in self._streams:
            self._streams[device] = torch.cuda.Stream(device)
        return self._streams[device]

    def _host_buffer(self, slot: int, x: torch.Tensor):
        """(host tensor shaped like x, lease or None, fill count or None)."""
        ref = self._leases.get(slot)
        if ref is not None and ref() is not None:  # the last forward of this layer has not had its backward yet
            return torch.empty(x.shape, dtype=x.dtype, pin_memory=x.is_cuda), None, None
        flat = self.buffers.get(slot)
        if flat is None or flat.dtype != x.dtype or flat.numel() < x.numel():
            flat = self.buffers[slot] = torch.empty(x.numel(), dtype=x.dtype, pin_memory=x.is_cuda)
        lease = Lease()
        self._leases[slot] = weakref.ref(lease)
        self._fills[slot] = fill = self._fills.get(slot, 0) + 1
        return flat[: x.numel()].view(x.shape), lease, fill

    def to_host(self, slot: int, x: torch.Tensor):
        """Start copying x to the host. Returns (host, lease, fill).

        The compute stream does not wait for the copy: x is marked as in use on the side stream, so the
        allocator keeps its memory until the copy has read it. (Waiting at the end of each block stalled
        the forward wherever a block computes faster than PCIe moves its input: the attention block of an
        8B layer at 8192 tokens takes about as long as the 64 MiB copy.)"""
        host, lease, fill = self._host_buffer(slot, x)
        self.offloaded += 1
        self._latest[slot] = (host, fill)
        if not x.is_cuda:
            host.copy_(x)
            return host, lease, fill
        side = self._side_stream(x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))  # x was written on the current stream
        with torch.cuda.stream(side):
            host.copy_(x, non_blocking=True)
        x.record_stream(side)
        return host, lease, fill

    def restore(self, slot: int, host: torch.Tensor, fill: int | None, device: torch.device,
                prefetch: bool = True) -> torch.Tensor:
        """A fresh tensor on `device` with the contents of `host`; with `prefetch`, the previous slot's copy
        starts now (else the caller starts it with `prefetch_before`)."""
        if fill is not None and self._fills.get(slot) != fill:
            raise RuntimeError(f"offloaded input of checkpointed layer {slot} was overwritten by a later forward "
                               "before this backward (backward twice through one graph after a new forward?)")
        if device.type != "cuda":
            return host.clone()
        cur = torch.cuda.current_stream(device)
        ready = self._prefetched.pop(slot, None)
        if ready is not None and ready[0] is host and ready[1] == fill:
            x, event = ready[2], ready[3]
        else:
            x, event = self._copy_in(host, device)
        cur.wait_event(event)
        if prefetch:
            self.prefetch_before(slot, device)
        return x

    def prefetch_before(self, slot: int, device: torch.device) -> None:
        """Backward runs the slots in reverse: start bringing the previous slot's input in now, so that its
        copy overlaps this slot's recompute and backward instead of stalling the next one."""
        previous = self._latest.get(slot - 1)
        if device.type == "cuda" and previous is not None and slot - 1 not in self._prefetched:
            self._prefetched[slot - 1] = (*previous, *self._copy_in(previous[0], device))

    def _copy_in(self, host: torch.Tensor, device: torch.device):
        """Start an async host-to-GPU copy on the side stream; returns (GPU tensor, event when done)."""
        side = self._side_stream(device)
        x = torch.empty(host.shape, dtype=host.dtype, device=device)
        side.wait_stream(torch.cuda.current_stream(device))  # x's memory may just have been freed there
        with torch.cuda.stream(side):
            x.copy_(host, non_blocking=True)
            done = torch.cuda.Event()
            done.record(side)
        return x, done
