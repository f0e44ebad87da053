"""Several processes on one machine (or several): who am I, and how to start the others.

Training itself runs on the Hugging Face Trainer / accelerate engine, which reads the
usual torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, ...). This module
only starts `torchrun` for `ftcli train --nproc N` and answers rank questions before the
Trainer exists (for example: only rank 0 prepares the run directory).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ftcli.errors import BadInput


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_sharded(recipe) -> bool:
    """FSDP across several processes: each holds a shard of the weights."""
    return recipe.train.distributed == "fsdp" and world_size() > 1


def is_main() -> bool:
    return rank() == 0


def _group():
    """accelerate's process group, started here if the Trainer has not yet (its later PartialState() is this one).
    The long timeout covers rank 0 saving or merging a stage's weights while the others wait at a barrier."""
    from datetime import timedelta

    from accelerate import PartialState

    return PartialState(timeout=timedelta(hours=2))


def barrier() -> None:
    """Every process waits here until all have arrived (nothing to do in one process)."""
    if world_size() > 1:
        _group().wait_for_everyone()


def from_main(value):
    """Rank 0's `value`, on every rank (pickled through the process group; in one process, `value` itself)."""
    if world_size() == 1:
        return value
    import torch.distributed as dist

    _group()
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wait_for(path: Path, timeout: float = 600.0) -> None:
    """Non-zero ranks wait until rank 0 has created `path` (no process group exists yet)."""
    deadline = time.time() + timeout
    while not path.exists():
        if time.time() > deadline:
            raise BadInput(f"rank {rank()}: rank 0 did not create {path} within {timeout:.0f} s")
        time.sleep(0.2)


def launch_command(nproc: int, argv: list[str]) -> list[str]:
    """The torchrun command that runs `ftcli <argv>` in `nproc` local processes."""
    if nproc < 1:
        raise BadInput(f"--nproc {nproc}: must be at least 1")
    import torch

    if torch.cuda.is_available() and nproc > torch.cuda.device_count():
        raise BadInput(f"--nproc {nproc}: this machine has {torch.cuda.device_count()} GPU(s)",
                       hint="use at most one process per GPU")
    torchrun = shutil.which("torchrun")
    runner = [torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]
    return [*runner, "--standalone", f"--nproc_per_node={nproc}", "-m", "ftcli", *argv]


def launch(nproc: int, argv: list[str], echo=print) -> int:
    """Run the command in `nproc` processes; return 0, or the failing exit code.

    torchrun reports a failed child with its own Python traceback; the child has already
    printed a clear error, so that block is dropped and replaced by one line.
    """
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.Popen(launch_command(nproc, argv), env=env, stderr=subprocess.PIPE, text=True)
    in_torchrun_report = False
    for line in proc.stderr:
        if line.startswith("Traceback (most recent call last)") or "torch.distributed.elastic" in line:
            in_torchrun_report = True
        if not in_torchrun_report and "OMP_NUM_THREADS" not in line and not line.startswith("*****"):
            sys.stderr.write(line)
    code = proc.wait()
    if code != 0:
        echo(f"{nproc} processes: at least one rank failed (exit {code}); see its error above")
    return code


def full_state_dict(trainer, sharded: bool) -> dict | None:
    """The unsharded weights of an FSDP run, for saving on rank 0; None otherwise (save the model itself).

    Every rank must call this: gathering the shards is a collective.
    """
    if not sharded or world_size() < 2:
        return None
    return trainer.accelerator.get_state_dict(trainer.model)
