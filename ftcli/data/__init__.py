"""Data: dataset files to standard rows (formats.py), chat templates (templates.py), message helpers
(messages.py), SFT token ids and labels (supervised.py), packed batches (packing.py).

May import: ftcli.recipe, ftcli.errors.
"""
