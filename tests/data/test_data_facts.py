"""Synthetic facts corpus: determinism, held-out phrasings and probes."""

from __future__ import annotations

import re

from extmem.data import DataConfig, FactsConfig, load_corpus
from extmem.data.facts import generate_facts
from extmem.data.facts_vocab import ATTRIBUTE_NAMES, TEMPLATES, VALUES


def test_vocabulary_shape() -> None:
    assert len(ATTRIBUTE_NAMES) >= 6 and set(VALUES) == set(TEMPLATES)
    for attribute, templates in TEMPLATES.items():
        assert len(templates) >= 5, attribute
        assert len(set(templates)) == len(templates)
        for template in templates:
            assert template.endswith(" {value}."), template
            assert template.index("{name}") < template.index("{value}"), template
        assert len(set(VALUES[attribute])) == len(VALUES[attribute]) >= 20
    assert VALUES["birth_year"] == tuple(str(y) for y in range(1900, 2000))


def test_same_seed_is_byte_identical_and_other_seed_differs() -> None:
    a = generate_facts(FactsConfig(n_entities=30, seed=7))
    b = generate_facts(FactsConfig(n_entities=30, seed=7))
    c = generate_facts(FactsConfig(n_entities=30, seed=8))
    assert a.train_docs == b.train_docs and a.val_docs == b.val_docs and a.probes == b.probes
    assert "\0".join(a.train_docs).encode() == "\0".join(b.train_docs).encode()
    assert a.train_docs != c.train_docs and a.probes != c.probes


def test_sizes_names_and_documents() -> None:
    cfg = FactsConfig(n_entities=40, attributes=["city", "pet", "birth_year"],
                      templates_per_attribute=5, heldout_templates=2, seed=1)
    data = generate_facts(cfg)
    names = [e.name for e in data.entities]
    assert len(set(names)) == 40
    assert all(re.fullmatch(r"[A-Z][a-z]+ [A-Z][a-z]+", n) for n in names)
    assert len(data.train_docs) == len(data.val_docs) == 40
    assert len(data.probes) == 40 * 3 * 2
    for entity, train, val in zip(data.entities, data.train_docs, data.val_docs, strict=False):
        assert len(train.split("\n")) == 3 * 3 and len(val.split("\n")) == 3 * 2
        assert all(entity.name in s for s in train.split("\n") + val.split("\n"))


def test_heldout_phrasings_never_appear_in_training() -> None:
    data = generate_facts(FactsConfig(n_entities=50, seed=2))
    train_sentences = {s for doc in data.train_docs for s in doc.split("\n")}
    val_sentences = {s for doc in data.val_docs for s in doc.split("\n")}
    assert not train_sentences & val_sentences
    for probe in data.probes:
        sentence = f"{probe.prompt} {probe.answer}."
        assert sentence in val_sentences
        assert sentence not in train_sentences
        assert probe.template.format(name=probe.entity, value=probe.answer) == sentence
        # the same fact is still trained, in other phrasings
        others = [t for t in TEMPLATES[probe.attribute] if t != probe.template]
        assert any(t.format(name=probe.entity, value=probe.answer) in train_sentences
                   for t in others)


def test_probes_answer_with_the_entity_value() -> None:
    data = generate_facts(FactsConfig(n_entities=25, seed=4))
    values = {e.name: e.values for e in data.entities}
    for probe in data.probes:
        assert probe.answer == values[probe.entity][probe.attribute]
        assert probe.answer in VALUES[probe.attribute]
        assert probe.entity in probe.prompt
        assert not probe.prompt.endswith(" ") and probe.answer == probe.answer.strip()


def test_load_corpus_facts() -> None:
    corpus = load_corpus(DataConfig(facts=FactsConfig(n_entities=10)))
    assert corpus.name == "facts"
    assert len(corpus.train_docs) == len(corpus.val_docs) == 10
    assert len(corpus.probes) == 10 * len(ATTRIBUTE_NAMES)
