"""Storage meter (extmem.run.storage): stored bits from a model whose logits are set by hand
(full bits at probability 1, none at chance, a known partial probability, the clamps), its floor
on wrong values, the training-phrasing probes of `facts`, and its figures in `evaluate`."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from extmem import ModelConfig, Transformer
from extmem.data import DataConfig, FactsConfig, build_lm_data, get_tokenizer, load_corpus
from extmem.data.facts import generate_facts
from extmem.data.facts_vocab import VALUES
from extmem.run.evaluate import evaluate
from extmem.run.storage import (
    decoy_probes,
    knowledge_bits,
    measure_storage,
    probe_scores,
    stored_bits,
    value_scores,
)

ATTRIBUTES = ["birth_year", "city"]  # |V| = 100 and 30
BATCH = 3  # probes per batch: several batches, the last one partial


@pytest.fixture(scope="module")
def facts():
    cfg = DataConfig(vocab_size=300, seq_len=16,
                     facts=FactsConfig(n_entities=4, attributes=ATTRIBUTES,
                                       templates_per_attribute=3, heldout_templates=1))
    corpus = load_corpus(cfg)
    lm = build_lm_data(corpus, get_tokenizer(corpus, cfg), cfg)
    return corpus, lm


class HandLogits(nn.Module):
    """A causal LM stand-in with logits set by hand. At position j of a row the next token of
    the row shares the probability equally with `m - 1` other ids (logit 0 for those m, -inf
    for the rest): p(next) = 1/m exactly. m = 1 unless `spread[row ids][j]` says otherwise;
    `uniform`: every id gets logit 0 everywhere (p = 1/V)."""

    def __init__(self, vocab: int, pad_id: int, spread: dict | None = None,
                 uniform: bool = False) -> None:
        super().__init__()
        self.cfg = SimpleNamespace(max_seq_len=128, causal=True)
        self.vocab, self.pad_id, self.spread, self.uniform = vocab, pad_id, spread or {}, uniform

    def forward(self, inputs: torch.Tensor, padding_mask: torch.Tensor | None = None):
        B, L = inputs.shape
        if self.uniform:
            return torch.zeros(B, L, self.vocab)
        logits = torch.full((B, L, self.vocab), -math.inf)
        for b in range(B):
            row = inputs[b].tolist()
            n = len(row)
            while n and row[n - 1] == self.pad_id:
                n -= 1
            plan = self.spread.get(tuple(row[:n]), {})
            for j in range(L - 1):
                target = row[j + 1]
                others = [i for i in range(self.vocab) if i != target][: plan.get(j, 1) - 1]
                logits[b, j, [target, *others]] = 0.0
            logits[b, L - 1] = 0.0
        return logits


def answers(lm, probes) -> list[tuple[tuple[int, ...], list[int]]]:
    """Per probe, in order: its token ids (EOS prompt value) and the positions predicting the
    value's tokens."""
    out = []
    for batch in lm.probe_batches(probes, BATCH):
        for row in range(batch.input_ids.shape[0]):
            ids = batch.input_ids[row]
            n = int((ids != lm.pad_id).sum())
            out.append((tuple(ids[:n].tolist()),
                        batch.answer_mask[row].nonzero().flatten().tolist()))
    return out


ACCOUNTING = {"params": {"core": 1000, "total": 4000},
              "flops_per_token": {"core": 40, "total": 50}}


def measure(lm, probes, model, tokens=0):
    return measure_storage(model, lm, probes, BATCH, torch.device("cpu"), ACCOUNTING, tokens)


