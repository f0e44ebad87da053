"""Throughput a user can see: real tokens per second, seconds per step, MFU and peak GPU memory, added to every
logged dict (so metrics.jsonl, the progress bar and the summary carry them).

Real tokens are the tokens the model computed that are not padding: TRL's `num_tokens` (cumulative; the
attention mask's sum on padded batches, the packed row's length on padding-free ones). The rate of a logging
interval is its tokens over its wall time, measured between logs; the run's rate is all tokens over the
train_runtime that the Trainer reports at the end.
"""

from __future__ import annotations

import time

import torch
from transformers import TrainerCallback

from ftcli.engine import memory

WARMUP_STEPS = 3  # the first steps compile and warm caches: the steady rate is taken after them


class Throughput(TrainerCallback):
    def __init__(self, flops_per_token: float | None = None):
        self.flops_per_token = flops_per_token
        self.peak_flops = memory.peak_flops(torch.cuda.get_device_name()) if torch.cuda.is_available() else None
        self.last = None    # (time, step, cumulative tokens) at the previous log
        self.steady = None  # (time, cumulative tokens) once WARMUP_STEPS steps are done
        self.tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.last = (time.perf_counter(), state.global_step, 0)

    def on_step_end(self, args, state, control, **kwargs):
        if self.steady is None and state.global_step >= WARMUP_STEPS:
            self.steady = (time.perf_counter(), state.global_step, self.tokens)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or self.last is None:
            return
        if "num_tokens" in logs:
            self.tokens = int(logs["num_tokens"])
            now = time.perf_counter()
            seconds, steps, tokens = now - self.last[0], state.global_step - self.last[1], self.tokens - self.last[2]
            self.last = (now, state.global_step, self.tokens)
            if seconds > 0 and steps > 0:
                logs.update(real_tokens=tokens, tokens_per_second=round(tokens / seconds, 1),
                            seconds_per_step=round(seconds / steps, 4))
                if self.flops_per_token and self.peak_flops:
                    logs["mfu"] = round(tokens / seconds * self.flops_per_token / self.peak_flops, 4)
        if torch.cuda.is_available():
            logs["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / memory.GiB, 2)
        if "train_runtime" in logs:
            self.summarise(logs, state)

    def summarise(self, logs: dict, state) -> None:
        """The end-of-run log: mean real tokens/s over the run, and after the warm-up steps."""
        if self.tokens and logs["train_runtime"] > 0:
            logs["mean_tokens_per_second"] = round(self.tokens / logs["train_runtime"], 1)
        if self.steady is not None and self.tokens > self.steady[2] and self.last[0] > self.steady[0]:
            logs["steady_tokens_per_second"] = round((self.tokens - self.steady[2]) / (self.last[0] - self.steady[0]), 1)
