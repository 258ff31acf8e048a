"""Deterministic synthetic knowledge corpus: made-up people and their attributes.

Each entity gets a unique pronounceable name and one value per attribute. Every fact
(entity, attribute) is written with `templates_per_attribute` sentence templates, of which
`heldout_templates` are held out of training. Training documents (one per entity) hold the
remaining sentences; validation documents hold the held-out sentences, so validation loss
measures recall of a known fact in an unseen phrasing. Every held-out sentence is also a
`FactProbe`: the sentence up to the value (prompt) and the value (answer). Each fact also gets
one training-phrasing probe (`train_probes`, its first training template): the storage meter
(extmem.run.storage) reads the model's loss on the value after a prompt it was trained on.

Sentences inside a document are separated by newlines, so every sentence (and every probe,
which starts after EOS) begins with the entity name at the start of a line.
The same `FactsConfig` always gives byte-identical output.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from extmem.data.config import FactsConfig
from extmem.data.facts_vocab import CODAS, ONSETS, TEMPLATES, VALUES, VOWELS


@dataclass(frozen=True)
class FactProbe:
    """One held-out phrasing of a fact; the joint text is `prompt + " " + answer`."""

    prompt: str  # held-out sentence up to (excluding) the value, no trailing space
    answer: str  # the value, no leading space, no final period
    entity: str = ""  # entity name
    attribute: str = ""  # attribute name, e.g. "birth_year"
    template: str = ""  # the template the prompt was made from


@dataclass(frozen=True)
class Entity:
    name: str
    values: dict[str, str]  # attribute -> value


@dataclass
class FactsData:
    entities: list[Entity]
    train_docs: list[str]
    val_docs: list[str]
    probes: list[FactProbe]
    # one probe per fact in a training phrasing (the first of its training templates)
    train_probes: list[FactProbe] = field(default_factory=list)


def _syllable(rng: random.Random) -> str:
    return rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS)


def _word(rng: random.Random, min_syllables: int, max_syllables: int) -> str:
    n = rng.randint(min_syllables, max_syllables)
    return "".join(_syllable(rng) for _ in range(n)).capitalize()


def make_names(n: int, rng: random.Random) -> list[str]:
    """`n` unique "First Last" names built from random syllables."""
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n:
        name = f"{_word(rng, 2, 2)} {_word(rng, 2, 3)}"
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def split_template(template: str, name: str, value: str) -> tuple[str, str]:
    """Fill `template` and return (prompt, answer) where sentence = prompt + " " + answer + "."."""
    prefix = template[: template.index("{value}")]
    if not prefix.endswith(" "):
        raise ValueError(f"template {template!r} must have a space before {{value}}")
    return prefix[:-1].format(name=name), value


def generate_facts(cfg: FactsConfig) -> FactsData:
    """Build entities, training/validation documents and probes from `cfg` (deterministic)."""
    rng = random.Random(cfg.seed)
    names = make_names(cfg.n_entities, rng)
    entities = [Entity(name, {a: rng.choice(VALUES[a]) for a in cfg.attributes})
                for name in names]

    train_docs: list[str] = []
    val_docs: list[str] = []
    probes: list[FactProbe] = []
    train_probes: list[FactProbe] = []
    for entity in entities:
        train_sentences: list[str] = []
        val_sentences: list[str] = []
        for attribute in cfg.attributes:
            value = entity.values[attribute]
            chosen = rng.sample(TEMPLATES[attribute], cfg.templates_per_attribute)
            heldout, used = chosen[: cfg.heldout_templates], chosen[cfg.heldout_templates:]
            for template in used:
                train_sentences.append(template.format(name=entity.name, value=value))
            prompt, answer = split_template(used[0], entity.name, value)
            train_probes.append(FactProbe(prompt, answer, entity.name, attribute, used[0]))
            for template in heldout:
                prompt, answer = split_template(template, entity.name, value)
                val_sentences.append(f"{prompt} {answer}.")
                probes.append(FactProbe(prompt, answer, entity.name, attribute, template))
        rng.shuffle(train_sentences)
        rng.shuffle(val_sentences)
        train_docs.append("\n".join(train_sentences))
        val_docs.append("\n".join(val_sentences))
    return FactsData(entities, train_docs, val_docs, probes, train_probes)
