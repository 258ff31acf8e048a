import pytest
import torch
import torch.nn.functional as F

from extmem import MemoryConfig, ModelConfig, ProductKeyConfig, Transformer
from extmem.errors import ConfigError

PK = ProductKeyConfig(n_keys=6, topk=3, heads=2, key_dim=8)


def config(**kwargs) -> ModelConfig:
    base = dict(vocab_size=50, d_model=16, n_layers=2, n_heads=2, max_seq_len=12)
    base.update(kwargs)
    return ModelConfig(**base)


def with_memory(placement: str, **kwargs) -> ModelConfig:
    return config(memories=[MemoryConfig(layers=[1], placement=placement, product_keys=PK,
                                         **kwargs)])


def test_zero_init_memory_leaves_logits_unchanged():
    torch.manual_seed(0)
    dense = Transformer(config())
    augmented = Transformer(with_memory("parallel_ffn", zero_init_output=True))
    missing, unexpected = augmented.load_state_dict(dense.state_dict(), strict=False)
    assert not unexpected and all(".memories." in name for name in missing)
    ids = torch.randint(0, 50, (3, 10))
    torch.testing.assert_close(augmented(ids), dense(ids), rtol=0, atol=0)


@pytest.mark.parametrize("placement", ["parallel_ffn", "replace_ffn"])
@pytest.mark.parametrize("causal", [True, False])
def test_every_placement_trains_a_step(placement, causal):
    torch.manual_seed(0)
    model = Transformer(config(causal=causal, memories=[
        MemoryConfig(layers=[0, 1], placement=placement, product_keys=PK)]))
    assert (model.blocks[1].ffn is None) == (placement == "replace_ffn")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.randint(0, 50, (4, 12))
    losses = []
    for _ in range(3):
        loss = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        table_grad = model.blocks[1].memories[0].table.weight.grad
        assert table_grad is not None and table_grad.abs().sum() > 0
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


def test_causal_model_ignores_future_tokens():
    torch.manual_seed(0)
    model = Transformer(with_memory("parallel_ffn")).eval()
    ids = torch.randint(0, 50, (2, 10))
    changed = ids.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % 50
    torch.testing.assert_close(model(ids)[:, :6], model(changed)[:, :6])


def test_encoder_sees_both_directions():
    torch.manual_seed(0)
    model = Transformer(config(causal=False)).eval()
    ids = torch.randint(0, 50, (1, 10))
    changed = ids.clone()
    changed[:, 9] = (changed[:, 9] + 1) % 50
    assert not torch.allclose(model(ids)[:, 0], model(changed)[:, 0])


def test_padding_mask_hides_padded_keys():
    torch.manual_seed(0)
    model = Transformer(config(causal=False)).eval()
    ids = torch.randint(0, 50, (1, 8))
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    mask = torch.zeros(1, 11, dtype=torch.bool)
    mask[:, 8:] = True
    torch.testing.assert_close(model(padded, padding_mask=mask)[:, :8], model(ids))


def test_tied_embeddings_share_one_tensor():
    model = Transformer(config(tie_embeddings=True))
    assert model.lm_head.weight is model.embed.weight
    assert Transformer(config(tie_embeddings=False)).lm_head.weight is not None


@pytest.mark.parametrize("kwargs,fragment", [
    (dict(d_model=30, n_heads=4), "not divisible by model.n_heads"),
    (dict(n_layers=0), "n_layers"),
    (dict(memories=[MemoryConfig(layers=[5])]), "out of range"),
])
def test_model_config_errors(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        config(**kwargs)


def test_cached_decoding_gives_the_same_logits():
    from extmem.model import DecodeCache
    torch.manual_seed(0)
    model = Transformer(with_memory("parallel_ffn")).eval()
    ids = torch.randint(0, 50, (2, 10))
    full = model(ids)
    cache = DecodeCache()
    pieces = [model(ids[:, :4], cache=cache)]  # a prompt chunk, then one token at a time
    pieces += [model(ids[:, t:t + 1], cache=cache) for t in range(4, 7)]
    pieces.append(model(ids[:, 7:], cache=cache))  # a multi-token chunk after the cache
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)
    assert cache.length == 10 and torch.equal(cache.token_ids, ids)
