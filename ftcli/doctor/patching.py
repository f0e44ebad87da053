"""Applying a doctor `Patch` (ftcli/doctor/fixes.py): in memory to the live tokenizer, model and chat
template at training start, or as corrected copies of the files in an output folder."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from ftcli.doctor.checks_tokenizer_files import MISTRAL_REGEX, template_processors
from ftcli.doctor.fixes import Patch
from ftcli.doctor.readers import TOKENIZER_FILES, id_list
from ftcli.doctor.subject import Subject


def apply_in_memory(s: Subject, patch: Patch, template):
    """Apply to the live tokenizer, model and ChatTemplate; returns the (possibly new) template."""
    if s.tokenizer is not None:
        _apply_to_tokenizer(s, patch)
    if s.model is not None:
        _apply_to_model(s.model, patch)
    if template is not None:
        if patch.template is not None:
            template = dataclasses.replace(template, source=patch.template)
        if patch.fold_system:
            template = dataclasses.replace(template, supports_system=False)
    return template


def _apply_to_tokenizer(s: Subject, patch: Patch) -> None:
    tok = s.tokenizer
    if "pad_token" in patch.special:
        tok.pad_token = patch.special["pad_token"]
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None and (patch.make_special or patch.prepend_bos or patch.rebuild_post_processor
                                or patch.mistral_regex):
        from tokenizers import Tokenizer

        data = json.loads(backend.to_str())
        _edit_tokenizer_json(data, s, patch)
        fresh = Tokenizer.from_str(json.dumps(data))
        backend.post_processor = fresh.post_processor
        backend.pre_tokenizer = fresh.pre_tokenizer
        if patch.make_special:
            from tokenizers import AddedToken

            backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in patch.make_special])
    for key in ("model_max_length", "clean_up_tokenization_spaces"):
        if key in patch.tokenizer_config:
            setattr(tok, key, patch.tokenizer_config[key])


def _apply_to_model(model, patch: Patch) -> None:
    import torch

    configs = [model.config] + ([model.config.text_config] if hasattr(model.config, "text_config") else [])
    gen = getattr(model, "generation_config", None)
    if patch.pad_id is not None:
        for cfg in configs + ([gen] if gen is not None else []):
            cfg.pad_token_id = patch.pad_id
    if patch.gen_eos_add:
        base = id_list(getattr(gen, "eos_token_id", None)) or id_list(model.config.eos_token_id)
        ids = list(dict.fromkeys(base + patch.gen_eos_add))
        if gen is not None:
            gen.eos_token_id = ids
        model.config.eos_token_id = ids
    for key, value in patch.config.items():
        for cfg in configs:
            setattr(cfg, key, value)
        _refresh_modules(model, key, value)
    if patch.retie:
        model.tie_weights()
    if patch.eager_attention:
        try:
            model.set_attn_implementation("eager")
        except Exception:  # noqa: BLE001 - older API: the attention modules read the config per call
            model.config._attn_implementation = "eager"
    if patch.untrained_ids:
        with torch.no_grad():
            _reset_rows(model.get_input_embeddings().weight, patch.untrained_ids)
            head = model.get_output_embeddings()
            if head is not None and head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr():
                _reset_rows(head.weight, patch.untrained_ids)


def _refresh_modules(model, key: str, value) -> None:
    """Config values that modules copy at construction time."""
    if key == "hidden_activation":
        from transformers.activations import ACT2FN

        for module in model.modules():
            if hasattr(module, "act_fn"):
                module.act_fn = ACT2FN[value]
    elif key == "query_pre_attn_scalar":
        for module in model.modules():
            if hasattr(module, "scaling") and hasattr(module, "q_proj"):
                module.scaling = value ** -0.5


def _reset_rows(weight, ids: list[int]) -> None:
    import torch

    ids = [i for i in ids if i < weight.shape[0]]
    if not ids:
        return
    keep = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
    keep[ids] = False
    trained = weight[keep].float()
    nonzero = trained.abs().amax(dim=1) > 1e-16
    mean = trained[nonzero].mean(0) if nonzero.any() else trained.mean(0)
    weight[ids] = mean.to(weight.dtype)


def _edit_tokenizer_json(tj: dict, s: Subject, patch: Patch) -> None:
    if patch.make_special:
        for entry in tj.get("added_tokens") or []:
            if entry.get("content") in patch.make_special:
                entry["special"] = True
    if patch.rebuild_post_processor:
        for pp in template_processors(tj.get("post_processor")):
            for spec in (pp.get("special_tokens") or {}).values():
                spec["ids"] = [s.id_of(t) if s.id_of(t) is not None else i
                               for t, i in zip(spec.get("tokens") or [], spec.get("ids") or [])]
    if patch.prepend_bos and s.bos:
        bos, bos_id = s.bos, s.id_of(s.bos)
        tp = {"type": "TemplateProcessing",
              "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
              "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
              "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}}}
        old = tj.get("post_processor")
        if isinstance(old, dict) and old.get("type") not in (None, "TemplateProcessing"):
            tj["post_processor"] = {"type": "Sequence", "processors": [old, tp]}
        else:
            tj["post_processor"] = tp
    if patch.mistral_regex:
        def walk(node):
            if isinstance(node, dict):
                if node.get("type") == "Split" and isinstance(node.get("pattern"), dict) and "Regex" in node["pattern"]:
                    node["pattern"]["Regex"] = MISTRAL_REGEX
                    return True
                return any(walk(inner) for inner in node.get("pretokenizers") or [])
            return False

        walk(tj.get("pre_tokenizer"))


def write_fixed(s: Subject, patch: Patch, out_dir: Path) -> list[str]:
    """Corrected copies of the subject's files in `out_dir`; returns the names written."""
    if s.folder is None:
        raise ValueError("this target has no model folder to write corrected files from")
    out_dir = Path(out_dir)
    if out_dir.resolve() == Path(s.folder).resolve():
        raise ValueError("--fix writes corrected copies into a new folder, never in place")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if patch.touches_weights and s.model is not None and not hasattr(s.weights, "files"):
        # A recipe target: the weights live in memory; fix the rows there and save the whole model
        # first, so that the corrected copies of the folder's files below win over its config.json.
        written += _save_fixed_model(s, patch, out_dir)
    for name in TOKENIZER_FILES:
        if (s.folder / name).is_file():
            shutil.copyfile(s.folder / name, out_dir / name)
            written.append(name)
    tc = _load_json(out_dir / "tokenizer_config.json") or {}
    tj = _load_json(out_dir / "tokenizer.json")
    stm = _load_json(out_dir / "special_tokens_map.json")
    gen = _load_json(out_dir / "generation_config.json")
    cfg = _load_json(out_dir / "config.json")
    _fix_tokenizer_files(s, patch, tc, tj, stm)
    if patch.template is not None:
        _fix_template_files(s, patch.template, tc, out_dir)
    gen = _fix_model_configs(s, patch, cfg, gen)
    if tc:
        _save_json(out_dir, "tokenizer_config.json", tc, written)
    for name, data in (("tokenizer.json", tj), ("special_tokens_map.json", stm), ("generation_config.json", gen),
                       ("config.json", cfg)):
        if data is not None:
            _save_json(out_dir, name, data, written)
    if patch.touches_weights and hasattr(s.weights, "files"):
        written += _write_weights(s, patch, out_dir)
    return written


