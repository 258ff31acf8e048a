"""Storage meter: bits of the `facts` corpus a model stores, read from its loss on the values of
the training data (Allen-Zhu & Li 2024, "Physics of Language Models: Part 3.3, Knowledge
Capacity Scaling Laws", section 3: the bit-complexity lower bound, which counts what a model
stores from its loss on the attribute values of its training data, not from what it can
answer in a new phrasing).

Every fact (entity, attribute a) of `facts` has a value drawn uniformly from the attribute's
value list V_a (extmem.data.facts_vocab.VALUES), so it carries log2 |V_a| bits. With
loss_bits = -log2 p(value | prompt), the model's teacher-forced loss on the value's tokens
after the prompt of one training phrasing of the fact (summed over the value's tokens, in
bits; `FactsData.train_probes`, EOS + prompt as for the held-out probes):

    stored bits of a fact = clamp(log2 |V_a| - loss_bits, 0, log2 |V_a|)
    stored bits           = sum over facts of the stored bits of each fact

A value given probability 1 is stored in full (log2 |V_a| bits); a model at chance over V_a
(loss_bits = log2 |V_a|) or worse stores 0. Per parameter: stored bits / core parameters
(attention, FFN, norms) and / all parameters; per training FLOP: stored bits / (forward FLOPs
per token (accounting `flops_per_token.total`) x tokens trained).

The meter's floor: the clamp at 0 keeps a value's chance fluctuations above chance and drops
those below, so a model that stores nothing about the facts, but whose predictions over V_a vary
from prompt to prompt, is credited some bits. The same meter on a wrong value of each fact
(`decoy_probes`: the training prompt with another value of V_a, drawn with a fixed seed)
measures that floor (`stored_bits_floor`): a model that cannot tell a fact's value from a wrong
one gets about as many bits for the wrong values as for the right ones; a model that stores the
facts gives the wrong values less than chance, and a floor near 0. `stored_bits_above_floor`
(stored bits - floor) is what a model stores beyond what wrong values get.

Exact greedy recall comes from the same forward pass: on training phrasings it is storage, on
held-out phrasings (`facts_recalled`) extraction. Each is turned into chance-corrected bits by
`knowledge_bits` (the meter of docs/results.md claim 16, extmem.experiments.capacity).
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from extmem.data import FactProbe, LMData
from extmem.data.facts_vocab import VALUES

DECOY_SEED = 7919  # fixed: every run's floor is measured on the same wrong values


def attribute_bits(attribute: str) -> float:
    """log2 |V_a|: the bits of one fact of `attribute` (its value is uniform over V_a)."""
    return math.log2(len(VALUES[attribute]))


def stored_bits(loss_bits: float, attribute: str) -> float:
    """Bits of one fact stored: clamp(log2 |V_a| - loss_bits, 0, log2 |V_a|)."""
    full = attribute_bits(attribute)
    return min(max(full - loss_bits, 0.0), full)


def knowledge_bits(recalled: float, n_facts: int, attributes: Sequence[str]) -> float:
    """Chance-corrected bits of facts known, from the fraction of facts recalled exactly:

        n_facts * max(0, (r - c) / (1 - c)) * mean_a log2 |V_a|,  c = mean_a 1 / |V_a|

    (guessing recalls 1/|V_a| of an attribute's facts for free; attributes weigh equally
    because each has one fact per entity)."""
    bits = sum(attribute_bits(a) for a in attributes) / len(attributes)
    chance = sum(1 / len(VALUES[a]) for a in attributes) / len(attributes)
    known = max(0.0, (recalled - chance) / (1 - chance))
    return n_facts * known * bits


def value_scores(logits: torch.Tensor, targets: torch.Tensor,
                 answer_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per probe: the value's loss in bits (teacher-forced, summed over its tokens) and exact
    greedy recall. logits (B, L, V); targets, answer_mask (B, L) -> (B,) float64, (B,) bool."""
    logp = F.log_softmax(logits.double(), dim=-1)  # (B, L, V); float64: exact small cases
    target_logp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, L)
    loss_bits = -(target_logp * answer_mask).sum(dim=1) / math.log(2)  # (B,)
    recalled = (logits.argmax(dim=-1).eq(targets) | ~answer_mask).all(dim=1)  # (B,)
    return loss_bits, recalled


