"""Chat-template checks (research/doctor-bugs.md section B, C01-C16), all through render probes."""

from __future__ import annotations

import datetime as _dt
import re

from ftcli.data import templates
from ftcli.data.messages import fold_system
from ftcli.doctor import probes
from ftcli.doctor.registry import Hit, check
from ftcli.doctor.subject import Subject

ROLE_WORDS = re.compile(r"\b(user|assistant|system|model|human|gpt|bot|ai)\b", re.IGNORECASE)


def header_info(s: Subject, source: str | None = None) -> tuple[str, str] | None:
    """(end-of-turn, assistant header) when the user turn is closed by the end-of-turn marker."""
    gap, eot = s.assistant_gap(source), s.end_of_turn(source)
    if gap is None or not eot or eot not in gap:
        return None  # Mistral-style: the user turn itself ends with the cue ([/INST])
    header = gap[gap.rindex(eot) + len(eot):].lstrip("\n")
    return (eot, header) if header.strip() else None


def header_every_turn(s: Subject, source: str | None = None) -> str | None:
    info = header_info(s, source)
    if info is None:
        return None
    header = info[1].strip()
    u0 = s.try_render(probes.U, False, source)
    ua = s.try_render(probes.UA, False, source)
    if (u0 and u0.rstrip().endswith(header)) or (ua and ua.rstrip().endswith(header)):
        return info[1]
    return None


def generation_header(s: Subject, source: str | None = None) -> str | None:
    """The text the generation prompt should add: render(UA) before the reply, minus render(U)."""
    u0, ua = s.try_render(probes.U, False, source), s.try_render(probes.UA, False, source)
    if u0 is None or ua is None or probes.REPLY not in ua:
        return None
    prompt = ua[:ua.index(probes.REPLY)]
    if not prompt.startswith(u0) or len(prompt) == len(u0):
        return None
    return prompt[len(u0):]


@check("template-missing", "warning", "C14",
       "set template.name to a family (llama3, gemma3, qwen3, ...) or a .jinja file; base models have no template")
def template_missing(s: Subject):
    if s.template is not None:
        return None
    auto = s.recipe is not None and getattr(s.recipe.template, "name", "auto") == "auto"
    where = "the GGUF metadata" if s.gguf is not None else "tokenizer_config.json, chat_template.jinja or chat_template.json"
    return Hit(f"no chat template in {where}"
               + (": the recipe's template.name: auto cannot work" if auto else
                  " (a base model?): chat data needs template.name set to a family, whose tokens must be trained"),
               severity="error" if auto else None)


@check("template-variants", "info", "C14", "name the variant you train with; keep one template per model folder")
def template_variants(s: Subject):
    hits = []
    if len(s.variants) > 1:
        used = "default" if "default" in s.variants else next(iter(s.variants))
        hits.append(f"{len(s.variants)} named chat templates ({', '.join(s.variants)}): ftcli uses {used!r}")
    if s.template_file_differs:
        hits.append(Hit("chat_template.jinja and tokenizer_config.json's chat_template differ: transformers uses the "
                        ".jinja file, other tools may use the other", severity="warning"))
    return hits


@check("template-render-error", "error", "C04, C05, C12",
       "fix the template's Jinja (or pick a family template): it must render plain user/assistant chats",
       needs=("template",))
def template_render_error(s: Subject):
    if s.template is None:
        return None
    try:
        probes.compile_template(s.template)
    except probes.RenderError as err:
        return f"the template does not compile: {err}"
    for conv, agp, label in ((probes.U, True, "a user message with the generation prompt"),
                             (probes.UA, False, "a user/assistant exchange"),
                             (probes.UAUA, False, "a two-turn conversation")):
        try:
            s.render(conv, agp)
        except probes.RenderError as err:
            return f"the template fails to render {label}: {err}"
    return None


@check("template-no-generation-prompt", "warning", "C01",
       "add {% if add_generation_prompt %}<assistant header>{% endif %} (--fix appends it)", fixable=True,
       needs=("template",))
def template_no_generation_prompt(s: Subject):
    u0, u1 = s.try_render(probes.U, False), s.try_render(probes.U, True)
    if u0 is None or u0 != u1 or header_info(s) is None or header_every_turn(s):
        return None
    header = generation_header(s)
    if not header:
        return None
    return Hit(f"add_generation_prompt has no effect: inference prompts lack the assistant header {header!r}, so "
               "the model continues the user's turn", data={"header": header})


@check("template-header-every-turn", "error", "C02",
       "move the assistant header into an add_generation_prompt block (--fix rewrites the template)",
       fixable=True, needs=("template",))
def template_header_every_turn(s: Subject):
    header = header_every_turn(s)
    if header is None:
        return None
    return Hit(f"the template appends the assistant header {header.strip()!r} after every user turn whatever "
               "add_generation_prompt says: training samples carry dangling headers and servers add a second one",
               data={"header": header})