def _save_fixed_model(s: Subject, patch: Patch, out_dir: Path) -> list[str]:
    """Fix the embedding rows of the live model and save it whole; returns the safetensors names."""
    weights_only = Patch(untrained_ids=patch.untrained_ids, retie=patch.retie)
    apply_in_memory(dataclasses.replace(s, tokenizer=None), weights_only, None)
    s.model.save_pretrained(out_dir, safe_serialization=True)
    return sorted(p.name for p in out_dir.glob("*.safetensors*"))


def _load_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _save_json(out_dir: Path, name: str, data, written: list[str]) -> None:
    (out_dir / name).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if name not in written:
        written.append(name)


def _fix_tokenizer_files(s: Subject, patch: Patch, tc: dict, tj: dict | None, stm: dict | None) -> None:
    """Special tokens and flags in tokenizer_config.json and special_tokens_map.json, and tokenizer.json."""
    for key, token in patch.special.items():
        tc[key] = token
        if stm is not None:
            stm[key] = ({**stm[key], "content": token} if isinstance(stm.get(key), dict) else token)
    tc.update(patch.tokenizer_config)
    if patch.make_special:
        for entry in (tc.get("added_tokens_decoder") or {}).values():
            if isinstance(entry, dict) and entry.get("content") in patch.make_special:
                entry["special"] = True
    if patch.decoder_from_json and tj is not None:
        in_json = {str(e["id"]): e for e in tj.get("added_tokens") or []}
        for key, entry in (tc.get("added_tokens_decoder") or {}).items():
            if key in in_json and isinstance(entry, dict):
                entry["content"] = in_json[key]["content"]
    if tj is not None:
        _edit_tokenizer_json(tj, s, patch)


