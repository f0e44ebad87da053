"""`ftcli chat TARGET`: talk to a run directory, a model folder or a GGUF file.

The prompt is always the training chat template (a run's own template, the folder's
tokenizer template, or the template a GGUF carries in tokenizer.chat_template) with its
stop tokens, and replies stream token by token. Nothing here prints: `reply` yields text.
"""

from __future__ import annotations

import codecs
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ftcli.data import templates
from ftcli.data.messages import fold_system
from ftcli.data.templates import stop_token_ids
from ftcli.errors import BadInput
from ftcli.export import llamacpp
from ftcli.export.source import resolve_source, run_template, torch_dtype


@dataclass
class _Shim:
    """Just enough of a tokenizer for templates.render on a GGUF: the template rendered by transformers' own
    Jinja renderer, with the GGUF's bos/eos strings."""
    bos_token: str | None
    eos_token: str | None

    def apply_chat_template(self, messages, chat_template, tokenize=False, add_generation_prompt=False, **kw):
        from transformers.utils.chat_template_utils import render_jinja_template

        rendered, _ = render_jinja_template(conversations=[messages], chat_template=chat_template,
                                            add_generation_prompt=add_generation_prompt,
                                            bos_token=self.bos_token or "", eos_token=self.eos_token or "")
        return rendered[0]

    def get_vocab(self):
        return {}


class ChatSession:
    """One model plus its chat template; `reply(messages)` streams the assistant's answer."""

    def __init__(self, target: Path, max_new_tokens: int = 256, temperature: float = 0.0):
        self.target = Path(target).expanduser()
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        if not self.target.exists():
            raise BadInput(f"{self.target} does not exist",
                           hint="give a run directory, a model folder or a .gguf file")
        if self.target.is_file() and self.target.suffix == ".gguf":
            self._open_gguf()
        else:
            self._open_hf()

    # --------------------------------------------------------------------------- Hugging Face
    def _open_hf(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        src = resolve_source(self.target)
        dtype = torch_dtype(src.dtype) if src.kind == "run" else torch.float32
        if src.model_dir is not None:
            folder = src.model_dir
            model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
        else:
            from peft import PeftModel

            from ftcli.models.pretrained import resolve_name  # lazy: it loads torch

            folder = src.adapter_dir
            base = AutoModelForCausalLM.from_pretrained(resolve_name(src.base_name), dtype=dtype)
            model = PeftModel.from_pretrained(base, str(folder))
        if torch.cuda.is_available():
            model = model.to("cuda")
        self.model = model.eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.template = run_template(src, self.tokenizer, None)
        self.kind = "hf"
        self.description = f"{folder} (transformers, template {self.template.name})"

    def _reply_hf(self, messages: list[dict]) -> Iterator[str]:
        import torch
        from transformers import TextIteratorStreamer

        ids = templates.prompt_ids(self.template, messages, self.tokenizer)
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([ids], device=device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        sampling = {"do_sample": True, "temperature": self.temperature} if self.temperature > 0 else {"do_sample": False}
        kwargs = dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), streamer=streamer,
                      max_new_tokens=self.max_new_tokens, eos_token_id=stop_token_ids(self.template, self.tokenizer),
                      pad_token_id=self.tokenizer.pad_token_id, **sampling)
        errors: list[BaseException] = []

        def run():
            try:
                with torch.no_grad():
                    self.model.generate(**kwargs)
            except BaseException as err:  # surfaced in the caller's thread
                errors.append(err)
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        yield from streamer
        thread.join()
        if errors:
            raise errors[0]

    # --------------------------------------------------------------------------- GGUF
    def _open_gguf(self) -> None:
        import gguf

        from ftcli.export.gguf import STOP_KEY, TEMPLATE_NAME_KEY  # lazy: it loads numpy

        reader = gguf.GGUFReader(str(self.target))
        fields = {name: field_value(f) for name, f in reader.fields.items()
                  if name.startswith(("tokenizer.chat_template", "ftcli.", "tokenizer.ggml.bos", "tokenizer.ggml.eos",
                                      "tokenizer.ggml.eot"))}
        source = fields.get("tokenizer.chat_template")
        if not source:
            raise BadInput(f"{self.target.name} carries no chat template (tokenizer.chat_template)",
                           hint="export it with ftcli export, which writes the training template into the GGUF")
        try:
            self.llm = llamacpp.load(self.target, n_ctx=4096)
        except llamacpp.LoadFailed as err:
            raise BadInput(f"llama.cpp could not load {self.target}: {err}") from None
        token = lambda i: self.llm.detokenize([i], special=True).decode("utf-8", "replace") if i is not None else None  # noqa: E731
        bos, eos = token(fields.get("tokenizer.ggml.bos_token_id")), token(fields.get("tokenizer.ggml.eos_token_id"))
        eot = token(fields.get("tokenizer.ggml.eot_token_id"))
        stops = list(fields.get(STOP_KEY) or [])
        self.tokenizer = _Shim(bos, eos)
        name = fields.get(TEMPLATE_NAME_KEY) or "gguf"
        draft = templates.ChatTemplate(name, source, eot or eos, tuple(dict.fromkeys(s for s in [eot, *stops, eos] if s)))
        try:
            templates.render(draft, [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}], self.tokenizer)
            supports_system = True
        except templates.ChatTemplateError:
            supports_system = False
        self.template = templates.ChatTemplate(name, source, draft.end_of_turn, draft.stop_tokens, supports_system)
        self.stop_ids = set()
        for text in self.template.stop_tokens:
            ids = self.llm.tokenize(text.encode(), add_bos=False, special=True)
            if len(ids) == 1:
                self.stop_ids.add(ids[0])
        self.kind = "gguf"
        self.description = f"{self.target} (llama.cpp, template {name})"

    def _reply_gguf(self, messages: list[dict]) -> Iterator[str]:
        import llama_cpp

        prompt = templates.render(self.template, messages, self.tokenizer, add_generation_prompt=True)
        bos = self.tokenizer.bos_token
        ids = self.llm.tokenize(prompt.encode(), add_bos=not (bos and prompt.startswith(bos)), special=True)
        vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        count = 0
        for token in self.llm.generate(ids, temp=self.temperature, top_k=40 if self.temperature > 0 else 1,
                                       top_p=0.95 if self.temperature > 0 else 1.0, reset=True):
            if token in self.stop_ids or llama_cpp.llama_vocab_is_eog(vocab, token):
                break
            text = decoder.decode(self.llm.detokenize([token], special=False))
            if text:
                yield text
            count += 1
            if count >= self.max_new_tokens:
                break
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail

    # --------------------------------------------------------------------------- both
    def reply(self, messages: list[dict]) -> Iterator[str]:
        """Stream the reply to `messages` (which end with a user turn)."""
        if not self.template.supports_system:
            messages = fold_system(messages)
        return self._reply_gguf(messages) if self.kind == "gguf" else self._reply_hf(messages)

    def close(self) -> None:
        if getattr(self, "llm", None) is not None:
            self.llm.close()
            self.llm = None


def field_value(f):
    """A GGUFReader field as a Python value (str, int, or list of str)."""
    import gguf

    types = f.types
    if not types:
        return None
    if types[0] == gguf.GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8")
    if types[0] == gguf.GGUFValueType.ARRAY:
        if len(types) > 1 and types[1] == gguf.GGUFValueType.STRING:
            return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
        return [f.parts[i].tolist()[0] for i in f.data]
    return f.parts[f.data[0]].tolist()[0]