@check("template-no-end-of-turn", "error", "C03", "close each assistant turn with the end-of-turn/eos token",
       needs=("template",))
def template_no_end_of_turn(s: Subject):
    text = s.try_render(probes.UA)
    if text is None or probes.REPLY not in text:
        return None
    if s.end_of_turn() is None:
        return (f"nothing closes the assistant turn (render ends {text[-40:]!r}): the model never learns to emit "
                "a stop token")
    return None


@check("template-drops-system", "error", "C04",
       "merge the system text into the first user turn (ftcli does this at training), or choose another template",
       fixable=True, needs=("template",))
def template_drops_system(s: Subject):
    if s.chat is not None and not s.chat.supports_system:
        return None  # ftcli folds system text into the first user turn (data.fold_system)
    try:
        text = s.render(probes.SUA)
    except probes.RenderError as err:
        return Hit(f"the template refuses system messages ({err}); ftcli folds system text into the first user "
                   "turn", severity="info", fixable=False)
    if probes.SYS in text:
        return None
    later = s.try_render(probes.SUA + [{"role": "user", "content": probes.USER2}])
    where = (" (it is printed only with the last user message, so every sample that ends with an assistant "
             "reply loses it)" if later and probes.SYS in later else "")
    return Hit(f"the template silently drops the system message{where}", fixable=s.kind == "training")


@check("template-strict-alternation", "info", "C05",
       "merge consecutive same-role messages before rendering, or drop those rows", needs=("template",))
def template_strict_alternation(s: Subject):
    bad = []
    for conv, label in ((probes.UU, "two user messages in a row"), (probes.UAA, "two assistant messages in a row")):
        try:
            s.render(conv)
        except probes.RenderError as err:
            bad.append(f"{label} ({err})")
    if not bad:
        return None
    return "the template raises on " + " and on ".join(bad) + ": such dataset rows are reported as invalid"


def _samples_have_reasoning(s: Subject) -> bool:
    return any("<think>" in m.get("content", "") for row in s.samples for m in row.get("messages", [])
               if m.get("role") == "assistant")


@check("template-strips-reasoning", "error", "C06",
       "train with a template that keeps reasoning (e.g. TRL's *_training.jinja), or pre-render and mask yourself",
       needs=("template",))
def template_strips_reasoning(s: Subject):
    think = s.try_render(probes.THINK)
    if think is None:
        return None
    data = _samples_have_reasoning(s)
    if probes.REASON not in think:
        return ("the template deletes the <think> reasoning of every assistant turn: SFT on reasoning traces "
                "trains the model to answer without thinking")
    later = s.try_render(probes.THINK_U)
    if later is not None and probes.REASON not in later:
        return Hit("the template drops the reasoning of assistant turns before the last user message: multi-turn "
                   "data loses its reasoning", severity="error" if data else "warning")
    return None


@check("template-prefills-think", "warning", "C07",
       "train and serve with the same pre-fill: put '<think>\\n' in the prompt during training, or remove it",
       needs=("template",))
def template_prefills_think(s: Subject):
    u0, u1 = s.try_render(probes.U, False), s.try_render(probes.U, True)
    if u0 is None or u1 is None:
        return None
    tail = u1[len(u0):] if u1.startswith(u0) else u1
    if re.search(r"<think>\s*(</think>\s*)?$", tail):
        return (f"the generation prompt ends with a reasoning pre-fill ({tail[-24:]!r}): completions lack the opening "
                "<think>, and training targets that start with <think> disagree with serving")
    return None


@check("template-not-prefix-preserving", "warning", "C08",
       "mask by character offsets (ftcli does) and avoid prefix-diffing tools with this template",
       needs=("template",))
def template_not_prefix_preserving(s: Subject):
    bad = []
    for short, long, label in ((probes.U, probes.UA, "user -> +assistant"),
                               (probes.UA, probes.UAU, "assistant -> +user"),
                               (probes.SUA, probes.SUA + [{"role": "user", "content": probes.USER2}], "system chat -> +user"),
                               (probes.SUAU, probes.SUAU + probes.UAUA[-1:] + probes.U, "system chat -> +2 turns")):
        a, b = s.try_render(short), s.try_render(long)
        if a is not None and b is not None and not b.startswith(a):
            bad.append(label)
    if not bad:
        return None
    return ("rendering a conversation is not a prefix of rendering it with one more message (" + ", ".join(bad) +
            "): KV-cache reuse and tools that diff tokenizations break")


@check("chat-template-mask", "error", "C09, C10",
       "fix the template's end-of-turn/generation prompt (or template.train_on) so each reply and its end-of-turn are trained",
       needs=("template", "live"))
