"""Config, numerics, embedding and export checks (research/doctor-bugs.md sections C, D and E),
plus the decode/encode round trip."""

from __future__ import annotations

import math

import torch

from ftcli.doctor.checks_tokens import template_tokens
from ftcli.doctor.registry import Hit, check
from ftcli.doctor.subject import Subject

SENTINEL_LENGTH = 1e20  # model_max_length at or above this is transformers' VERY_LARGE_INTEGER sentinel
FP16_UNSAFE = ("gemma3", "gemma3_text", "gemma3n", "gemma3n_text", "gemma4", "qwen3_moe", "glm4_moe")
ROUNDTRIP_SAMPLES = (
    "Hello, world! It's 2024 and the answer is 42.",
    "Is it ? Yes . No !",
    "tabs\tand\nnew lines\n\nend",
    "unicode: café naïve 日本語 😀",
    "def f(x):\n    return x ** 2  # ok",
)
ROPE_REQUIRED = {
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
    "yarn": ("factor",),
    "linear": ("factor",),
    "dynamic": ("factor",),
    "longrope": ("short_factor", "long_factor"),
}


def _model_dtype(s: Subject) -> torch.dtype | None:
    if s.model is not None:
        return getattr(s.model, "dtype", None)
    name = getattr(getattr(s.recipe, "model", None), "dtype", None)
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}.get(name)


@check("embed-scale-precision", "warning", "N01",
       "compute the sqrt(hidden_size) embedding scale in fp32 and cast after multiplying", needs=("model",))
def embed_scale_precision(s: Subject):
    if s.model is None or s.family != "gemma":
        return None
    emb = s.model.get_input_embeddings()
    hidden = s.text_config.get("hidden_size") or emb.weight.shape[1]
    dtype = emb.weight.dtype
    ids = torch.arange(min(64, emb.weight.shape[0]), device=emb.weight.device)
    with torch.no_grad():
        out = emb(ids[None])[0]
        ref = (emb.weight[ids].float() * math.sqrt(hidden)).to(dtype)
    differ = (out != ref).float().mean().item()
    if differ < 0.05:
        return None
    effective = (out.float() / emb.weight[ids].float()).nan_to_num().flatten().median().item()
    return (f"the embeddings are scaled by sqrt({hidden}) = {math.sqrt(hidden):.4f} rounded to {dtype} "
            f"(effectively {effective:.4f}; {differ:.0%} of values differ from an fp32 scale): a systematic activation error")


@check("norm-offset-precision", "warning", "N02", "compute Gemma's RMSNorm (1 + w) in fp32 and cast at the end",
       needs=("model",))
def norm_offset_precision(s: Subject):
    if s.model is None or s.family != "gemma":
        return None
    bad = []
    gen = torch.Generator().manual_seed(0)
    for name, module in s.model.named_modules():
        if not type(module).__name__.endswith("RMSNorm") or getattr(module, "weight", None) is None:
            continue
        w = module.weight
        eps = getattr(module, "eps", getattr(module, "variance_epsilon", 1e-6))
        x = torch.randn((4, w.shape[-1]), generator=gen).to(w.device, w.dtype) * 3
        with torch.no_grad():
            out = module(x)
            xf = x.float()
            ref = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * (1.0 + w.float())).to(x.dtype)
        if w.dtype == torch.float32:
            wrong = not torch.allclose(out, ref, rtol=1e-5, atol=1e-5)
        else:  # an fp32 computation cast once matches the reference bit for bit (a few ulp flips at most)
            wrong = (out != ref).float().mean().item() > 0.05
        if wrong:
            bad.append(name)
    if not bad:
        return None
    return (f"{len(bad)} RMSNorm module(s) ({', '.join(bad[:3])}) do not compute (1 + w) in fp32: "
            f"their output differs from the fp32 reference")


@check("gemma-activation", "warning", "N03", "set hidden_activation: gelu_pytorch_tanh (--fix does)", fixable=True,
       needs=("config",))
