"""Seeded chat datasets of realistic, mixed lengths for `ftcli bench --e2e`.

Each row is a two-turn conversation (user, assistant, user, assistant). Its length in tokens follows a
log-normal law with the mix's median and 99th percentile, chat template included; the two replies share
that length at random and the prompts are short. Text is drawn from common English words, calibrated on the benchmark's own
tokenizer so the token counts hit the targets.
  long     median ~600 tokens, p99 ~2,000: chat and reasoning data
  short    median ~150 tokens, p99 ~600: instruction data
  uniform  every conversation longer than max_seq_length, so each row is cut to exactly that: the step
           bench's uniform rows, through the real training path
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

MIXES = {"long": (600, 2000), "short": (150, 600), "uniform": (6000, 6001)}
WORDS = ("the of and to in is you that it he was for on are as with his they at be this have from or one had by "
         "word but not what all were we when your can said there use an each which she do how their if will up "
         "other about out many then them these so some her would make like him into time has look two more "
         "write go see number no way could people my than first water been call who oil its now find long down "
         "day did get come made may part answer question model data train check value result because").split()


def lengths(mix: str, rows: int, seed: int) -> list[int]:
    """Conversation lengths in tokens: log-normal with the mix's median and 99th percentile."""
    median, p99 = MIXES[mix]
    sigma = math.log(p99 / median) / 2.326  # the 99th percentile of a standard normal
    rng = random.Random(seed)
    return [max(24, round(rng.lognormvariate(math.log(median), sigma))) for _ in range(rows)]


def tokens_per_word(tokenizer) -> float:
    rng = random.Random(0)
    sample = " ".join(rng.choice(WORDS) for _ in range(2000))
    return len(tokenizer(sample, add_special_tokens=False)["input_ids"]) / 2000


def template_overhead(tokenizer) -> int:
    """Tokens the chat template adds to a two-turn conversation (headers, end-of-turn tokens, BOS)."""
    turns = [{"role": r, "content": "day"} for r in ("user", "assistant") * 2]
    rendered = tokenizer(tokenizer.apply_chat_template(turns, tokenize=False), add_special_tokens=False)["input_ids"]
    return max(0, len(rendered) - 4 * len(tokenizer(" day", add_special_tokens=False)["input_ids"]))


def conversation(total: int, per_word: float, rng: random.Random) -> list[dict]:
    """Two turns whose replies share `total` tokens (minus the prompts) at random."""
    def text(tokens: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(max(1, round(tokens / per_word))))

    prompts = [rng.randint(12, 40) for _ in range(2)]
    replies = max(8, total - sum(prompts))
    first = round(replies * rng.uniform(0.3, 0.7))
    return [{"role": "user", "content": text(prompts[0])}, {"role": "assistant", "content": text(first)},
            {"role": "user", "content": text(prompts[1])}, {"role": "assistant", "content": text(replies - first)}]


def write(path: Path, mix: str, rows: int, tokenizer, seed: int = 0) -> Path:
    """The mix as a messages JSONL file (written once per mix, rows and seed)."""
    if path.exists():
        return path
    per_word, overhead = tokens_per_word(tokenizer), template_overhead(tokenizer)
    rng = random.Random(seed + 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as out:
        for total in lengths(mix, rows, seed):
            out.write(json.dumps({"messages": conversation(total - overhead, per_word, rng)}) + "\n")
    tmp.replace(path)
    return path
