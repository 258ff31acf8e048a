"""Evaluation: validation loss, perplexity, bits per byte, facts recalled, facts stored, memory
usage.

Bits per byte = mean NLL per token / ln 2 / (UTF-8 bytes per validation token), so runs with
different tokenizers compare. Facts recalled = fraction of probes whose greedy prediction is
right at every answer token (teacher-forced, one forward pass per batch of probes). Facts
stored (`facts` only, given its training-phrasing probes): the storage meter of
extmem.run.storage (bits from the loss on the values of training phrasings).
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from extmem.data import FactProbe, LMData, mask_tokens
from extmem.memory.stats import staleness_figures
from extmem.model import Transformer, flops_per_token, parameter_counts
from extmem.run.objective import mlm_generator
from extmem.run.storage import extraction_figures, measure_storage

if TYPE_CHECKING:
    from extmem.run.session import TrainedRun

EVAL_MASK_SEED = 12345


@torch.no_grad()
def validation_loss(model: Transformer, data: LMData, batch_size: int, max_tokens: int,
                    mask_prob: float, device: torch.device) -> tuple[float, int]:
    """Mean NLL over the validation split (masked positions for a masked LM) and token count."""
    total, count = 0.0, 0
    for i, (inputs, targets) in enumerate(data.val_batches(batch_size, max_tokens)):
        inputs, targets = inputs.to(device), targets.to(device)
        if model.cfg.causal:
            logits = model(inputs)  # (B, T, V)
            labels = targets
        else:
            special = data.special_ids
            masked, labels = mask_tokens(inputs.cpu(), mlm_generator(EVAL_MASK_SEED, i),
                                         data.mask_id, data.vocab_size, special, prob=mask_prob)
            logits = model(masked.to(device))
            labels = labels.to(device)
        nll = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(),
                              ignore_index=-100, reduction="sum")
        total += float(nll)
        count += int((labels != -100).sum())
    return (total / count if count else float("nan")), count


@torch.no_grad()
def facts_recalled(model: Transformer, data: LMData, probes: list[FactProbe], batch_size: int,
                   device: torch.device) -> float:
    """Fraction of probes answered exactly (argmax right at every answer token)."""
    correct = total = 0
    for batch in data.probe_batches(probes, batch_size):
        # probes longer than the model's context keep their end (where the answer is)
        keep = slice(-model.cfg.max_seq_len, None)
        inputs = batch.input_ids[:, keep].to(device)  # (B, L)
        mask = batch.answer_mask[:, keep].to(device)  # (B, L)
        targets = batch.targets[:, keep].to(device)  # (B, L)
        logits = model(inputs, padding_mask=inputs.eq(data.pad_id))
        hit = logits.argmax(-1).eq(targets) | ~mask  # (B, L)
        correct += int(hit.all(dim=1).sum())
        total += inputs.shape[0]
    return correct / total if total else float("nan")


def storage(model: Transformer, data: LMData, train_probes: list[FactProbe], batch_size: int,
            device: torch.device, accounting: dict | None, tokens_trained: int,
            recalled_heldout: float | None) -> dict:
    """The storage meter's figures (extmem.run.storage) beside recall on held-out phrasings.
    `accounting` None: the parameter split and FLOPs of `model` as it is (unsharded)."""
    if accounting is None:
        accounting = {"params": parameter_counts(model),
                      "flops_per_token": flops_per_token(model, data.seq_len)}
    out = measure_storage(model, data, train_probes, batch_size, device, accounting,
                          tokens_trained)
    if recalled_heldout is not None:
        out.update(extraction_figures(recalled_heldout, train_probes))
    return out


@torch.no_grad()
def evaluate(model: Transformer, data: LMData, probes: list[FactProbe], batch_size: int,
             max_tokens: int = 0, mask_prob: float = 0.15,
             usage_window: int = 100, train_probes: list[FactProbe] | None = None,
             tokens_trained: int = 0, accounting: dict | None = None) -> dict:
    """All evaluation figures of the model on this data, as a JSON-ready dict.

    `train_probes` (the `facts` corpus' training-phrasing probes) add the storage meter;
    `tokens_trained` its bits per training FLOP; `accounting` the run's parameter split and
    FLOPs per token (default: measured on `model`)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    memories = model.memory_modules()
    with contextlib.ExitStack() as stack:
        collectors = {name: stack.enter_context(m.collect_usage()) for name, m in memories}
        loss, tokens = validation_loss(model, data, batch_size, max_tokens, mask_prob, device)
    out: dict = {"val_loss": loss, "val_ppl": math.exp(min(loss, 700.0)), "val_tokens": tokens}
    if model.cfg.causal:
        out["val_bpb"] = loss / math.log(2) / data.val_bytes_per_token
    if probes and model.cfg.causal:
        out["facts_recalled"] = facts_recalled(model, data, probes, batch_size, device)
    if train_probes and model.cfg.causal:
        out.update(storage(model, data, train_probes, batch_size, device, accounting,
                           tokens_trained, out.get("facts_recalled")))
    if memories:
        usage = {}
        for name, memory in memories:
            figures = collectors[name].summary()  # distribution over the evaluation set
            for training_only in ("windowed_usage", "never_read", "rows_read_last_step"):
                figures.pop(training_only)
            # training-time counters (Kim & Jung 2020's outdated slots): windowed usage, never read
            train = memory.usage.summary(usage_window)
            for key in ("windowed_usage", "never_read", "rows_read_last_step", "usage", "load_cv"):
                figures[f"train_{key}"] = train[key]
            figures["slots"] = memory.num_slots
            # staleness of the training reads (train_never_read is the fraction never selected)
            stale = staleness_figures(memory.usage.last_step, int(memory.usage.step))
            for key in ("staleness_hist", "staleness_mean", "staleness_median"):
                figures[f"train_{key}"] = stale[key]
            usage[name] = figures
        out["memory_usage"] = usage
    model.train(was_training)
    return out


def evaluate_trained(run: TrainedRun, docs: list[str] | None = None) -> dict:
    """`evaluate` of a restored run (`extmem eval`, `--fill-results`) with its own eval
    settings: on its own data (fact probes and the storage meter included), or on `docs` (every
    document evaluated, no split, no fact probes)."""
    from extmem.data import Corpus, build_lm_data

    cfg, data, model = run.cfg, run.data, run.model
    lm, probes, train_probes = data.lm, data.corpus.probes, data.corpus.train_probes
    if docs is not None:
        lm = build_lm_data(Corpus(name="files", train_docs=docs, val_docs=docs), data.tokenizer,
                           cfg.data)
        probes, train_probes = [], []
    tc = cfg.train
    tokens = (run.step + tc.data_offset) * tc.rows_per_step * cfg.data.seq_len
    return evaluate(model, lm, probes, tc.eval_batch_size, tc.eval_tokens, tc.mask_prob,
                    tc.usage_window, train_probes=train_probes, tokens_trained=tokens)
