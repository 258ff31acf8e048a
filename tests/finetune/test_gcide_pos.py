"""`gcide-pos`: GCIDE definitions of the validation split -> part of speech."""

import pytest

from extmem.data import DataConfig, load_corpus
from extmem.finetune.gcide_pos import load_gcide_pos, parse_line

pytest.importorskip("dictionary")


@pytest.mark.parametrize("line,expected", [
    ("diligently (adv.). In a diligent manner.", ("In a diligent manner.", "adverb")),
    ("bruting (n.). Browsing.", ("Browsing.", "noun")),
    ("abase (v. t.). To lower or depress.", ("To lower or depress.", "verb")),
    ("blue (a.). Having the color of the sky.", ("Having the color of the sky.", "adjective")),
    ("alas (interj.). An exclamation.", None),       # rare tag: left out
    ("amber (a. & n.). Of amber; amber.", None),     # two parts of speech: left out
    ("no tag here.", None),
])
def test_lines_parse_to_definition_and_class(line, expected):
    assert parse_line(line) == expected


def test_examples_come_from_the_validation_split_only():
    texts, labels = load_gcide_pos()
    assert len(texts) == len(labels) > 4000
    assert set(labels) == {"noun", "verb", "adjective", "adverb"}
    corpus = load_corpus(DataConfig(corpus="gcide"))
    train_text = "\n".join(corpus.train_docs[:20000])
    val_text = "\n".join(corpus.val_docs)
    sample = texts[:200]
    assert all(t in val_text for t in sample)
    # a definition that is also a training document's line would leak; these are rare
    # duplicates of short glosses ("Browsing."), so most definitions are absent from train
    assert sum(t in train_text for t in sample if len(t) > 40) <= 5