@torch.no_grad()
def probe_scores(model: nn.Module, data: LMData, probes: Sequence[FactProbe], batch_size: int,
                 device: torch.device) -> tuple[list[float], list[bool]]:
    """`value_scores` of every probe, in order, one forward pass per batch of probes."""
    losses: list[float] = []
    recalled: list[bool] = []
    for batch in data.probe_batches(probes, batch_size):
        keep = slice(-model.cfg.max_seq_len, None)  # a long probe keeps its end (the value)
        inputs = batch.input_ids[:, keep].to(device)  # (B, L)
        logits = model(inputs, padding_mask=inputs.eq(data.pad_id))  # (B, L, V)
        loss, hit = value_scores(logits, batch.targets[:, keep].to(device),
                                 batch.answer_mask[:, keep].to(device))
        losses += loss.tolist()
        recalled += hit.tolist()
    return losses, recalled


def decoy_probes(probes: Sequence[FactProbe], seed: int = DECOY_SEED) -> list[FactProbe]:
    """Per probe, in order, the same prompt with a wrong value: one of its attribute's other
    values (V_a without the probe's answer), drawn uniformly with `seed`."""
    rng = random.Random(seed)
    out = []
    for probe in probes:
        wrong = [v for v in VALUES[probe.attribute] if v != probe.answer]
        out.append(dataclasses.replace(probe, answer=rng.choice(wrong)))
    return out


def _attributes(probes: Sequence[FactProbe]) -> list[str]:
    return list(dict.fromkeys(p.attribute for p in probes))


def measure_storage(model: nn.Module, data: LMData, train_probes: Sequence[FactProbe],
                    batch_size: int, device: torch.device, accounting: dict,
                    tokens_trained: int = 0) -> dict:
    """Stored bits (total, by attribute, per core / total parameter, per training FLOP when
    `tokens_trained` > 0), the meter's floor (the bits of wrong values, `decoy_probes`) and
    recall on training phrasings; one probe per fact.
    `accounting`: {"params": parameter_counts, "flops_per_token": flops_per_token} of the run."""
    losses, recalled = probe_scores(model, data, train_probes, batch_size, device)
    by_attribute = dict.fromkeys(_attributes(train_probes), 0.0)  # where the bits are
    for loss, probe in zip(losses, train_probes, strict=True):
        by_attribute[probe.attribute] += stored_bits(loss, probe.attribute)
    bits = sum(by_attribute.values())
    decoy_losses, _ = probe_scores(model, data, decoy_probes(train_probes), batch_size, device)
    floor = sum(stored_bits(loss, probe.attribute)  # bits credited to wrong values
                for loss, probe in zip(decoy_losses, train_probes, strict=True))
    recall = sum(recalled) / len(recalled)
    params = accounting["params"]
    out = {"stored_bits": bits, "stored_bits_by_attribute": by_attribute,
           "stored_facts": len(train_probes),
           "stored_bits_max": sum(attribute_bits(p.attribute) for p in train_probes),
           "stored_bits_floor": floor,
           "stored_bits_above_floor": bits - floor,
           "stored_bits_per_core_param": bits / params["core"],
           "stored_bits_per_param": bits / params["total"],
           "recall_train_phrasing": recall,
           "known_bits_train_phrasing": knowledge_bits(recall, len(train_probes),
                                                       _attributes(train_probes))}
    if tokens_trained > 0:
        flops = accounting["flops_per_token"]["total"] * tokens_trained
        out["training_flops"] = flops
        out["stored_bits_per_flop"] = bits / flops
        # per FLOP of the core alone (layers without memories, embeddings, head): the
        # compute that memory is meant to save
        out["stored_bits_per_core_flop"] = bits / (accounting["flops_per_token"]["core"]
                                                   * tokens_trained)
    return out


def extraction_figures(recalled_heldout: float, train_probes: Sequence[FactProbe]) -> dict:
    """Recall on held-out phrasings (`facts_recalled`, knowledge extraction) beside the storage
    figures, with its chance-corrected bits over the same facts."""
    return {"recall_heldout_phrasing": recalled_heldout,
            "known_bits_heldout_phrasing": knowledge_bits(recalled_heldout, len(train_probes),
                                                          _attributes(train_probes))}
