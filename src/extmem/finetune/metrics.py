"""Classification metrics: accuracy and macro-F1 (mean over classes of per-class F1).

Macro-F1 averages over the classes that occur in the gold labels or the predictions (as
scikit-learn does by default); a class never predicted and never present does not count.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence


def accuracy(predicted: Sequence[int], gold: Sequence[int]) -> float:
    if not gold:
        return float("nan")
    return sum(p == g for p, g in zip(predicted, gold, strict=True)) / len(gold)


def macro_f1(predicted: Sequence[int], gold: Sequence[int]) -> float:
    if not gold:
        return float("nan")
    tp: Counter[int] = Counter()
    fp: Counter[int] = Counter()
    fn: Counter[int] = Counter()
    for p, g in zip(predicted, gold, strict=True):
        if p == g:
            tp[g] += 1
        else:
            fp[p] += 1
            fn[g] += 1
    classes = set(predicted) | set(gold)
    scores = [2 * tp[c] / (2 * tp[c] + fp[c] + fn[c]) for c in classes]
    return sum(scores) / len(scores)


def majority_baseline(train_labels: Sequence[int], gold: Sequence[int]) -> dict[str, float]:
    """Accuracy and macro-F1 of always predicting the most frequent training class."""
    majority = Counter(train_labels).most_common(1)[0][0]
    predicted = [majority] * len(gold)
    return {"majority_class": majority, "majority_accuracy": accuracy(predicted, gold),
            "majority_macro_f1": macro_f1(predicted, gold)}