def gemma_activation(s: Subject):
    cfg = s.text_config
    if not s.model_type.startswith("gemma") or not cfg:
        return None
    act = cfg.get("hidden_activation")
    if act == "gelu" or (act is None and cfg.get("hidden_act") == "gelu" and s.model_type == "gemma"):
        return ("the config asks for exact GELU, but Gemma was trained with the tanh approximation "
                "(gelu_pytorch_tanh)")
    return None


@check("gemma2-query-scale", "error", "N05", "set query_pre_attn_scalar to 256 (9B/2B) or 144 (27B) (--fix does)",
       fixable=True, needs=("config",))
def gemma2_query_scale(s: Subject):
    cfg = s.text_config
    if s.model_type != "gemma2":
        return None
    expected = {26: 256, 42: 256, 46: 144}.get(cfg.get("num_hidden_layers"))
    got = cfg.get("query_pre_attn_scalar")
    if expected is None or got == expected:
        return None
    return Hit(f"query_pre_attn_scalar is {got}, but Gemma 2 with {cfg.get('num_hidden_layers')} layers needs "
               f"{expected}: every attention score is mis-scaled", data={"value": expected})


@check("softcapping-attention", "error", "N06",
       "use attn_implementation: eager (or flash-attn >= 2.6) for models with attention soft-capping "
       "(at training start ftcli switches to eager)", fixable=True, needs=("config",))
def softcapping_attention(s: Subject):
    cap = s.text_config.get("attn_logit_softcapping")
    if not cap:
        return None
    impl = None
    if s.model is not None:
        impl = getattr(s.model.config, "_attn_implementation", None)
    elif s.recipe is not None:
        impl = s.recipe.model.attn_implementation
    if impl == "sdpa" or (impl == "flash_attention_2" and not _flash_attn_at_least("2.6")):
        return Hit(f"the config soft-caps attention logits at {cap}, but the {impl} attention kernel ignores "
                   "soft-capping: wrong logits", fixable=s.model is not None)
    return None


def _flash_attn_at_least(version: str) -> bool:
    try:
        import flash_attn  # noqa: F401
        from packaging.version import Version

        return Version(flash_attn.__version__) >= Version(version)
    except Exception:  # noqa: BLE001
        return False


@check("fp16-overflow", "error", "N07", "train in bfloat16 (or float32); float16 overflows in this architecture",
       needs=("config",))
def fp16_overflow(s: Subject):
    if s.model_type not in FP16_UNSAFE or _model_dtype(s) != torch.float16:
        return None
    return (f"{s.model_type} activations exceed float16's range (65504): inf then NaN loss. Use "
            "model.dtype: bfloat16")


def rope_params(cfg: dict) -> list[tuple[str, dict]]:
    """(label, params) for each RoPE parameter set of a config (v5 rope_parameters, v4 rope_scaling)."""
    raw = cfg.get("rope_parameters") or cfg.get("rope_scaling")
    if not isinstance(raw, dict):
        return [("rope", {})] if raw is None else []
    if "rope_type" in raw or "type" in raw or "factor" in raw or "rope_theta" in raw:
        return [("rope", raw)]
    return [(k, v) for k, v in raw.items() if isinstance(v, dict)]  # per layer type (Gemma 3)


@check("rope-scaling", "error", "N08, N09",
       "restore the official rope_scaling / rope_parameters from the model's original config.json",
       needs=("config",))
def rope_scaling(s: Subject):
    cfg = s.text_config
    if not cfg or not s.model_type:
        return None
    hits = []
    for label, params in rope_params(cfg):
        kind = params.get("rope_type") or params.get("type") or "default"
        missing = [k for k in ROPE_REQUIRED.get(kind, ()) if params.get(k) in (None, [], "")]
        if missing:
            hits.append(f"{label}: rope_type {kind!r} lacks {', '.join(missing)}")
        theta = params.get("rope_theta", cfg.get("rope_theta"))
        if (s.model_type == "llama" and kind == "default" and theta == 500000.0
                and (cfg.get("max_position_embeddings") or 0) >= 131072):
            hits.append(f"{label}: a Llama-3.1-style config (rope_theta 500000, {cfg['max_position_embeddings']} "
                        "positions) without llama3 rope scaling: long-context quality silently breaks")
    return hits