def chat_template_mask(s: Subject):
    if s.tokenizer is None or s.template is None:
        return None
    train_on = getattr(getattr(s.recipe, "template", None), "train_on", "assistant")
    if train_on == "all":
        return None
    template = s.chat_template()
    max_length = getattr(getattr(s.recipe, "model", None), "max_seq_length", None)
    convs = [("a probe chat", probes.UA), ("a two-turn probe chat", probes.UAUA)]
    convs += [(f"dataset row {i + 1}", row["messages"]) for i, row in enumerate(s.samples[:4]) if "messages" in row]
    eot_id = s.id_of(template.end_of_turn)
    hits = []
    for label, messages in convs:
        if not template.supports_system:
            messages = fold_system(messages)
        try:
            enc = templates.encode(template, messages, s.tokenizer, train_on=train_on, max_length=max_length)
        except Exception as err:  # noqa: BLE001 - ChatTemplateError and friends
            hits.append(f"ftcli cannot build the loss mask of {label}: {err}")
            break
        trained = [i for i, label_id in zip(enc["input_ids"], enc["labels"]) if label_id != templates.IGNORE_INDEX]
        turns = sum(m["role"] == "assistant" for m in messages)
        if not trained:
            hits.append(f"{label}: no assistant token is trained" + (" (truncated to model.max_seq_length)"
                                                                     if enc["truncated"] else ""))
            continue
        if eot_id is not None and eot_id in enc["input_ids"] and not enc["truncated"] and trained.count(eot_id) < turns:
            hits.append(f"{label}: the end-of-turn token {template.end_of_turn!r} is masked out, so the model never "
                        "learns to stop")
        text = s.tokenizer.decode(trained)
        if probes.USER in text or probes.USER2 in text:
            hits.append(f"{label}: user tokens are trained as if they were the assistant's")
    return hits


def _injected_text(s: Subject, text: str) -> str:
    rest = text.replace(probes.USER, " ")
    for _, marker in sorted(probes.markers(rest, s.known_markers()), key=lambda m: -len(m[1])):
        rest = rest.replace(marker, " ")
    rest = ROLE_WORDS.sub(" ", rest)
    return " ".join(rest.split())


@check("template-default-system", "warning", "C11",
       "pass an explicit system message in both training and serving (or pin date_string)",
       needs=("template",))
def template_default_system(s: Subject):
    text = s.try_render(probes.U, False)
    if text is None:
        return None
    extra = _injected_text(s, text)
    if not re.search(r"[A-Za-z]{3,}", extra):
        return None
    return (f"without a system message the template injects its own text ({extra[:70]!r}"
            f"{'...' if len(extra) > 70 else ''}): training data carries a default persona or date")


@check("template-date", "warning", "C11", "pin the date (strftime_now/date_string) in training and serving",
       needs=("template",))
def template_date(s: Subject):
    a = s.try_render(probes.U, True, strftime_now=probes.Clock(_dt.datetime(2024, 1, 2)))
    b = s.try_render(probes.U, True, strftime_now=probes.Clock(_dt.datetime(2031, 11, 23)))
    if a is None or b is None or a == b:
        return None
    return "the rendered prompt contains today's date (strftime_now): tokenization changes from day to day"


@check("gemma-turn-typo", "error", "C15",
       "use the official Gemma template: the prompt ends with '<start_of_turn>model\\n' (--fix corrects the typo)",
       fixable=True, needs=("template",))
def gemma_turn_typo(s: Subject):
    if s.template is None or s.family != "gemma" or "<start_of_turn>" not in s.template + "".join(s.added_strings):
        return None
    u1 = s.try_render(probes.U, True)
    ua = s.try_render(probes.UA)
    hits = []
    if "<end_of_turn>model" in s.template or (ua and "<end_of_turn>model" in ua):
        hits.append(Hit("the template writes '<end_of_turn>model' (the technical-report typo) instead of "
                        "'<start_of_turn>model'", data={"typo": True}))
    elif u1 is not None and not u1.endswith("<start_of_turn>model\n"):
        hits.append(Hit(f"the generation prompt ends {u1[-30:]!r}, not '<start_of_turn>model\\n': Gemma's generations "
                        "go off the rails", fixable=False))
    return hits


@check("template-trims-content", "info", "C16",
       "expect whitespace at the edges of messages to be removed, or use a template that keeps it",
       needs=("template", "samples"))
def template_trims_content(s: Subject):
    edged = [m["content"] for row in s.samples for m in row.get("messages", [])
             if m.get("content") and m["content"] != m["content"].strip()]
    if not edged:
        return None
    content = "  " + probes.REPLY + "  \n"
    text = s.try_render([probes.U[0], {"role": "assistant", "content": content}])
    if text is None or content in text:
        return None
    return (f"the template strips whitespace around message content and {len(edged)} of the sampled messages "
            "start or end with whitespace: the trained text differs from your data")
