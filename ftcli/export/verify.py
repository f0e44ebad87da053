"""Check a GGUF against the Hugging Face model it came from.

* Logits: the same token ids go through the HF model (float32) and llama.cpp; we report
  max |Δlogit|, NMSE (mean squared difference over the variance of the HF logits), top-1
  agreement and the mean KL(HF ‖ GGUF) per position. The 16-bit base file must pass
  (NMSE < 1e-3 and top-1 ≥ 90%); quantised files are reported, not gated.
* Tokenisation: llama.cpp's tokenizer against the HF tokenizer on plain texts, texts with
  every special token, and the chat template rendered on a conversation. The rendered
  chat must tokenize identically (that is what a chat front-end sends); other mismatches
  are reported as warnings with the first differing position.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ftcli.data import templates
from ftcli.errors import FtcliError
from ftcli.export import llamacpp

BASE_NMSE_MAX = 1e-3
BASE_TOP1_MIN = 0.90
MAX_TOKENS = 64

PLAIN_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "Question: What is 12 plus 7? Answer: 19.\nQ: 9 times 8?  A: 72 #### 72",
    "  indented\ttabs\n\nnew lines, unicode café 日本語 🙂 and x = (a + b) * c;",
)
# Scripts and languages where tokenizers go wrong: checked on every export, listed in the report when
# llama.cpp's tokenizer differs from the HF one (exported anyway, with a warning).
MULTILINGUAL = (
    "Der schnelle braune Fuchs springt über den faulen Hund. Größe: 12,5 m².",
    "Le cœur a ses raisons que la raison ne connaît point. «Déjà-vu», n'est-ce pas ?",
    "¿Dónde está la biblioteca? ¡Mañana, señor Muñoz!",
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "Ξεσκεπάζω την ψυχοφθόρα βδελυγμία. Ελληνικά 2024.",
    "日本語のテキスト：東京は日本の首都です。カタカナとひらがな。",
    "中文测试：今天天气很好，我们去公园散步吧。1234567",
    "한국어 문장입니다. 안녕하세요, 만나서 반갑습니다!",
    "हिन्दी में एक वाक्य: नमस्ते दुनिया।",
    "العربية: مرحبا بالعالم، كيف حالك؟",
    "עברית: שלום עולם, מה שלומך?",
    "ภาษาไทย: สวัสดีชาวโลก ยินดีที่ได้รู้จัก",
    "Tiếng Việt: Xin chào thế giới, bạn có khỏe không?",
    "emoji 👩‍👩‍👧‍👦 🇫🇷 ✨ and math ∑∫√∞ ≠ ≤ ≥, code `x => x ** 2`;\r\n\ttab",
    "  leading spaces, CamelCaseWords, UPPERCASE, 3.14159, 1,000,000 and   multiple   spaces",
)
CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant. Keep your answers brief."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris. The answer is Paris."},
    {"role": "user", "content": "And what is 12 plus 7?"},
]


class ParityFailed(FtcliError):
    """The exported file does not reproduce the trained model: exit 1."""


@dataclass
class Reference:
    """The HF side: tokenizer, template, and the logits of every sample."""
    tokenizer: object
    samples: list[list[int]]
    logits: list[np.ndarray]
    texts: list[tuple[str, str]] = field(default_factory=list)  # (kind, text) for tokenisation parity


def conversation_for(template) -> list[dict]:
    return CONVERSATION if template.supports_system else CONVERSATION[1:]


def build_reference(model_dir: Path, template, threads: int | None = None) -> Reference:
    """Load the merged HF model in float32 once and compute the reference logits."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    conversation = conversation_for(template)
    rendered = templates.render(template, conversation, tokenizer, add_generation_prompt=True)
    samples = [templates.prompt_ids(template, conversation, tokenizer)[:MAX_TOKENS]]
    samples += [list(tokenizer(t)["input_ids"])[:MAX_TOKENS] for t in PLAIN_TEXTS[:2]]

    if threads:
        torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.eval()
    logits = []
    with torch.no_grad():
        for ids in samples:
            logits.append(model(torch.tensor([ids])).logits[0].double().numpy())
    del model

    specials = [t for t in dict.fromkeys(tokenizer.all_special_tokens) if t]
    added = [a.content for a in tokenizer.added_tokens_decoder.values() if a.content not in specials]
    texts = [("plain", t) for t in PLAIN_TEXTS] + [("multilingual", t) for t in MULTILINGUAL]
    if specials:  # starts with a special token, so the SentencePiece start-of-text prefix is not in play
        texts.append(("special", " ".join(specials + added[:8]) + " end" + specials[-1] + "x\n" + specials[0]))
    texts.append(("chat", rendered))
    texts.append(("chat", templates.render(template, conversation[:-1] if template.supports_system else
                                      conversation[:2], tokenizer)))
    return Reference(tokenizer=tokenizer, samples=samples, logits=logits, texts=texts)


