"""Offline tiny models of real architectures: ``builtin:tiny-llama3`` and friends.

Each builtin is a real transformers class (LlamaForCausalLM, Gemma3ForCausalLM, ...) at a
tiny size, with deterministic weights, a tokenizer of the family's kind trained locally
with ``tokenizers`` on a small built-in corpus, the family's special tokens and its chat
template from ``templates/``. ``builtin_path(name)`` builds it once into the cache
(``$FTCLI_CACHE`` or ``~/.cache/ftcli``) and returns a folder that ``from_pretrained``
loads exactly like a hub checkout. Nothing here touches the network.

Where the released model has no pad token, or pads with eos, the builtin gets a distinct pad
(Llama 3: <|finetune_right_pad_id|>, Phi-3: <|placeholder6|>, Mistral: <pad>), so that the
builtins are healthy for ``ftcli doctor``. The cache folder is
``builtin/<name>-v<BUILD_VERSION>-<hash of the template and its token facts>``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib
import shutil
import tempfile
from dataclasses import dataclass, field

from ftcli.data import templates

BUILD_VERSION = 2
BUILTINS: tuple[str, ...] = ("tiny-llama3", "tiny-gemma3", "tiny-qwen3", "tiny-phi3", "tiny-mistral")
PREFIX = "builtin:"


class BuiltinError(ValueError):
    """An unknown builtin name, or a builtin that cannot be built."""


# Pre-tokenizer regexes of the real byte-level BPE tokenizers (digits: 1-3 for Llama 3, 1 for Qwen).
_LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


@dataclass(frozen=True)
class _Spec:
    family: str
    model_class: str             # transformers class of the model
    config_class: str
    config: dict                 # tiny sizes; the rest as the real family config
    kind: str                    # "bytelevel" BPE, or "spm": SentencePiece-style BPE + byte fallback
    tokenizer_class: str         # what the hub's tokenizer_config names
    head: tuple[str, ...] = ()   # special tokens at ids 0.. (SentencePiece families)
    tail: tuple[str, ...] = ()   # special tokens appended after the trained vocab
    plain: tuple[str, ...] = ()  # added tokens that are not special (Qwen's <think> ...)
    pad: str = ""                # our pad where the release has none or pads with eos (doctor T01/T02)
    regex: str = ""              # bytelevel: the family's split regex
    prefix_space: bool = True    # spm: prepend "▁" to the text (Llama/Mistral/Phi-3 do, Gemma does not)
    seed: int = 0
    extra_tokenizer_config: dict = field(default_factory=dict)


_GQA = dict(num_hidden_layers=4, num_attention_heads=6, num_key_value_heads=2, head_dim=16,
            hidden_size=96, intermediate_size=256, hidden_act="silu", attention_bias=False)

_SPECS: dict[str, _Spec] = {
    "tiny-llama3": _Spec(  # Llama 3.2 1B/3B-Instruct shape: tied embeddings, llama3 rope scaling
        "llama3", "LlamaForCausalLM", "LlamaConfig",
        dict(_GQA, rms_norm_eps=1e-5, tie_word_embeddings=True, max_position_embeddings=131072,
             rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=32.0, low_freq_factor=1.0,
                                  high_freq_factor=4.0, original_max_position_embeddings=8192)),
        "bytelevel", "PreTrainedTokenizerFast", regex=_LLAMA3_REGEX, seed=1,
        tail=("<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
              "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>",
              "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"),
        pad="<|finetune_right_pad_id|>"),
    "tiny-gemma3": _Spec(  # Gemma 3 1B shape: 5:1 sliding/global -> 3:1 here, head_dim != hidden/heads
        "gemma3", "Gemma3ForCausalLM", "Gemma3TextConfig",
        dict(num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=1, head_dim=16, hidden_size=72,
             intermediate_size=192, hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=16,
             sliding_window=16, sliding_window_pattern=4,
             layer_types=["sliding_attention"] * 3 + ["full_attention"],
             final_logit_softcapping=None, attn_logit_softcapping=None, rms_norm_eps=1e-6,
             tie_word_embeddings=True, max_position_embeddings=32768,
             rope_parameters=dict(sliding_attention=dict(rope_type="default", rope_theta=10000.0),
                                  full_attention=dict(rope_type="default", rope_theta=1000000.0))),
        "spm", "GemmaTokenizer", prefix_space=False, seed=2,
        head=("<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"),
        tail=("<start_of_image>", "<end_of_image>")),
    # Qwen3 0.6B shape: tied, q/k norms, head_dim != hidden/heads. Every linear's in_features is a
    # multiple of 64 (bitsandbytes' 4-bit block on the CPU), so QLoRA paths run on this one in CI.
    "tiny-qwen3": _Spec(
        "qwen3", "Qwen3ForCausalLM", "Qwen3Config",
        dict(_GQA, hidden_size=192, num_attention_heads=4, head_dim=32, intermediate_size=256,
             rms_norm_eps=1e-6, tie_word_embeddings=True, max_position_embeddings=40960,
             rope_parameters=dict(rope_type="default", rope_theta=1000000.0)),
        "bytelevel", "Qwen2Tokenizer", regex=_QWEN_REGEX, seed=3,
        tail=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        plain=("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"),
        extra_tokenizer_config=dict(errors="replace")),
    "tiny-phi3": _Spec(  # Phi-3 shape (GQA as in Phi-3-medium): fused qkv_proj / gate_up_proj, untied
        "phi3", "Phi3ForCausalLM", "Phi3Config",
        dict(_GQA, num_attention_heads=4, head_dim=24, rms_norm_eps=1e-5, tie_word_embeddings=False,
             max_position_embeddings=4096, original_max_position_embeddings=4096, sliding_window=2047,
             rope_parameters=dict(rope_type="default", rope_theta=10000.0, partial_rotary_factor=1.0)),
        "spm", "LlamaTokenizer", seed=4, head=("<unk>", "<s>", "</s>"),
        tail=("<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|placeholder2|>", "<|placeholder3|>",
              "<|placeholder4|>", "<|system|>", "<|end|>", "<|placeholder5|>", "<|placeholder6|>",
              "<|user|>"),
        pad="<|placeholder6|>", extra_tokenizer_config=dict(legacy=False)),
    "tiny-mistral": _Spec(  # Mistral 7B v0.3 shape: GQA, untied, no sliding window
        "mistral", "MistralForCausalLM", "MistralConfig",
        dict(_GQA, rms_norm_eps=1e-5, tie_word_embeddings=False, max_position_embeddings=32768,
             sliding_window=None, rope_parameters=dict(rope_type="default", rope_theta=1000000.0)),
        "spm", "LlamaTokenizer", seed=5,
        head=("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]",
              "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "<pad>"),
        pad="<pad>", extra_tokenizer_config=dict(legacy=False)),
}

# A few KB of plain English (ASCII only) to train the tokenizers on; it covers the words and
# formats of the bundled datasets and the chat templates, digits and punctuation.
_CORPUS = """\
You are a helpful assistant. Answer the question and explain your reasoning step by step.
Question: What is 12 plus 7? Answer: 19. ANSWER: 19
Question: Tom has 3 apples and buys 5 more. How many apples does he have now? Answer: 8
Question: A train travels 60 miles per hour for 2 hours. How far does it go? Answer: 120 miles.
Question: What is the capital of France? Answer: Paris. The answer is Paris.
Question: If a book costs $15 and a pen costs $2, what do 2 books and 3 pens cost? Answer: $36
Q: What is 9 times 8? A: 72. Final answer: 72. #### 72
The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG!
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 20 25 30 42 50 64 99 100 128 256 500 1000 2024 2025.
Math: 1 + 1 = 2; 3 - 2 = 1; 4 * 5 = 20; 10 / 2 = 5; 2^10 = 1024; 3.14 < 22/7; x = (a + b) * c.
Punctuation: , . ; : ! ? ' " ( ) [ ] { } < > / \\ | @ # $ % ^ & * - + = _ ~ `
Today Date: 26 Jul 2024. Cutting Knowledge Date: December 2023. Reasoning: think first, then answer.
The user asks a question and the assistant gives a short, correct and polite answer.
System: Keep your answers brief. User: Hello! Assistant: Hi, how can I help you today?
Please summarize the following text in one sentence. Translate the sentence into French.
Write a short poem about the sea. Write a Python function that returns the sum of a list.
def add(a, b):\n    return a + b\n\nprint(add(2, 3))  # prints 5
Water boils at 100 degrees Celsius at sea level. The Earth goes around the Sun once a year.
A week has 7 days, a day has 24 hours, an hour has 60 minutes and a minute has 60 seconds.
Cats and dogs are popular pets. Birds can fly, fish can swim, and people can walk and run.
The cat sat on the mat. The dog ran in the park. The children played in the garden all day.
She said that she would come tomorrow, but he was not sure. They were happy to see us again.
It is important to check your work. Correct answers are good; wrong answers are bad.
Mary had 24 cookies. She gave 1/3 of them to her friend. How many cookies are left? Answer: 16
John is 5 years older than Sam. Sam is 10. How old is John? Let's think. 10 + 5 = 15. Answer: 15
A rectangle is 4 meters wide and 6 meters long. Its area is 24 square meters.
There are 365 days in a year, and 366 in a leap year. February has 28 or 29 days.
Good morning! Thank you very much. You're welcome. I don't know. It's fine. We'll see. I'm here.
The first step is to read the problem. The second step is to solve it. The last step is to check it.
Solve for x: 2x + 3 = 11. Subtract 3 from both sides: 2x = 8. Divide by 2: x = 4.
Is the statement true or false? True. Yes or no? No. Choose A, B, C or D. The correct option is C.
Paris is in France, Berlin is in Germany, Rome is in Italy, Madrid is in Spain, London is in England.
Red, green, blue, yellow, black, white, orange, purple and brown are colors.
Monday, Tuesday, Wednesday, Thursday, Friday, Saturday and Sunday are the days of the week.
January, March, April, May, June, July, August, September, October, November and December.
one two three four five six seven eight nine ten hundred thousand million first second third
Review: This movie was great, I loved it. Sentiment: positive.
Review: Boring and too long. Sentiment: negative.
Hi there! Hi, I am a user. Hello there, how are you? I am fine, thanks. What about you?
user: Can you help me with my homework? assistant: Sure, what is the problem?
Instruction: Give three tips for staying healthy. Response: Eat well, sleep enough and exercise.
Input: The weather is nice today. Output: Le temps est beau aujourd'hui.
Context: The library opens at 9 am and closes at 5 pm. Question: When does it close? Answer: 5 pm.
The model should stop after the answer. End of the answer. Thank you for your question.
"""


def is_builtin(name: str) -> bool:
    """True for any "builtin:..." id (the prefix marks it); builtin_path rejects unknown names."""
    return isinstance(name, str) and name.startswith(PREFIX)


def _spec(name: str) -> tuple[str, _Spec]:
    short = name[len(PREFIX):] if name.startswith(PREFIX) else name
    if short not in _SPECS:
        raise BuiltinError(f"unknown builtin model {name!r}; choose one of: "
                           + ", ".join(PREFIX + b for b in BUILTINS))
    return short, _SPECS[short]


def family_of(name: str) -> str:
    """The chat-template family of a builtin: tiny-llama3 -> "llama3"."""
    return _spec(name)[1].family


_META_KEYS = ("bos_token", "eos_token", "pad_token", "add_bos_token", "end_of_turn", "stop_tokens",
              "special_tokens", "added_tokens")


def _family_meta(family: str) -> tuple[dict, str]:
    """templates/<family>.yaml facts and the template text (ftcli.data.templates)."""
    return dict(templates.family_info(family)), templates.load_family(family).source


def _resolved_meta(spec: _Spec, meta: dict) -> dict:
    """The yaml facts we build from; a missing pad, or pad == eos, becomes the spec's own pad."""
    out = {k: meta.get(k) for k in _META_KEYS}
    if not out["pad_token"] or out["pad_token"] == out["eos_token"]:
        out["pad_token"] = spec.pad
    return out


