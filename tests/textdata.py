"""Small text corpora for the data and tokenizer tests, written by the tests themselves.

Importing this module turns the Hugging Face Hub off (HF_HUB_OFFLINE, HF_DATASETS_OFFLINE),
so no test waits on the network.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

WORDS = [
    "once",
    "upon",
    "a",
    "time",
    "there",
    "was",
    "a",
    "little",
    "girl",
    "named",
    "lily",
    "she",
    "loved",
    "to",
    "play",
    "in",
    "the",
    "park",
    "with",
    "her",
    "dog",
    "one",
    "day",
    "the",
    "sun",
    "was",
    "bright",
    "and",
    "the",
    "birds",
    "sang",
    "happy",
    "songs",
    "tom",
    "found",
    "a",
    "red",
    "ball",
    "under",
    "the",
    "big",
    "tree",
    "they",
    "ran",
    "and",
    "jumped",
    "and",
    "laughed",
    "until",
    "the",
    "moon",
    "came",
    "up",
    "mom",
    "said",
    "it",
    "is",
    "time",
    "for",
    "bed",
]


def story(rng: random.Random) -> str:
    sentences = []
    for _ in range(rng.randint(1, 4)):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 14))]
        sentences.append(" ".join(words).capitalize() + rng.choice([".", "!", "?"]))
    return " ".join(sentences)


def write_stories(path: Path, count: int, seed: int = 0, extra: list[str] | None = None) -> list[str]:
    """One story per line; returns the lines."""
    rng = random.Random(seed)
    lines = [story(rng) for _ in range(count)] + list(extra or [])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return lines


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def instruction_records(count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "instruction": f"Tell a story about {rng.choice(WORDS)}.",
            "input": "" if i % 2 else story(rng),
            "output": story(rng),
        }
        for i in range(count)
    ]


def preference_records(count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [
        {"prompt": f"What did {rng.choice(WORDS)} do?", "chosen": story(rng), "rejected": story(rng)}
        for _ in range(count)
    ]


def yes_no_pairs(count: int, seed: int) -> list[dict]:
    """Preference pairs with a rule a small model picks up: the chosen reply starts "yes", the rejected "no"."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        subject = " ".join(rng.choice(WORDS) for _ in range(3))
        pairs.append(
            {"prompt": f"Is it {subject}?", "chosen": f"yes it is {subject}.", "rejected": f"no it is {subject}."}
        )
    return pairs
