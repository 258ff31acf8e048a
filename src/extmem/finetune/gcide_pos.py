"""The `gcide-pos` task: a GCIDE definition -> the part of speech of the word it defines
(noun, verb, adjective, adverb).

The second downstream task of the pretrained-model experiment (docs/results.md, "Pretrained
MiniLM"), beside WordNet supersenses: a different source (GCIDE, the dictionary extmem
continues pretraining on) and a syntactic rather than a semantic label. Only entries of the
GCIDE *validation* split are used (`data.corpus = "gcide"` at the default val_fraction, split by
content hash, extmem.data.corpora), so a model continued on GCIDE's training split has never
seen these definitions. The headword and its tag are removed from the text: the model sees
only the definitions. Tags that name two parts of speech ("a. & n.") and the rare ones
(interjections, prepositions, participles) are left out.
"""

from __future__ import annotations

import re

from extmem.data.config import DataConfig
from extmem.data.corpora import load_corpus

# GCIDE's part-of-speech abbreviations -> the four classes
TAGS = {
    "n.": "noun", "n. pl.": "noun", "prop. n.": "noun", "n. sing.": "noun", "n. fem.": "noun",
    "a.": "adjective", "adj.": "adjective", "prop. a.": "adjective", "prop. adj.": "adjective",
    "adj. prenom.": "adjective",
    "v. t.": "verb", "v. i.": "verb", "v. t. & i.": "verb", "v. i. & t.": "verb", "v.": "verb",
    "adv.": "adverb",
}
# one line of a GCIDE document (extmem.data.gcide.entry_text): "word (tag). definitions"
LINE = re.compile(r"^(?P<word>.+?) \((?P<tag>[^()]*)\)\. (?P<text>.+)$")


def parse_line(line: str) -> tuple[str, str] | None:
    """"word (tag). definitions" -> (definitions, class), or None for other tags / lines."""
    match = LINE.match(line)
    if match is None or match.group("tag") not in TAGS:
        return None
    return match.group("text"), TAGS[match.group("tag")]


def load_gcide_pos(val_fraction: float = DataConfig.val_fraction) -> tuple[list[str], list[str]]:
    """(texts, labels) of every usable line of GCIDE's validation documents."""
    corpus = load_corpus(DataConfig(corpus="gcide", val_fraction=val_fraction))
    texts, labels = [], []
    for doc in corpus.val_docs:
        for line in doc.split("\n"):
            parsed = parse_line(line)
            if parsed is not None:
                texts.append(parsed[0])
                labels.append(parsed[1])
    return texts, labels
