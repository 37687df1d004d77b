"""Deterministic synthetic inputs for the prefix-sharing workloads: English-like text of
a chosen length, so runs are repeatable and need no download."""

from __future__ import annotations

import random

_SUBJECTS = [
    "The harbour board",
    "The keeper",
    "The engineer",
    "A storm",
    "The council",
    "The museum",
    "A fishing crew",
    "The lighthouse",
    "The river port",
    "The survey team",
]
_VERBS = [
    "recorded",
    "rebuilt",
    "inspected",
    "described",
    "repaired",
    "funded",
    "moved",
    "measured",
    "replaced",
    "studied",
]
_OBJECTS = [
    "the north channel",
    "the granite ledge",
    "the paraffin lamp",
    "the old logbook",
    "the sandbanks",
    "the keeper's cottage",
    "the iron stairs",
    "the signal flags",
    "the tide tables",
    "the lens",
]
_TAILS = [
    "after the winter gales",
    "in the spring of {year}",
    "with help from the village",
    "before the new pier opened",
    "for the first time in decades",
    "at great expense",
    "despite the fog",
    "during the night watch",
    "as the records show",
    "in {year}",
]


def document(seed: int, tokens: int) -> str:
    """About `tokens` tokens (at ~4 characters a token) of plausible prose."""
    rng = random.Random(seed)
    sentences: list[str] = []
    while sum(len(s) + 1 for s in sentences) < tokens * 4:
        tail = rng.choice(_TAILS).format(year=rng.randint(1820, 1990))
        sentences.append(
            f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {tail}."
        )
    paragraphs = [" ".join(sentences[i : i + 6]) for i in range(0, len(sentences), 6)]
    return "\n\n".join(paragraphs)


QUESTIONS = [
    "Who repaired the lens?",
    "What happened after the winter gales?",
    "Which year is mentioned first?",
    "What did the keeper record?",
    "Who funded the work?",
    "What was moved?",
    "What does the logbook show?",
    "Where are the sandbanks?",
]

PERSONA_A = (
    "You are Ada, a careful economist who argues from evidence. "
    + document(101, 560)
    + "\nAlways answer as Ada, briefly, and cite one fact."
)
PERSONA_B = (
    "You are Bo, an optimistic engineer who argues from experience. "
    + document(202, 560)
    + "\nAlways answer as Bo, briefly, and give one example."
)

TOPICS = ["sports", "science", "politics", "business", "arts"]
_TOPIC_LINES = {
    "sports": [
        "The team won the cup final after extra time.",
        "She ran the marathon in record time.",
    ],
    "science": [
        "The telescope found a new comet near Jupiter.",
        "Researchers measured the cell's growth.",
    ],
    "politics": [
        "The parliament passed the new election law.",
        "The minister resigned after the vote.",
    ],
    "business": [
        "The company's shares rose after strong sales.",
        "The bank raised its interest rates.",
    ],
    "arts": [
        "The gallery opened an exhibition of early prints.",
        "The orchestra premiered a new symphony.",
    ],
}


def few_shot_examples(count: int = 20) -> str:
    rng = random.Random(5)
    lines = []
    for i in range(count):
        topic = TOPICS[i % len(TOPICS)]
        text = rng.choice(_TOPIC_LINES[topic]) + " " + document(300 + i, 30)
        lines.append(f"Text: {text}\nTopic: {topic}")
    return "\n\n".join(lines)


def texts_to_classify(count: int = 16) -> list[str]:
    rng = random.Random(9)
    return [rng.choice(_TOPIC_LINES[TOPICS[i % len(TOPICS)]]) for i in range(count)]