@check("max-length", "info", "N14",
       "set model_max_length (and model.max_seq_length) to what the model supports (--fix writes it)",
       fixable=True, needs=("tokens",))
def max_length(s: Subject):
    mml, positions = s.model_max_length, s.max_positions
    hits = []
    if mml is not None and mml >= SENTINEL_LENGTH:
        hits.append(Hit("model_max_length is the 1e30 'no limit' sentinel: the tokenizer never truncates"
                        + (f"; the model supports {positions} positions" if positions else ""),
                        fixable=positions is not None, data={"value": positions}))
    elif mml is not None and positions and mml < positions:
        hits.append(Hit(f"model_max_length {int(mml)} is smaller than the model's {positions} positions: the "
                        "tokenizer truncates and warns below the real context", severity="warning",
                        data={"value": positions}))
    want = getattr(getattr(s.recipe, "model", None), "max_seq_length", None)
    if want and positions and want > positions:
        hits.append(Hit(f"model.max_seq_length {want} is beyond the model's {positions} positions",
                        severity="error", fixable=False))
    return hits


@check("tied-embeddings", "warning", "N13", "re-tie lm_head to the embeddings before saving (--fix does)",
       fixable=True, needs=("weights",))
def tied_embeddings(s: Subject):
    w = s.weights
    if w is None or not s.text_config.get("tie_word_embeddings") or w.tied:
        return None
    if w.n_head != w.n_embed:
        return Hit(f"tie_word_embeddings is true but lm_head has {w.n_head} rows and the embedding {w.n_embed}",
                   severity="error", fixable=False)
    ids = w.sample_ids("embed", set(), 64)
    if torch.equal(w.rows("embed", ids), w.rows("head", ids)):
        return None
    return "tie_word_embeddings is true but the checkpoint's lm_head differs from the embeddings: the tie is broken"


def used_token_ids(s: Subject) -> dict[int, str]:
    """Ids the template, the named special tokens and the data samples use."""
    used: dict[int, str] = {}
    tokens = template_tokens(s) | {t for t in (s.eos, s.bos, s.end_of_turn()) if t}
    for t in tokens:
        i = s.id_of(t)
        if i is not None:
            used[i] = t
    if s.tokenizer is not None:
        special = {e["id"] for e in s.added}
        for row in s.samples[:16]:
            for m in row.get("messages", []) if isinstance(row, dict) else []:
                for i in s.encode_ids(m.get("content", "")) or []:
                    if i in special:
                        used[i] = s.token_of(i)
    return used


def untrained_rows(s: Subject) -> tuple[dict[int, str], dict[int, str]] | None:
    """({id: why} errors, {id: why} warnings) for the used token ids, or None without weights."""
    w = s.weights
    if w is None:
        return None
    used = {i: t for i, t in used_token_ids(s).items() if 0 <= i < w.n_embed}
    if not used:
        return {}, {}
    ids = sorted(used)
    ref_ids = w.sample_ids("embed", set(ids), 512)
    ref = w.rows("embed", ref_ids)
    ref_norm = ref.norm(dim=1)
    ref_norm = ref_norm[ref_norm > 1e-12]
    median = ref_norm.median().item() if ref_norm.numel() else 0.0
    rows = w.rows("embed", ids)
    errors, warnings = {}, {}
    mean = None
    for i, row in zip(ids, rows):
        if row.abs().max().item() <= 1e-16:
            errors[i] = "zero"
        elif row.numel() > 1 and row.std().item() == 0.0:
            errors[i] = "constant"
        elif median > 0 and not (median / 20 < row.norm().item() < median * 20):
            if mean is None:
                mean = w.mean_row("embed", set(ids))
            # A row set to the mean of the trained rows is the standard fix (E01), not a stray init (E03).
            if torch.nn.functional.cosine_similarity(row, mean, dim=0).item() < 0.95:
                warnings[i] = f"norm {row.norm().item():.3g} vs {median:.3g} typical"
    if not w.tied and w.n_head:
        head_ids = [i for i in ids if i < w.n_head]
        head = w.rows("head", head_ids)
        for a in range(len(head_ids)):
            if head[a].abs().max().item() <= 1e-16:
                errors.setdefault(head_ids[a], "lm_head row zero")
            for b in range(a + 1, len(head_ids)):
                if torch.equal(head[a], head[b]):
                    errors.setdefault(head_ids[a], f"lm_head row equals that of id {head_ids[b]}")
                    errors.setdefault(head_ids[b], f"lm_head row equals that of id {head_ids[a]}")
    return errors, warnings


