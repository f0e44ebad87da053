"""Export: merged safetensors (merge.py), GGUF written from the weights (gguf.py with gguf_tensors.py,
gguf_hparams.py, vocab.py; LoRA adapters: lora_gguf.py) and quantized through llama.cpp (quantize.py,
llamacpp.py), checked against the trained model (verify.py), the Ollama Modelfile (ollama.py), the `ftcli export`
flow (run.py, with source.py, options.py, gguf_files.py, report.py), and chatting with a run, folder or GGUF
(chat_session.py).

May import: ftcli.models, ftcli.data, ftcli.recipe, ftcli.errors, ftcli.files.
"""
