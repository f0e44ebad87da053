"""Benchmarks that print figures (docs/benchmarks.md): the LoRA training step side by side with the peers
(lora_step.py) and GRPO against plain TRL (grpo.py).

May import: ftcli.runner, ftcli.stages, ftcli.engine, ftcli.models, ftcli.data, ftcli.recipe, ftcli.errors.
"""
