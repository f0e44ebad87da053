"""ftcli: finetune open LLMs from one YAML recipe."""

__version__ = "0.1.0"