def _cache_root() -> pathlib.Path:
    return pathlib.Path(os.environ.get("FTCLI_CACHE") or pathlib.Path.home() / ".cache" / "ftcli") / "builtin"


def builtin_path(name: str) -> pathlib.Path:
    """Build the builtin once into the cache (atomically) and return its folder."""
    short, spec = _spec(name)
    meta, template = _family_meta(spec.family)
    meta = _resolved_meta(spec, meta)
    # The folder name carries a hash of the template and its token facts, so that a template
    # edited in templates/ never meets a stale cached tokenizer.
    key = json.dumps([meta, template], sort_keys=True)
    target = _cache_root() / f"{short}-v{BUILD_VERSION}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{short}-", dir=target.parent))
    tmp.chmod(0o755)
    try:
        _build(spec, meta, template, tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first: keep theirs, discard ours
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# ----------------------------------------------------------------------------- tokenizer
def _token_lists(spec: _Spec, meta: dict) -> tuple[list[str], list[str], list[str]]:
    """(head, tail, plain): the family's added tokens plus any the yaml names that we lack."""
    wanted = [meta[k] for k in ("bos_token", "eos_token", "pad_token", "end_of_turn")]
    wanted += list(meta["stop_tokens"] or []) + list(meta["special_tokens"] or [])
    known = set(spec.head) | set(spec.tail) | set(spec.plain)
    tail = list(spec.tail) + [t for t in dict.fromkeys(wanted) if t and t not in known]
    plain = list(spec.plain) + [t for t in meta["added_tokens"] or [] if t not in known and t not in tail]
    return list(spec.head), tail, plain


def _train_tokenizer(spec: _Spec, meta: dict, template: str):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers import processors, trainers

    head, tail, plain = _token_lists(spec, meta)
    corpus = [_CORPUS, template]  # the template's words too, so chat text tokenizes compactly
    if spec.kind == "bytelevel":
        tok = Tokenizer(models.BPE(ignore_merges=spec.family == "llama3"))
        if spec.family == "qwen3":
            tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(spec.regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=1536, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(corpus, trainer)
    else:
        scheme = "first" if spec.prefix_space else "never"
        tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
        tok.pre_tokenizer = pre_tokenizers.Sequence([  # train on words: no merge spans "▁" or "\n"
            pre_tokenizers.Split("\n", behavior="isolated"), pre_tokenizers.Metaspace(prepend_scheme=scheme)])
        alphabet = [chr(c) for c in range(33, 127)] + ["▁", "\n"]
        trainer = trainers.BpeTrainer(vocab_size=1280, show_progress=False, special_tokens=head,
                                      initial_alphabet=alphabet, limit_alphabet=len(alphabet))
        tok.train_from_iterator(corpus, trainer)
        # Insert the 256 byte-fallback pieces <0x00>..<0xFF> right after the head specials.
        data = json.loads(tok.to_str())
        vocab = data["model"]["vocab"]
        shifted = {t: (i if i < len(head) else i + 256) for t, i in vocab.items()}
        shifted.update({f"<0x{b:02X}>": len(head) + b for b in range(256)})
        data["model"]["vocab"] = dict(sorted(shifted.items(), key=lambda kv: kv[1]))
        tok = Tokenizer.from_str(json.dumps(data))
        # The pipeline the hub class (LlamaTokenizer / GemmaTokenizer) rebuilds on load.
        if spec.family == "gemma3":
            tok.normalizer = normalizers.Replace(" ", "▁")
            tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous", invert=False)
        else:
            tok.normalizer = None
            tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme=scheme, split=False)
        steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        tok.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if spec.prefix_space else []))
    for t in tail + plain:
        tok.add_tokens([AddedToken(t, special=t not in plain, normalized=False)])
    bos = meta.get("bos_token")
    if meta.get("add_bos_token") and bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
            special_tokens=[(bos, tok.token_to_id(bos))])
    elif spec.kind == "bytelevel":
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def _tokenizer_config(spec: _Spec, meta: dict, template: str, tok, max_len: int) -> dict:
    added = {str(i): dict(content=a.content, lstrip=False, normalized=False, rstrip=False,
                          single_word=False, special=a.special)
             for i, a in sorted(tok.get_added_tokens_decoder().items())}
    cfg = dict(tokenizer_class=spec.tokenizer_class, added_tokens_decoder=added,
               bos_token=meta.get("bos_token"), eos_token=meta["eos_token"], pad_token=meta.get("pad_token"),
               unk_token="<unk>" if spec.kind == "spm" else None,
               add_bos_token=bool(meta.get("add_bos_token")), add_eos_token=False,
               clean_up_tokenization_spaces=False, model_max_length=max_len, chat_template=template)
    return {**cfg, **spec.extra_tokenizer_config}


