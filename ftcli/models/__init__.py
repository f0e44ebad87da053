"""Models: load a base model and tokenizer from a hub id, a folder or builtin: (pretrained.py, builtin.py),
attach or continue LoRA adapters (lora.py), generate a reply (generate.py), and the transformers names that
changed inside our supported range (hf_compat.py).

May import: ftcli.data, ftcli.recipe, ftcli.errors.
"""
