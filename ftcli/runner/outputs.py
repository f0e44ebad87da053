"""What a finished run leaves behind: adapter/ (or model/), merged/, the export, loss.png, a sample reply from
the trained model and from its GGUF, summary.json, and the manifest's final status."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ftcli import doctor
from ftcli.data.messages import as_messages
from ftcli.engine import memory
from ftcli.export.chat_session import ChatSession
from ftcli.export.merge import merge_adapter, save_merged
from ftcli.export.run import export_after_training
from ftcli.files import atomic_dir
from ftcli.models import pretrained
from ftcli.models.generate import reply
from ftcli.recipe import Recipe
from ftcli.runner import plots, rundir


@dataclass
class RunResult:
    run_dir: Path
    stage: str = "sft"
    adapter_dir: Path | None = None
    model_dir: Path | None = None
    merged_dir: Path | None = None
    export_dir: Path | None = None
    gguf_path: Path | None = None
    gguf_reply: str | None = None
    metrics: list[dict] = field(default_factory=list)
    data_report: dict = field(default_factory=dict)
    sample_prompt: str | None = None
    sample_reply: str | None = None
    seconds: float = 0.0
    trainable_params: int = 0
    total_params: int = 0


def save(recipe: Recipe, model, tokenizer, template, result: RunResult, state_dict=None, *, sample_rows: list,
         sharded: bool, log) -> None:
    """Rank 0, after training: the weights and exports, loss.png, and the sample replies."""
    save_weights(recipe, model, tokenizer, template, result, state_dict)
    plots.plot_run(result.metrics, result.run_dir / "loss.png", stage=result.stage, title=result.run_dir.name)
    conversation = sample_conversation(sample_rows)
    if not conversation:
        return
    result.sample_prompt = conversation[-1]["content"]
    if sharded:  # a sharded model cannot generate on rank 0 alone; the exported GGUF still answers below
        log("sample reply: skipped for the in-memory model under FSDP (its weights are sharded)")
    else:
        result.sample_reply = reply(model, tokenizer, template, conversation)
    if result.gguf_path is not None:  # the same question, answered by llama.cpp from the exported GGUF
        session = ChatSession(result.gguf_path, max_new_tokens=64)
        try:
            result.gguf_reply = "".join(session.reply(conversation))
        finally:
            session.close()


def save_weights(recipe: Recipe, model, tokenizer, template, result: RunResult, state_dict=None) -> None:
    """adapter/ for LoRA (model/ for a full finetune), and merged/ and the GGUF export when export.formats asks.
    `state_dict`: the full weights gathered from FSDP shards, when the model's own are sharded."""
    run_dir = result.run_dir
    adapter = recipe.lora is not None or recipe.model.adapter is not None
    if adapter:
        with atomic_dir(run_dir / "adapter") as tmp:
            model.save_pretrained(tmp, state_dict=state_dict)
            tokenizer.chat_template = template.source
            tokenizer.save_pretrained(tmp)
        result.adapter_dir = run_dir / "adapter"
    else:
        result.model_dir = save_merged(model, tokenizer, template.source, run_dir / "model", state_dict)
    if "safetensors" in recipe.export.formats:
        if not adapter:
            merged, merged_state = model, state_dict
        else:
            merged, merged_state = merge_adapter(recipe.model.name, result.adapter_dir,
                                                 pretrained.pick_dtype(recipe.model), recipe.model.trust_remote_code), None
            if recipe.model.doctor == "fix":  # the base was reloaded: its embedding/config fixes are needed again
                doctor.reapply(merged, tokenizer, template, recipe)
        result.merged_dir = save_merged(merged, tokenizer, template.source, run_dir / "merged", merged_state)
    if {"gguf", "ollama"} & set(recipe.export.formats):
        export_after_training(run_dir, recipe.export)  # RUN_DIR/export/: GGUF files, Modelfile, export-report.json
        result.export_dir = run_dir / "export"
        ggufs = sorted(result.export_dir.glob("model-*.gguf"))
        result.gguf_path = next((g for g in ggufs if g.name == "model-f16.gguf"), ggufs[0] if ggufs else None)


def sample_conversation(rows: list[dict]) -> list[dict] | None:
    """The first row's conversation up to its first assistant reply, to show what the model learnt."""
    for row in rows:
        if row.get("prompt") and "messages" not in row:  # preference and prompt rows (DPO, GRPO)
            return as_messages(row["prompt"], "user")
        messages = row.get("messages")
        if messages:
            first_assistant = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
            return messages[:first_assistant]
    return None


def finish_manifest(manifest: rundir.Manifest, result: RunResult) -> None:
    """status: done, the final loss and the measured peak in the manifest; summary.json beside it."""
    losses = [m["loss"] for m in result.metrics if "loss" in m]
    manifest.facts.update({"status": "done", "seconds": round(result.seconds, 1),
                           "final_loss": losses[-1] if losses else None})
    if torch.cuda.is_available():  # measured against the pre-flight estimate in docs/benchmarks.md
        manifest.facts["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / memory.GiB, 2)
    manifest.write()
    with contextlib.suppress(OSError):  # a run that saved no checkpoint leaves no empty checkpoints/ behind
        (result.run_dir / "checkpoints").rmdir()
    (result.run_dir / "summary.json").write_text(json.dumps({
        "data": result.data_report, "sample_prompt": result.sample_prompt, "sample_reply": result.sample_reply,
        "gguf": str(result.gguf_path) if result.gguf_path else None, "gguf_reply": result.gguf_reply,
        "seconds": result.seconds}, indent=2), encoding="utf-8")
