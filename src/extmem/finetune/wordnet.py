"""The `wordnet-supersense` task: WordNet gloss -> one of the 45 lexicographer files
("supersenses": noun.animal, verb.motion, adj.all, ...), read from the Debian `wordnet-base`
database files (data.noun / data.verb / data.adj / data.adv under /usr/share/wordnet).

Each data line is `offset lex_filenum ss_type w_cnt word lex_id ... | gloss`; the second field
numbers the lexicographer file (WordNet's lexnames(5WN)), the gloss follows " | ". The text
is the whole gloss (definition and examples); lemmas are not shown to the model.
"""

from __future__ import annotations

from pathlib import Path

from extmem.errors import DataError

DATA_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
INSTALL_HINT = "apt-get install -y wordnet-base"

# lexnames(5WN): lexicographer file number -> name
LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event",
    "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object",
    "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process",
    "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather",
    "adj.ppl",
)


def parse_data_line(line: str) -> tuple[str, str] | None:
    """One data.* line -> (gloss, lexicographer file name); None for license lines."""
    if not line.strip() or line.startswith(" "):
        return None
    head, sep, gloss = line.partition(" | ")
    fields = head.split()
    if not sep or len(fields) < 2 or not fields[1].isdigit() or int(fields[1]) >= len(LEXNAMES):
        raise ValueError(f"not a WordNet data line: {line[:60]!r}")
    return gloss.strip(), LEXNAMES[int(fields[1])]


def load_supersenses(directory: str | Path) -> tuple[list[str], list[str]]:
    """(glosses, supersense names) of every synset in the four data files."""
    root = Path(directory)
    missing = [name for name in DATA_FILES if not (root / name).is_file()]
    if missing:
        raise DataError(f"task 'wordnet-supersense' needs the WordNet database files "
                        f"{', '.join(missing)} in {root}; install them with: {INSTALL_HINT} "
                        "(or point --set wordnet_dir=DIR at a copy)")
    texts, labels = [], []
    for name in DATA_FILES:
        path = root / name
        with path.open(encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, start=1):
                try:
                    parsed = parse_data_line(line)
                except ValueError as exc:
                    raise DataError(f"{path}:{lineno}: {exc}") from None
                if parsed is not None and parsed[0]:
                    texts.append(parsed[0])
                    labels.append(parsed[1])
    if not texts:
        raise DataError(f"{root}: the WordNet data files hold no synsets")
    return texts, labels
