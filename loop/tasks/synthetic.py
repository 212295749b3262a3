"""Deterministic synthetic long-context multi-hop questions about fictional entities.

Every name is invented from syllables, so a model cannot answer from memory: the answer is only in the
context. One question owns a small world (a person, towns, counties, companies, a spouse); its context
holds the facts on the reasoning chain, distractor passages about other invented entities and, at a
configured rate, near-misses (a person with a similar name whose facts lead elsewhere). Contexts are
filled with passages to a target length.

Hops:   1 — "In which town was P born?"                         P → town
        2 — "In which county was P born?"                       P → town → county
        3 — "In which county is the head office of the company that P works for?"  P → company → town → county
(and a spouse variant for 2 and 3 hops).

The training pool and the eval set come from disjoint random streams, so no eval entity is ever trained on.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from sealong.loop.tasks.records import QuestionRecord, approx_tokens

ONSETS = [
    "b",
    "br",
    "c",
    "d",
    "dr",
    "f",
    "g",
    "gr",
    "h",
    "k",
    "l",
    "m",
    "n",
    "p",
    "qu",
    "r",
    "s",
    "st",
    "t",
    "th",
    "v",
    "w",
    "z",
]
VOWELS = ["a", "e", "i", "o", "u", "ae", "ei", "ou", "y"]
CODAS = ["", "n", "r", "l", "s", "th", "x", "m", "nd", "rk", "sh"]
TOWN_SUFFIXES = ["ford", "mere", "by", "wick", "holt", "stead", "dale", "haven", "moor", "bridge"]
COMPANY_KINDS = ["Works", "Mills", "Instruments", "Shipping", "Foundry", "Press", "Textiles", "Optics"]
TRADES = [
    "clockmaker",
    "cartographer",
    "glassblower",
    "ferry pilot",
    "archivist",
    "beekeeper",
    "surveyor",
    "luthier",
]
FEATURES = [
    "a covered market",
    "a stone lighthouse",
    "a salt marsh",
    "an old observatory",
    "terraced orchards",
    "a canal lock",
    "a copper mine",
    "a lantern festival",
    "a chalk quarry",
    "a river ferry",
]


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(
        rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(syllables)
    ).capitalize()


@dataclass
class World:
    person: str
    spouse: str
    town: str  # person's birthplace
    county: str
    spouse_town: str
    spouse_county: str
    company: str
    hq_town: str
    hq_county: str


class NameMaker:
    """Invented names, never repeated within one generator."""

    def __init__(self, rng: random.Random):
        self.rng, self.used = rng, set()

    def _fresh(self, make) -> str:
        while True:
            name = make()
            if name not in self.used:
                self.used.add(name)
                return name

    def person(self) -> str:
        return self._fresh(lambda: f"{_word(self.rng, 2)} {_word(self.rng, 2)}")

    def town(self) -> str:
        return self._fresh(lambda: _word(self.rng, 1) + self.rng.choice(TOWN_SUFFIXES))

    def county(self) -> str:
        return self._fresh(lambda: f"{_word(self.rng, 2)} County")

    def company(self) -> str:
        return self._fresh(lambda: f"{_word(self.rng, 2)} {self.rng.choice(COMPANY_KINDS)}")

    def near_miss(self, person: str) -> str:
        first, last = person.split(" ")
        return self._fresh(
            lambda: (
                f"{first[:-1] + self.rng.choice('aeiouy')} {last}"
                if self.rng.random() < 0.5
                else f"{_word(self.rng, 2)} {last}"
            )
        )


def _a(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _town_passage(rng: random.Random, town: str, county: str) -> str:
    return (
        f"{town} is a town in {county}. It is known for {rng.choice(FEATURES)}, and its people "
        f"still speak of {rng.choice(FEATURES)} that once stood near the old road."
    )


def _person_passage(
    rng: random.Random, person: str, town: str, company: str | None = None, spouse: str | None = None
) -> str:
    parts = [f"{person} was born in {town}.", f"{person.split(' ')[0]} trained as {_a(rng.choice(TRADES))}."]
    if company:
        parts.append(f"Later, {person} worked for {company} for many years.")
    if spouse:
        parts.append(f"{person} is married to {spouse}.")
    tail = parts[1:]
    rng.shuffle(tail)
    return " ".join([parts[0], *tail])


def _company_passage(rng: random.Random, company: str, town: str) -> str:
    return (
        f"{company} has its head office in {town}. The firm was founded by {_a(rng.choice(TRADES))} "
        f"and is best known for work near {rng.choice(FEATURES)}."
    )


def _question(hops: int, variant: int, w: World) -> tuple[str, list[str]]:
    if hops == 1:
        return f"In which town was {w.person} born?", [w.town]
    if hops == 2:
        if variant == 0:
            return f"In which county was {w.person} born?", [w.county, w.county.removesuffix(" County")]
        return f"In which town was the spouse of {w.person} born?", [w.spouse_town]
    if variant == 0:
        return (
            f"In which county is the head office of the company that {w.person} works for?",
            [w.hq_county, w.hq_county.removesuffix(" County")],
        )
    return f"In which county was the spouse of {w.person} born?", [
        w.spouse_county,
        w.spouse_county.removesuffix(" County"),
    ]


def generate(
    n: int,
    seed: int,
    split: str,
    hops: list[int],
    min_tokens: int,
    max_tokens: int,
    near_miss_rate: float = 0.5,
) -> list[QuestionRecord]:
    """n questions, hop counts cycling through `hops`; same arguments → same questions."""
    stream = {"train": 0, "eval": 1}[split]
    rng = random.Random(seed * 1_000_003 + stream * 7919 + 17)
    names = NameMaker(rng)
    records = []
    for i in range(n):
        h = hops[i % len(hops)]
        variant = rng.randrange(2)
        w = World(
            person=names.person(),
            spouse=names.person(),
            town=names.town(),
            county=names.county(),
            spouse_town=names.town(),
            spouse_county=names.county(),
            company=names.company(),
            hq_town=names.town(),
            hq_county=names.county(),
        )
        question, answers = _question(h, variant, w)
        passages = [
            _person_passage(rng, w.person, w.town, w.company, w.spouse),
            _person_passage(rng, w.spouse, w.spouse_town),
            _town_passage(rng, w.town, w.county),
            _town_passage(rng, w.spouse_town, w.spouse_county),
            _company_passage(rng, w.company, w.hq_town),
            _town_passage(rng, w.hq_town, w.hq_county),
        ]
        if rng.random() < near_miss_rate:
            twin, twin_town, twin_company = names.near_miss(w.person), names.town(), names.company()
            passages += [
                _person_passage(rng, twin, twin_town, twin_company),
                _town_passage(rng, twin_town, names.county()),
                _company_passage(rng, twin_company, names.town()),
            ]
        target = rng.randint(min_tokens, max_tokens)
        while sum(approx_tokens(p) for p in passages) < target:
            other, t, c, k = names.person(), names.town(), names.county(), names.company()
            passages.append(
                rng.choice(
                    [
                        _person_passage(rng, other, t, k if rng.random() < 0.5 else None),
                        _town_passage(rng, t, c),
                        _company_passage(rng, k, t),
                    ]
                )
            )
        rng.shuffle(passages)
        context = "\n\n".join(f"Passage {j + 1}: {p}" for j, p in enumerate(passages))
        records.append(
            QuestionRecord(
                id=f"syn-{split}-{seed}-{i:05d}",
                context=context,
                question=question,
                answers=answers,
                source="synthetic",
                task=f"synthetic-{h}hop",
                n_tokens=approx_tokens(context),
            )
        )
    return records