@check("untrained-special-tokens", "error", "E01, E02, E03",
       "set the untrained rows to the mean of the trained rows (--fix does), or train embed_tokens and lm_head",
       fixable=True, needs=("weights",))
def untrained_special_tokens(s: Subject):
    found = untrained_rows(s)
    if not found:
        return None
    errors, warnings = found
    used = used_token_ids(s)
    hits = []
    if errors:
        names = ", ".join(f"{used.get(i, i)!r} ({why})" for i, why in sorted(errors.items())[:6])
        hits.append(Hit(f"{len(errors)} token(s) the template or data use have untrained embeddings: {names}. "
                        "NaN losses, and a model that never emits them (e.g. never stops)",
                        data={"ids": sorted(errors)}))
    if warnings:
        names = ", ".join(f"{used.get(i, i)!r} ({why})" for i, why in sorted(warnings.items())[:6])
        hits.append(Hit(f"{len(warnings)} used token(s) have embeddings far from the rest: {names} "
                        "(random init after resizing?)", severity="warning", data={"ids": sorted(warnings)}))
    return hits


@check("roundtrip", "warning", "T13, T10",
       "decode with clean_up_tokenization_spaces=False (--fix sets it) or fix the tokenizer's normaliser",
       fixable=True, needs=("live",))
def roundtrip(s: Subject):
    tok = s.tokenizer
    if tok is None:
        return None
    failed = []
    for text in ROUNDTRIP_SAMPLES:
        try:
            out = tok.decode(tok(text, add_special_tokens=False)["input_ids"])
        except Exception as err:  # noqa: BLE001
            out = f"<{type(err).__name__}>"
        if out != text:
            failed.append((text, out))
    if not failed:
        return None
    cleanup_fixes = all(
        tok.decode(tok(t, add_special_tokens=False)["input_ids"], clean_up_tokenization_spaces=False) == t
        for t, _ in failed)
    text, out = failed[0]
    return Hit(f"decode(encode(text)) != text for {len(failed)} of {len(ROUNDTRIP_SAMPLES)} samples, e.g. {text!r} -> "
               f"{out!r}", severity="error" if failed[0][0] == ROUNDTRIP_SAMPLES[0] else None,
               fixable=cleanup_fixes)


@check("gguf-token-type", "error", "X01",
       "retype the chat special tokens as CONTROL in tokenizer.model before converting to GGUF")
def gguf_token_type(s: Subject):
    if s.gguf is None or not s.gguf.get("token_type"):
        return None
    types = s.gguf["token_type"]
    needed = {t for t in (s.bos, s.eos, s.end_of_turn()) if t}
    needed |= template_tokens(s)
    bad = [t for t in sorted(needed) if (i := s.id_of(t)) is not None and i < len(types) and types[i] == 1]
    if not bad:
        return None
    return (f"{', '.join(repr(t) for t in bad)} {'is' if len(bad) == 1 else 'are'} typed NORMAL in the GGUF "
            "vocabulary: llama.cpp splits them as text and chat breaks")