def _fix_template_files(s: Subject, template: str, tc: dict, out_dir: Path) -> None:
    """The new template in the output folder: over chat_template.jinja if there is one; in tokenizer_config.json,
    over the named variant that held the old template, or as its chat_template when there is no .jinja file."""
    jinja = out_dir / "chat_template.jinja"
    if jinja.is_file():
        jinja.write_text(template, encoding="utf-8")
    current = tc.get("chat_template")
    if isinstance(current, list):
        for item in current:
            if isinstance(item, dict) and item.get("template") == s.template:
                item["template"] = template
    elif isinstance(current, dict):
        for key, value in current.items():
            if value == s.template:
                current[key] = template
    elif not jinja.is_file():
        tc["chat_template"] = template


def _fix_model_configs(s: Subject, patch: Patch, cfg: dict | None, gen: dict | None) -> dict | None:
    """pad and eos ids and config keys in config.json (its text config) and generation_config.json;
    returns generation_config, created when stop ids must be added and the folder has none."""
    text_cfg = cfg.get("text_config") if isinstance((cfg or {}).get("text_config"), dict) else cfg
    if patch.pad_id is not None:
        for d in (text_cfg, gen):
            if d is not None:
                d["pad_token_id"] = patch.pad_id
    if patch.gen_eos_add:
        if gen is None:
            gen = {"bos_token_id": s.id_of(s.bos), "eos_token_id": None}
            if patch.pad_id is not None or s.id_of(s.pad) is not None:
                gen["pad_token_id"] = patch.pad_id if patch.pad_id is not None else s.id_of(s.pad)
        base = id_list(gen.get("eos_token_id")) or id_list((text_cfg or {}).get("eos_token_id"))
        if not base and s.id_of(s.eos) is not None:
            base = [s.id_of(s.eos)]
        ids = list(dict.fromkeys(base + patch.gen_eos_add))
        gen["eos_token_id"] = ids
        if text_cfg is not None:
            text_cfg["eos_token_id"] = ids
    if text_cfg is not None:
        text_cfg.update(patch.config)
    return gen


def _write_weights(s: Subject, patch: Patch, out_dir: Path) -> list[str]:
    """Re-save the safetensors with the embedding rows reset (and lm_head re-tied)."""
    import torch
    from safetensors.torch import load_file, save_file

    w = s.weights
    if w is None or not hasattr(w, "files"):
        return []
    written = []
    files = sorted(set(w.files.values()))
    index = Path(w.files[w.embed_name]).parent / "model.safetensors.index.json"
    for path in files:
        tensors = load_file(str(path))
        changed = False
        for name in list(tensors):
            if name in (w.embed_name, w.head_name) and patch.untrained_ids:
                t = tensors[name].clone()
                with torch.no_grad():
                    _reset_rows(t, patch.untrained_ids)
                tensors[name] = t
                changed = True
            if patch.retie and name == w.head_name:
                del tensors[name]
                changed = True
        if changed:
            save_file(tensors, str(out_dir / path.name), metadata={"format": "pt"})
        else:
            shutil.copyfile(path, out_dir / path.name)
        written.append(path.name)
    if index.is_file():
        data = json.loads(index.read_text(encoding="utf-8"))
        if patch.retie and w.head_name:
            data.get("weight_map", {}).pop(w.head_name, None)
        (out_dir / index.name).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        written.append(index.name)
    return written

