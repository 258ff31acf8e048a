"""Capacity meter (claim 16, docs/results.md): bits of knowledge a model stores, per parameter
(after Allen-Zhu & Li 2024, "Physics of Language Models: Part 3.3, Knowledge Capacity Scaling
Laws").

On the `facts` corpus every fact (entity, attribute) has a value drawn uniformly from the
attribute's value list V_a, so knowing it is worth log2 |V_a| bits. A probe is recalled when
the model's greedy answer is exactly right; guessing gets 1/|V_a| of them right for free.
From the fraction recalled r over n facts (the same count per attribute):

    knowledge bits = n * max(0, (r - c) / (1 - c)) * mean_a log2 |V_a|,  c = mean_a 1 / |V_a|

(the chance-corrected count of facts known, times the bits per fact; attributes are weighted
equally because each has one fact per entity; `knowledge_bits`, extmem.run.storage). Bits per
parameter divide it by the core parameters (attention, FFN, norms) and by all parameters
(embeddings and tables included). Recall on held-out phrasings measures extraction; recall on
training phrasings, and the storage meter's bits from the loss on the values
(extmem.run.storage, `stored_bits` in each run's results), measure storage.
"""

from __future__ import annotations

from extmem.experiments.stats import mean_std
from extmem.run.config import RunConfig
from extmem.run.storage import attribute_bits, knowledge_bits

__all__ = ["ABOVE_FLOOR_RATIOS", "STORAGE_COMPARED", "above_floor_ratios", "capacity_figures",
           "knowledge_bits"]

# the storage metrics `extmem compare` sets beside the baseline (Welch): the capacity verdict
# (docs/results.md) asks which model stores more bits, per core FLOP and per parameter in all;
# above the meter's floor (extmem.run.storage), what it stores beyond what wrong values get
STORAGE_COMPARED = ("stored_bits", "stored_bits_per_core_flop", "stored_bits_per_param",
                    "stored_bits_above_floor")


# a run's bits above the meter's floor per core parameter, per parameter in all and per
# training FLOP of the core and in all (the floor grows with the corpus whether or not a model
# memorises, so the verdict rests on these; extmem.experiments.saturation)
ABOVE_FLOOR_RATIOS = ("stored_bits_above_floor_per_core_param", "stored_bits_above_floor_per_param",
                      "stored_bits_above_floor_per_core_flop", "stored_bits_above_floor_per_flop")


def above_floor_ratios(result: dict) -> dict[str, float]:
    """ABOVE_FLOOR_RATIOS of one run's results.json (its params, FLOPs per token and tokens
    trained, as the run's own stored_bits_per_* use them); {} without the floor."""
    above = result.get("stored_bits_above_floor")
    if above is None:
        return {}
    params = result["params"]
    out = {"stored_bits_above_floor_per_core_param": above / params["core"],
           "stored_bits_above_floor_per_param": above / params["total"]}
    tokens = result.get("tokens", 0)
    if tokens > 0:
        flops = result["flops_per_token"]
        out["stored_bits_above_floor_per_core_flop"] = above / (flops["core"] * tokens)
        out["stored_bits_above_floor_per_flop"] = above / (flops["total"] * tokens)
    return out


def capacity_figures(cfg: RunConfig, recalled: list[float], params: dict,
                     recalled_train: list[float] | None = None) -> dict | None:
    """Facts, knowledge bits and bits per (core / total) parameter for one variant's seeds, from
    recall on held-out phrasings (and on training phrasings: `bits_train_phrasing`)."""
    if cfg.data.corpus != "facts" or not recalled:
        return None
    facts = cfg.data.facts
    n_facts = facts.n_entities * len(facts.attributes)
    bits = [knowledge_bits(r, n_facts, facts.attributes) for r in recalled]
    out: dict = {"entities": facts.n_entities, "facts": n_facts,
                 "bits_offered": facts.n_entities * sum(attribute_bits(a)
                                                        for a in facts.attributes)}
    for key, divisor in (("bits", 1), ("bits_per_core_param", params["core"]),
                         ("bits_per_param", params["total"])):
        mean, std = mean_std([b / divisor for b in bits])
        out[key] = {"mean": mean, "std": std}
    if recalled_train:
        mean, std = mean_std([knowledge_bits(r, n_facts, facts.attributes)
                              for r in recalled_train])
        out["bits_train_phrasing"] = {"mean": mean, "std": std}
    if cfg.train.exposures:
        out["exposures"] = cfg.train.exposures
    return out
