"""extmem.hf.add_memory on tiny Hugging Face GPT-2, BERT and Llama models (built offline from
configs): zero-init leaves the logits unchanged, the memory trains (also with HF Trainer), and
save_pretrained + load_with_memory round-trips."""

import pytest

pytest.importorskip("transformers",
                    reason='the hf extra is not installed: pip install -c constraints.txt -e ".[hf]"')

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    BertConfig,
    BertForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from extmem import MemoryConfig, ProductKeyConfig
from extmem.errors import ConfigError
from extmem.hf import add_memory, load_with_memory
from extmem.memory import EngramConfig, NgramLookupConfig
from extmem.memory.module import Memory

VOCAB = 64
PKM = MemoryConfig(zero_init_output=True,
                   product_keys=ProductKeyConfig(n_keys=8, heads=2, topk=4, key_dim=16))
BUILDERS = {
    "gpt2": (lambda: GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=32,
                                                n_layer=2, n_head=2, bos_token_id=0,
                                                eos_token_id=0)), AutoModelForCausalLM),
    "bert": (lambda: BertForMaskedLM(BertConfig(vocab_size=VOCAB, hidden_size=32,
                                                num_hidden_layers=2, num_attention_heads=2,
                                                intermediate_size=64,
                                                max_position_embeddings=32)),
             AutoModelForMaskedLM),
    "llama": (lambda: LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32,
                                                   intermediate_size=64, num_hidden_layers=2,
                                                   num_attention_heads=2, num_key_value_heads=1,
                                                   max_position_embeddings=32)),
              AutoModelForCausalLM),
}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def build(arch: str):
    torch.manual_seed(0)
    return BUILDERS[arch][0]().eval()


@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_parallel_memory_keeps_logits_then_trains(arch):
    model = build(arch)
    ids = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        before = model(ids).logits
    names = set(model.state_dict())
    (memory,) = add_memory(model, PKM, layers=[1], placement="parallel_ffn")
    assert names < set(model.state_dict())  # original names unchanged, memory names added
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    start = memory.table.weight.detach().clone()
    for step in range(2):  # the zero output projection learns first, then the table
        optimizer.zero_grad()
        model(ids, labels=ids).loss.backward()
        grad = memory.table.weight.grad
        assert (grad.abs().sum() > 0) == (step == 1)
        optimizer.step()
    assert not torch.equal(memory.table.weight, start)
    assert memory.usage.counts.sum() > 0


@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_replace_ffn_drops_the_ffn_and_round_trips(arch, tmp_path):
    model = build(arch)
    add_memory(model, PKM, layers=[0], placement="replace_ffn")
    add_memory(model, PKM, layers=[1])  # a second memory, beside layer 1's FFN
    ffn = {"gpt2": "transformer.h.0.mlp.c_fc.weight", "bert": "bert.encoder.layer.0.output.dense.weight",
           "llama": "model.layers.0.mlp.up_proj.weight"}[arch]
    assert ffn not in model.state_dict()
    assert len([m for m in model.modules() if isinstance(m, Memory)]) == 2
    assert [m["placement"] for m in model.config.extmem_memories] == ["replace_ffn", "parallel_ffn"]
    torch.nn.init.normal_(next(m for m in model.modules() if isinstance(m, Memory)).readout.out_proj.weight)
    model.save_pretrained(tmp_path)
    loaded = load_with_memory(tmp_path, BUILDERS[arch][1]).eval()
    ids = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert ffn not in loaded.state_dict()


def test_ngram_memory_reads_history_during_cached_generation():
    model = build("gpt2")
    ngram = MemoryConfig(lookup="ngram", zero_init_output=False)
    add_memory(model, ngram, layers=[0, 1])
    prompt = torch.randint(0, VOCAB, (1, 5))
    kwargs = {"max_new_tokens": 8, "min_new_tokens": 8, "do_sample": False, "pad_token_id": 0}
    assert torch.equal(model.generate(prompt, **kwargs),
                       model.generate(prompt, use_cache=False, **kwargs))


def test_engram_memory_decodes_a_left_padded_batch_as_without_the_cache():
    """Prompts of 1 and 5 tokens, the short one left-padded (pad id 0 is also a token): with
    the cache, the first steps must hash against the sequence start as the full forward
    (padding masked) does, not against the padding's ids."""
    model = build("gpt2")
    engram = MemoryConfig(lookup="engram", readout="engram", value_dim=8,
                          engram=EngramConfig(heads=2, rows_per_head=31, conv_zero_init=False))
    add_memory(model, engram, layers=[0, 1])
    prompt = torch.randint(1, VOCAB, (2, 5))
    mask = torch.ones_like(prompt)
    prompt[0, :4], mask[0, :4] = 0, 0
    kwargs = {"attention_mask": mask, "max_new_tokens": 6, "min_new_tokens": 6,
              "do_sample": False, "pad_token_id": 0}
    assert torch.equal(model.generate(prompt, **kwargs),
                       model.generate(prompt, use_cache=False, **kwargs))


def test_ngram_memory_generates_a_left_padded_batch_as_each_row_alone():
    """Prompts of 1, 2 and 5 tokens left-padded to 5 (pad id 0 is also a token): with and
    without the cache, each row generates what its prompt generates alone; the n-gram windows
    of the first real positions must read the sequence start, not the padding's ids."""
    model = build("gpt2")
    ngram = MemoryConfig(lookup="ngram", ngram=NgramLookupConfig(orders=[2, 3], heads=2,
                                                                 rows=97))
    add_memory(model, ngram, layers=[0, 1])
    lengths, width = [1, 2, 5], 5
    prompt = torch.randint(1, VOCAB, (len(lengths), width))
    mask = torch.ones_like(prompt)
    for b, n in enumerate(lengths):
        prompt[b, :width - n], mask[b, :width - n] = 0, 0
    kwargs = {"max_new_tokens": 6, "min_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    cached = model.generate(prompt, attention_mask=mask, **kwargs)  # (B, 5 + 6)
    assert torch.equal(cached, model.generate(prompt, attention_mask=mask, use_cache=False,
                                              **kwargs))
    for b, n in enumerate(lengths):
        alone = prompt[b:b + 1, width - n:]  # (1, n)
        generated = model.generate(alone, attention_mask=torch.ones_like(alone), **kwargs)
        assert torch.equal(cached[b, width - n:], generated[0]), f"prompt of {n} tokens"


def test_bad_layers_and_placement_are_config_errors():
    model = build("llama")
    with pytest.raises(ConfigError, match=r"layers \[5\] out of range"):
        add_memory(model, PKM, layers=[5])
    with pytest.raises(ConfigError, match="parallel_ffn or replace_ffn"):
        add_memory(model, PKM, placement="input")


def test_trains_with_hf_trainer(tmp_path):
    from transformers import Trainer, TrainingArguments

    model = build("gpt2").train()
    (memory,) = add_memory(model, PKM, layers=[1])
    start = memory.readout.out_proj.weight.detach().clone()
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, VOCAB, (8, 12))]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4,
                             learning_rate=1e-2, report_to=[], save_strategy="no",
                             logging_strategy="no", use_cpu=True, disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=data).train()
    assert not torch.equal(memory.readout.out_proj.weight, start)