def test_full_bits_when_the_values_get_probability_one(facts):
    corpus, lm = facts
    probes = corpus.train_probes
    model = HandLogits(lm.vocab_size, lm.pad_id)
    losses, recalled = probe_scores(model, lm, probes, BATCH, torch.device("cpu"))
    assert losses == [0.0] * len(probes) and all(recalled)
    full = 4 * (math.log2(100) + math.log2(30))
    out = measure(lm, probes, model, tokens=200)
    assert out["stored_bits"] == pytest.approx(full, abs=1e-12)
    assert out["stored_bits_max"] == pytest.approx(full, abs=1e-12)
    by_attribute = out["stored_bits_by_attribute"]  # 4 entities: 4 facts per attribute
    assert by_attribute == pytest.approx({a: 4 * math.log2(len(VALUES[a])) for a in by_attribute})
    assert len(by_attribute) == 2 and sum(by_attribute.values()) == pytest.approx(full)
    assert out["stored_facts"] == 8 and out["recall_train_phrasing"] == 1.0
    assert out["stored_bits_per_core_param"] == pytest.approx(full / 1000)
    assert out["stored_bits_per_param"] == pytest.approx(full / 4000)
    assert out["training_flops"] == 50 * 200
    assert out["stored_bits_per_flop"] == pytest.approx(full / 10_000)
    assert out["stored_bits_per_core_flop"] == pytest.approx(full / 8_000)
    assert out["known_bits_train_phrasing"] == pytest.approx(full)  # every fact recalled


def test_no_bits_at_chance_and_the_clamp_at_zero(facts):
    corpus, lm = facts
    probes = corpus.train_probes
    # chance over V_a: the value's first token gets p = 1 / |V_a|, the rest p = 1
    chance = {ids: {positions[0]: len(VALUES[p.attribute])}
              for (ids, positions), p in zip(answers(lm, probes), probes, strict=True)}
    model = HandLogits(lm.vocab_size, lm.pad_id, chance)
    losses, _ = probe_scores(model, lm, probes, BATCH, torch.device("cpu"))
    expected = [math.log2(len(VALUES[p.attribute])) for p in probes]
    assert losses == pytest.approx(expected, abs=1e-12)
    assert measure(lm, probes, model)["stored_bits"] == pytest.approx(0.0, abs=1e-12)
    # uniform over the vocabulary: worse than chance over V_a (log2 300 > log2 100), clamped
    uniform = HandLogits(lm.vocab_size, lm.pad_id, uniform=True)
    losses, _ = probe_scores(uniform, lm, probes, BATCH, torch.device("cpu"))
    assert all(loss > math.log2(len(VALUES[p.attribute]))
               for loss, p in zip(losses, probes, strict=True))
    out = measure(lm, probes, uniform)
    assert out["stored_bits"] == 0.0 and "stored_bits_per_flop" not in out


def test_a_known_partial_probability(facts):
    corpus, lm = facts
    probes = corpus.train_probes
    # p = 1/4 on the first value token of every fact (2 bits lost), p = 1/8 on that of the
    # first fact (3 bits lost), p = 1 on the value's other tokens
    plans = answers(lm, probes)
    spread = {ids: {positions[0]: 4} for ids, positions in plans}
    first_ids, first_positions = plans[0]
    spread[first_ids] = {first_positions[0]: 8}
    model = HandLogits(lm.vocab_size, lm.pad_id, spread)
    losses, _ = probe_scores(model, lm, probes, BATCH, torch.device("cpu"))
    assert losses == pytest.approx([3.0] + [2.0] * (len(probes) - 1), abs=1e-12)
    full = 4 * (math.log2(100) + math.log2(30))
    assert measure(lm, probes, model)["stored_bits"] == pytest.approx(full - 3 - 2 * 7,
                                                                       abs=1e-9)


def test_decoys_are_the_same_prompts_with_a_wrong_value(facts):
    corpus, _ = facts
    probes = corpus.train_probes
    decoys = decoy_probes(probes)
    assert len(decoys) == len(probes)
    for decoy, probe in zip(decoys, probes, strict=True):
        assert (decoy.prompt, decoy.entity, decoy.attribute, decoy.template) == (
            probe.prompt, probe.entity, probe.attribute, probe.template)
        assert decoy.answer in VALUES[probe.attribute] and decoy.answer != probe.answer
    assert decoy_probes(probes) == decoys                       # the same seed: the same values
    many = decoy_probes(probes * 50, seed=1)                    # drawn, not one fixed value
    assert len({d.answer for d in many if d.attribute == "city"}) > 10


