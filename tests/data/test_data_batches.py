"""Token streams, stateless training batches, validation windows and fact probes."""

from __future__ import annotations

import pytest
import torch

from extmem.data import Corpus, DataConfig, build_lm_data
from extmem.data.facts import FactProbe
from extmem.errors import DataError


@pytest.fixture
def lm(small_corpus, small_tokenizer, small_cfg):
    return build_lm_data(small_corpus, small_tokenizer, small_cfg)


def test_streams(lm, small_corpus, small_tokenizer) -> None:
    assert lm.train_ids.dtype == torch.int64 and lm.train_ids.dim() == 1
    assert (lm.eos_id, lm.pad_id, lm.mask_id) == (0, 1, 2)
    assert lm.vocab_size == small_tokenizer.get_vocab_size()
    assert int((lm.train_ids == lm.eos_id).sum()) == len(small_corpus.train_docs)
    assert int(lm.val_ids[-1]) == lm.eos_id
    first_doc = lm.train_ids[: int((lm.train_ids == lm.eos_id).nonzero()[0])]
    assert small_tokenizer.decode(first_doc.tolist()) == small_corpus.train_docs[0]
    val_bytes = sum(len(d.encode()) for d in small_corpus.val_docs)
    assert lm.val_bytes_per_token == pytest.approx(val_bytes / lm.val_ids.numel())


def test_train_batch_is_stateless_and_shifted(lm) -> None:
    x, y = lm.train_batch(step=5, batch_size=4, seed=1)
    assert x.shape == y.shape == (4, lm.seq_len) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    lm.train_batch(step=6, batch_size=4, seed=1)  # drawing other batches changes nothing
    x2, y2 = lm.train_batch(step=5, batch_size=4, seed=1)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x, lm.train_batch(step=6, batch_size=4, seed=1)[0])
    assert not torch.equal(x, lm.train_batch(step=5, batch_size=4, seed=2)[0])
    windows = lm.train_ids.unfold(0, lm.seq_len + 1, 1)  # (N - T, T + 1)
    for row_x, row_y in zip(x, y, strict=False):  # every window is a slice of the stream
        row = torch.cat([row_x, row_y[-1:]])
        assert (windows == row).all(dim=1).any()


def test_short_training_stream_is_a_data_error(small_tokenizer) -> None:
    corpus = Corpus("tiny", ["a b", "c"], ["d"])
    with pytest.raises(DataError, match=r"^data\.seq_len: 128 needs a training stream"):
        build_lm_data(corpus, small_tokenizer, DataConfig(seq_len=128))


def test_val_batches_cover_the_stream(lm) -> None:
    batches = list(lm.val_batches(batch_size=3))
    assert all(x.shape == y.shape for x, y in batches)
    assert all(x.shape[1] == lm.seq_len for x, _ in batches[:-1])
    assert batches[-1][0].shape[1] <= lm.seq_len
    targets = torch.cat([y.reshape(-1) for _, y in batches])
    inputs = torch.cat([x.reshape(-1) for x, _ in batches])
    assert torch.equal(targets, lm.val_ids[1:])
    assert torch.equal(inputs, lm.val_ids[:-1])
    limited = list(lm.val_batches(batch_size=2, max_tokens=40))
    assert torch.equal(torch.cat([y.reshape(-1) for _, y in limited]), lm.val_ids[1:41])


def test_probe_boundary(lm, small_corpus, small_tokenizer) -> None:
    probes = [*small_corpus.probes[:10], FactProbe("Über Zoë's favourite word is", "naïve café")]
    seen = 0
    for batch in lm.probe_batches(probes, batch_size=4):
        B, L = batch.input_ids.shape
        assert batch.targets.shape == batch.answer_mask.shape == (B, L)
        assert torch.equal(batch.targets[:, :-1][batch.answer_mask[:, :-1]],
                           batch.input_ids[:, 1:][batch.answer_mask[:, :-1]])
        for row, probe in enumerate(batch.probes):
            ids = batch.input_ids[row]
            n = int((ids != lm.pad_id).sum())
            assert int(ids[0]) == lm.eos_id and (ids[n:] == lm.pad_id).all()
            assert small_tokenizer.decode(ids[:n].tolist()) == f"{probe.prompt} {probe.answer}"
            answer = batch.targets[row][batch.answer_mask[row]].tolist()
            assert small_tokenizer.decode(answer).strip() == probe.answer
            first = int(batch.answer_mask[row].nonzero()[0])
            prompt = small_tokenizer.decode(ids[: first + 1].tolist())
            assert prompt == probe.prompt
            assert not batch.answer_mask[row, n - 1:].any()
        seen += B
    assert seen == len(probes)


def test_recalled_with_perfect_and_wrong_logits(lm, small_corpus) -> None:
    batch = next(lm.probe_batches(small_corpus.probes[:3], batch_size=3))
    logits = torch.nn.functional.one_hot(batch.targets, lm.vocab_size).float()  # (B, L, V)
    assert batch.recalled(logits).tolist() == [True, True, True]
    row, col = 1, int(batch.answer_mask[1].nonzero()[-1])
    logits[row, col] = 0.0
    logits[row, col, (int(batch.targets[row, col]) + 1) % lm.vocab_size] = 1.0
    assert batch.recalled(logits).tolist() == [True, False, True]
