"""200 support tickets to classify, generated deterministically (no download).

    python bench/batch/classify_rows.py [--count 200] > rows.jsonl

Each line is `{"id": "t0001", "ticket": "...", "label": "..."}`: the program reads
`ticket`, and `label` (the category the ticket was written from) lets a reader check
the answers. Tickets are built from per-category phrases with a seeded RNG, so the same
count always gives the same file.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Iterator

CATEGORIES = ("billing", "technical", "account", "shipping", "feedback")

_PROBLEMS = {
    "billing": [
        "I was charged twice for my subscription this month",
        "the invoice shows a price higher than the one on your website",
        "my refund still has not arrived on my card",
        "you billed me after I cancelled my plan",
        "the coupon code was not applied to my order total",
    ],
    "technical": [
        "the app crashes every time I open the settings page",
        "the export button gives an error and nothing downloads",
        "the dashboard has been loading forever since the update",
        "sync stopped working on my laptop",
        "I get a blank screen after logging in on my phone",
    ],
    "account": [
        "I cannot reset my password, the email never comes",
        "please change the email address on my profile",
        "my account was locked after too many login attempts",
        "I want to delete my account and all my data",
        "how do I add a second user to our team account",
    ],
    "shipping": [
        "my parcel has been stuck in transit for ten days",
        "the tracking number you sent does not work",
        "the box arrived damaged and one item is missing",
        "I need to change the delivery address of my order",
        "the courier left my package at the wrong house",
    ],
    "feedback": [
        "I love the new dark mode, great work",
        "it would be nice to have a weekly summary email",
        "your support agent was very patient and helpful",
        "the new menu layout is confusing to me",
        "please add an option to sort by date",
    ],
}
_OPENERS = ["Hello,", "Hi team,", "Good morning.", "Hey,", "Dear support,", ""]
_DETAILS = [
    "Order {n}.",
    "This started on {day}.",
    "I am on the {plan} plan.",
    "My customer number is {n}.",
    "I already tried again on {day}.",
    "",
]
_CLOSERS = ["Thanks.", "Please help.", "Regards, {name}.", "Thank you in advance.", ""]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "the weekend"]
_PLANS = ["basic", "pro", "family", "business"]
_NAMES = ["Ana", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo"]


def ticket(rng: random.Random, category: str) -> str:
    """One ticket of `category`: an opener, the problem, a detail, a closer."""
    fill = {
        "n": rng.randint(10000, 99999),
        "day": rng.choice(_DAYS),
        "plan": rng.choice(_PLANS),
        "name": rng.choice(_NAMES),
    }
    parts = [
        rng.choice(_OPENERS),
        rng.choice(_PROBLEMS[category]) + ".",
        rng.choice(_DETAILS).format(**fill),
        rng.choice(_CLOSERS).format(**fill),
    ]
    text = " ".join(part for part in parts if part)
    return text[0].upper() + text[1:]


def rows(count: int = 200, seed: int = 10) -> Iterator[dict[str, str]]:
    rng = random.Random(seed)
    for i in range(count):
        category = CATEGORIES[rng.randrange(len(CATEGORIES))]
        yield {"id": f"t{i + 1:04d}", "ticket": ticket(rng, category), "label": category}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--seed", type=int, default=10)
    args = parser.parse_args()
    for row in rows(args.count, args.seed):
        sys.stdout.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