def test_floor_is_the_meter_on_wrong_values(facts):
    corpus, lm = facts
    probes = corpus.train_probes
    full = 4 * (math.log2(100) + math.log2(30))
    # a model that gives p = 1 to whatever value follows the prompt cannot tell right from
    # wrong: the wrong values get every bit too
    out = measure(lm, probes, HandLogits(lm.vocab_size, lm.pad_id))
    assert out["stored_bits_floor"] == pytest.approx(full, abs=1e-12)
    # right values at p = 1, the first token of each wrong value at p = 1/4: 2 bits lost each
    wrong = {ids: {positions[0]: 4} for ids, positions in answers(lm, decoy_probes(probes))}
    out = measure(lm, probes, HandLogits(lm.vocab_size, lm.pad_id, wrong))
    assert out["stored_bits"] == pytest.approx(full, abs=1e-12)
    assert out["stored_bits_floor"] == pytest.approx(full - 2 * len(probes), abs=1e-9)
    assert out["stored_bits_above_floor"] == pytest.approx(2 * len(probes), abs=1e-9)
    # wrong values worse than chance (uniform over the vocabulary): no floor
    out = measure(lm, probes, HandLogits(lm.vocab_size, lm.pad_id, uniform=True))
    assert out["stored_bits_floor"] == 0.0


def test_stored_bits_clamps_at_zero_and_at_the_attribute_bits():
    assert stored_bits(0.0, "city") == math.log2(30)
    assert stored_bits(-1.0, "city") == math.log2(30)  # never above log2 |V_a|
    assert stored_bits(2.0, "city") == pytest.approx(math.log2(30) - 2)
    assert stored_bits(math.log2(30), "city") == 0.0
    assert stored_bits(50.0, "birth_year") == 0.0      # worse than chance: 0, not negative


def test_value_scores_by_hand():
    # one probe of two answer tokens: p = 1/2 then p = 1/4 -> 3 bits; argmax wrong at a tie
    logits = torch.full((1, 3, 4), -math.inf)
    logits[0, 0, [2, 3]] = 0.0          # position 0 predicts token 2: p = 1/2 (tie with 3)
    logits[0, 1, [0, 1, 2, 3]] = 0.0    # position 1 predicts token 1: p = 1/4
    logits[0, 2] = 0.0
    targets = torch.tensor([[2, 1, 0]])
    mask = torch.tensor([[True, True, False]])
    loss, recalled = value_scores(logits, targets, mask)
    assert loss.tolist() == [3.0] and recalled.tolist() == [False]


def test_train_probes_are_training_sentences_one_per_fact():
    cfg = FactsConfig(n_entities=20, attributes=["city", "pet", "birth_year"],
                      templates_per_attribute=4, heldout_templates=1, seed=3)
    data = generate_facts(cfg)
    train_sentences = {s for doc in data.train_docs for s in doc.split("\n")}
    assert len(data.train_probes) == 20 * 3
    assert {(p.entity, p.attribute) for p in data.train_probes} == {
        (e.name, a) for e in data.entities for a in cfg.attributes}
    for probe in data.train_probes:
        assert f"{probe.prompt} {probe.answer}." in train_sentences
    heldout = {(p.entity, p.attribute, p.template) for p in data.probes}
    assert not heldout & {(p.entity, p.attribute, p.template) for p in data.train_probes}


def test_evaluate_reports_storage_beside_extraction(facts):
    corpus, lm = facts
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=lm.vocab_size, d_model=16, n_layers=1,
                                    n_heads=2, max_seq_len=64))
    out = evaluate(model, lm, corpus.probes, 8, train_probes=corpus.train_probes,
                   tokens_trained=640)
    assert out["recall_heldout_phrasing"] == out["facts_recalled"]
    assert 0.0 <= out["stored_bits"] <= out["stored_bits_max"]
    assert out["stored_facts"] == 8
    params = sum(p.numel() for p in model.parameters())
    assert out["stored_bits_per_param"] == pytest.approx(out["stored_bits"] / params)
    assert out["known_bits_heldout_phrasing"] == pytest.approx(
        knowledge_bits(out["facts_recalled"], 8, ATTRIBUTES))
    assert "stored_bits" not in evaluate(model, lm, corpus.probes, 8)  # no training probes