@contextlib.contextmanager
def open_gguf(path: Path, n_ctx: int = 256, logits_all: bool = True, vocab_only: bool = False,
              lora: Path | None = None):
    try:
        llm = llamacpp.load(path, n_ctx=n_ctx, logits_all=logits_all, vocab_only=vocab_only, lora=lora)
    except llamacpp.LoadFailed as err:
        tail = " | ".join(ln.strip() for ln in err.log[-4:])
        raise ParityFailed(f"llama.cpp could not load {Path(path).name}: {err} ({tail})") from None
    try:
        with llamacpp.capture_llama_log():
            yield llm
    finally:
        llm.close()


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def compare_logits(ref: Reference, path: Path, lora: Path | None = None) -> dict:
    """Figures for one GGUF (optionally with a LoRA GGUF applied) against the reference logits."""
    diffs, sq, var_sum, agree, total, kls = [], 0.0, 0.0, 0, 0, []
    with open_gguf(path, n_ctx=max(256, max(len(s) for s in ref.samples)), lora=lora) as llm:
        for ids, hf in zip(ref.samples, ref.logits):
            llm.reset()
            llm.eval(ids)
            gg = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
            n = min(gg.shape[1], hf.shape[1])
            a, b = hf[:, :n], gg[:, :n]
            diffs.append(float(np.abs(a - b).max()))
            sq += float(((a - b) ** 2).sum())
            var_sum += float(((a - a.mean()) ** 2).sum())
            agree += int((a.argmax(-1) == b.argmax(-1)).sum())
            total += a.shape[0]
            p, q = _softmax(a), _softmax(b)
            kls.append(float((p * (np.log(p + 1e-30) - np.log(q + 1e-30))).sum(-1).mean()))
    return {"max_abs_diff": round(max(diffs), 6), "nmse": float(f"{sq / var_sum:.3g}"),
            "top1_agreement": round(agree / total, 4), "kl_mean": float(f"{float(np.mean(kls)):.3g}"),
            "positions": total}


def check_base(figures: dict, name: str) -> None:
    if figures["nmse"] >= BASE_NMSE_MAX or figures["top1_agreement"] < BASE_TOP1_MIN:
        raise ParityFailed(
            f"{name} does not reproduce the model: NMSE {figures['nmse']:.3g} (must be < {BASE_NMSE_MAX:g}), "
            f"top-1 agreement {figures['top1_agreement']:.1%} (must be ≥ {BASE_TOP1_MIN:.0%}), "
            f"max |Δlogit| {figures['max_abs_diff']:.4g}",
            hint="this is a converter bug for this architecture; please report it with export-report.json")


def compare_tokenization(ref: Reference, path: Path) -> dict:
    """Token ids from llama.cpp vs HF for every sample text (special tokens parsed, BOS as configured)."""
    tokenizer = ref.tokenizer
    results = []
    with open_gguf(path, logits_all=False, vocab_only=True) as llm:
        for kind, text in ref.texts:
            hf = list(tokenizer(text)["input_ids"])
            gg = list(llm.tokenize(text.encode("utf-8"), add_bos=True, special=True))
            entry = {"kind": kind, "text": text if len(text) <= 120 else text[:117] + "...", "match": hf == gg,
                     "tokens": len(hf)}
            if hf != gg:
                i = next((k for k, (x, y) in enumerate(zip(hf, gg)) if x != y), min(len(hf), len(gg)))
                entry["first_difference"] = {"position": i, "hf": tokenizer.convert_ids_to_tokens(hf[i:i + 3]),
                                             "llama_cpp": tokenizer.convert_ids_to_tokens(gg[i:i + 3])}
            results.append(entry)
    return {"samples": results, "all_match": all(r["match"] for r in results),
            "differing_texts": [r["text"] for r in results if not r["match"]],
            "chat_match": all(r["match"] for r in results if r["kind"] == "chat")}