# ----------------------------------------------------------------------------- model
def _build(spec: _Spec, meta: dict, template: str, out: pathlib.Path) -> None:
    import torch
    import transformers
    from transformers import GenerationConfig

    tok = _train_tokenizer(spec, meta, template)
    ids = {k: tok.token_to_id(meta[k]) if meta[k] else None for k in ("bos_token", "eos_token", "pad_token")}
    # Generation stops at eos, at the end-of-turn token and at every stop token of the template.
    stops = [meta["eos_token"], meta["end_of_turn"], *(meta["stop_tokens"] or [])]
    eos = list(dict.fromkeys(tok.token_to_id(t) for t in stops if t))
    cfg_cls = getattr(transformers, spec.config_class)
    config = cfg_cls(vocab_size=tok.get_vocab_size(), bos_token_id=ids["bos_token"], eos_token_id=eos,
                     pad_token_id=ids["pad_token"], initializer_range=0.02, **spec.config)
    config.dtype = torch.float32
    # transformers' own init draws from the global RNG: fork it, or a cold cache would shift what a caller
    # seeded before builtin_path() draws next (LoRA init after set_seed, say) on the first build only.
    with torch.random.fork_rng(devices=[]):
        model = getattr(transformers, spec.model_class)(config)
    # Our own init, independent of transformers' init code: N(0, 1/fan_in) for matrices (every
    # embedding row random, special tokens included) so that a tiny model's logits are O(1) and
    # it learns within a CPU budget; 1-D norm weights = default + N(0, 0.1) so that kernels
    # which get the (1 + w) Gemma norm wrong are caught.
    gen = torch.Generator().manual_seed(1000 + spec.seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=gen)
            if p.dim() == 1:
                p.add_(noise * 0.1)
            else:
                p.copy_(noise / math.sqrt(p.shape[-1]))
    model.generation_config = GenerationConfig(bos_token_id=ids["bos_token"], eos_token_id=eos,
                                               pad_token_id=ids["pad_token"])
    quiet = not transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        model.save_pretrained(out)
    finally:
        if not quiet:
            transformers.utils.logging.enable_progress_bar()
    tok.save(str(out / "tokenizer.json"))
    tcfg = _tokenizer_config(spec, meta, template, tok, config.max_position_embeddings)
    (out / "tokenizer_config.json").write_text(json.dumps(tcfg, indent=2, ensure_ascii=False) + "\n")
    stamp = dict(name=f"tiny-{spec.family}", build_version=BUILD_VERSION, family=spec.family,
                 template_sha256=hashlib.sha256(template.encode()).hexdigest(),
                 transformers=transformers.__version__)
    (out / "ftcli_builtin.json").write_text(json.dumps(stamp, indent=2) + "\n")
