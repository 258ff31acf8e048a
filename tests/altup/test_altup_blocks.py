import pytest
import torch
import torch.nn.functional as F

from extmem.altup import AltUpConfig, BlockAltUp
from extmem.memory import MemoryConfig
from extmem.model import DecodeCache, ModelConfig, Transformer, flops_per_token, parameter_counts

V, D, L = 40, 16, 4


def config(altup: AltUpConfig | None = None, **kwargs) -> ModelConfig:
    base = dict(vocab_size=V, d_model=D, n_layers=L, n_heads=2, max_seq_len=16)
    base.update(kwargs)
    return ModelConfig(altup=altup, **base)


def build(altup: AltUpConfig | None = None, seed: int = 0, **kwargs) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(config(altup, **kwargs))


def ids(batch: int = 2, length: int = 10, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (batch, length), generator=torch.Generator().manual_seed(seed))


def lm_loss(model: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("active", ["alternating", "same"])
@pytest.mark.parametrize("embedding", ["recycled", "learned"])
def test_recycled_and_learned_at_init_equal_the_dense_model(k, active, embedding):
    dense = build().eval()
    altup = build(AltUpConfig(k=k, active=active, embedding=embedding)).eval()
    missing, unexpected = altup.load_state_dict(dense.state_dict(), strict=False)
    assert not unexpected and missing and all(n.startswith("altup.") for n in missing)
    tokens = ids()
    assert (altup(tokens) - dense(tokens)).abs().max() < 1e-5


def test_router_coefficients_at_init_equal_the_dense_model():
    dense = build().eval()
    altup = build(AltUpConfig(k=4, embedding="recycled", coefficients="router")).eval()
    altup.load_state_dict(dense.state_dict(), strict=False)
    assert (altup(ids()) - dense(ids())).abs().max() < 1e-5


def test_random_init_is_not_the_dense_model():
    dense = build().eval()
    altup = build(AltUpConfig(embedding="learned", init="random")).eval()
    altup.load_state_dict(dense.state_dict(), strict=False)
    assert (altup(ids()) - dense(ids())).abs().max() > 1e-3


def test_standard_altup_widens_embedding_and_head_only():
    model = build(AltUpConfig(k=2))
    dense = build()
    assert model.embed.weight.shape == (V, 2 * D)
    assert model.lm_head.weight is model.embed.weight  # tied, K*d wide
    counts, base = parameter_counts(model), parameter_counts(dense)
    assert counts["embeddings"] == V * 2 * D
    # core grows by the final norm's extra width and K*K + K scalars per layer, nothing else
    assert counts["core"] - base["core"] == D + L * (2 * 2 + 2)
    assert counts["memory_tables"] == 0


def test_flops_count_predict_and_correct():
    dense = flops_per_token(build(), seq_len=10)
    recycled = flops_per_token(build(AltUpConfig(k=2, embedding="recycled")), seq_len=10)
    k = 2
    per_layer = 2 * k * k * D + D + 2 * k * D
    assert recycled["core"] - dense["core"] == L * per_layer + k * D
    assert recycled["lm_head"] == dense["lm_head"]
    standard = flops_per_token(build(AltUpConfig(k=2)), seq_len=10)
    assert standard["lm_head"] == 2 * dense["lm_head"]
    assert standard["total"] == standard["core"] + standard["memory"] + standard["lm_head"]


@pytest.mark.parametrize("altup", [
    AltUpConfig(k=2),
    AltUpConfig(k=4, active="same", embedding="recycled"),
    AltUpConfig(k=4, embedding="learned", coefficients="router", active="same"),
    AltUpConfig(k=2, extra_blocks=2, init="random"),
], ids=["standard-k2", "recycled-k4-same", "gemma-k4", "memory-blocks-random"])
def test_causal(altup):
    model = build(altup).eval()
    tokens = ids(length=12)
    changed = tokens.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % V
    torch.testing.assert_close(model(tokens)[:, :7], model(changed)[:, :7], rtol=0, atol=0)
    assert not torch.allclose(model(tokens)[:, 7:], model(changed)[:, 7:])


@pytest.mark.parametrize("altup", [
    AltUpConfig(k=2),
    AltUpConfig(k=4, embedding="recycled", init="random"),
    AltUpConfig(k=2, embedding="learned", coefficients="router", active="same"),
], ids=["standard-k2", "recycled-k4", "gemma-k2"])
def test_cached_decoding_equals_the_full_forward(altup):
    model = build(altup).eval()
    tokens = ids(length=11)
    full = model(tokens)
    cache = DecodeCache()
    steps = [model(tokens[:, :6], cache=cache)]
    steps += [model(tokens[:, t:t + 1], cache=cache) for t in range(6, 11)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


def test_gradients_reach_every_scalar_coefficient():
    model = build(AltUpConfig(k=4))
    lm_loss(model, ids()).backward()
    for name, param in model.altup.named_parameters():
        assert param.grad is not None and (param.grad != 0).all(), name


def test_gradients_reach_every_router_coefficient():
    model = build(AltUpConfig(k=4, embedding="learned", coefficients="router", active="same"))
    lm_loss(model, ids()).backward()
    for layer in model.altup.coefficients:
        for param in (layer.prediction_coefs, layer.correction_coefs):
            assert param.grad is not None and (param.grad != 0).all()
    # the router itself learns once the coefficient weights have left zero
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    model.zero_grad()
    lm_loss(model, ids()).backward()
    for layer in model.altup.coefficients:
        assert (layer.modality_router.grad != 0).all()


@pytest.mark.parametrize("k", [2, 4])
def test_alternating_and_same_choose_the_active_block(k):
    alternating = build(AltUpConfig(k=k)).altup
    same = build(AltUpConfig(k=k, active="same")).altup
    assert [alternating.active_block(layer) for layer in range(L)] == [i % k for i in range(L)]
    assert [same.active_block(layer) for layer in range(L)] == [0] * L


def test_alternating_differs_from_same_on_distinct_blocks():
    tokens = ids()
    alternating = build(AltUpConfig(k=2)).eval()
    same = build(AltUpConfig(k=2, active="same")).eval()
    same.load_state_dict(alternating.state_dict())
    assert not torch.allclose(alternating(tokens), same(tokens))


def test_every_variant_trains():
    variants = [AltUpConfig(k=2), AltUpConfig(k=4, embedding="recycled"),
                AltUpConfig(embedding="learned", coefficients="router", active="same"),
                AltUpConfig(mode="sequence", k=2)]
    tokens = ids(batch=4, length=12)
    for altup in variants:
        model = build(altup)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        losses = []
        for _ in range(4):
            loss = lm_loss(model, tokens)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        assert losses[-1] < losses[0], altup


class _Identity(torch.nn.Module):
    def forward(self, x, input_ids, padding_mask, cache):
        return x


def test_write_extra_places_rows_into_memory_blocks():
    altup = BlockAltUp(AltUpConfig(k=2, extra_blocks=3), d_model=D, n_layers=1, norm_eps=1e-6)
    stream = torch.randn(2, 5, 5, D)  # (B, T, K + extra, d)
    rows = torch.randn(2, 5, 2 * D)  # two memory blocks wide
    written = altup.write_extra(stream, rows, first=1)
    torch.testing.assert_close(written[:, :, :3], stream[:, :, :3])
    torch.testing.assert_close(written[:, :, 3:], stream[:, :, 3:] + rows.unflatten(-1, (2, D)))
    with pytest.raises(ValueError, match="extra_blocks"):
        altup.write_extra(stream, rows, first=2)
    with pytest.raises(ValueError, match="extra_blocks"):
        altup.write_extra(stream, torch.randn(2, 5, D + 1))


def test_memory_blocks_reach_the_output_only_through_the_predictor():
    cfg = AltUpConfig(k=2, embedding="recycled", extra_blocks=1)
    altup = BlockAltUp(cfg, d_model=D, n_layers=1, norm_eps=1e-6)
    x = torch.randn(2, 5, D)
    rows = torch.randn(2, 5, D, requires_grad=True)

    def run() -> torch.Tensor:
        stream = altup.write_extra(altup.streams.expand(x), rows)
        stream = altup.step(stream, 0, _Identity(), None, None, None)
        return altup.streams.collapse(stream)  # (B, T, d)

    torch.testing.assert_close(run(), x)  # identity predictor: the memory block is not read
    with torch.no_grad():
        altup.coefficients[0].predictor[0, 2] = 0.5  # block 0 reads half the memory block
    out = run()
    torch.testing.assert_close(out, x + 0.25 * rows)  # mean of blocks 0 and 1
    out.sum().backward()
    assert rows.grad is not None and (rows.grad != 0).all()


def test_memory_concat_config_is_causal():
    memory = MemoryConfig(layers=[1], lookup="token", readout="concat")
    model = build(AltUpConfig(k=2, embedding="recycled", extra_blocks=1),
                  memories=[memory]).eval()
    tokens = ids(length=12)
    changed = tokens.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % V
    torch.testing.assert_close(model(tokens)[:, :5], model(changed)[:, :5], rtol=0, atol=0)


def altup_concat_memory() -> MemoryConfig:
    return MemoryConfig(layers=[1], lookup="token", readout="concat", concat_into="altup")


def test_memory_concat_into_altup_is_causal():
    model = build(AltUpConfig(k=2, embedding="recycled", extra_blocks=1),
                  memories=[altup_concat_memory()]).eval()
    tokens = ids(length=12)
    changed = tokens.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % V
    torch.testing.assert_close(model(tokens)[:, :5], model(changed)[:, :5], rtol=0, atol=0)


def test_memory_concat_into_altup_starts_dense_and_learns_to_read_the_row():
    dense = build().eval()  # Recycled-AltUp at identity init is the dense model
    model = build(AltUpConfig(k=2, embedding="recycled", extra_blocks=1),
                  memories=[altup_concat_memory()])
    memory = model.blocks[1].memories[0]
    assert memory.readout.proj is None  # no projection back to d: no extra layer compute
    model.load_state_dict(dense.state_dict(), strict=False)
    tokens = ids()
    torch.testing.assert_close(model.eval()(tokens), dense(tokens), rtol=0, atol=1e-6)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    lm_loss(model.train(), tokens).backward()
    later = model.altup.coefficients[2].predictor
    assert later.grad[:2, 2].abs().sum() > 0  # computed blocks learn to read the memory block
    optimizer.step()
    optimizer.zero_grad()
    lm_loss(model, tokens).backward()  # once the predictor reads it, the rows train
    assert memory.table.weight.grad.abs().sum() > 0
    flops = flops_per_token(model, 10)["memory"]
    assert flops == 2 * 1 * D  # the bag of one row, nothing projected


def test_memory_concat_into_altup_needs_memory_blocks():
    from extmem.errors import ConfigError
    with pytest.raises(ConfigError, match="needs a \\[model.altup\\] table"):
        config(memories=[altup_concat_memory()])
    with pytest.raises(ConfigError, match="extra_blocks: 0 is too few"):
        config(AltUpConfig(k=2, embedding="recycled"), memories=[altup_concat_memory()])
    with pytest.raises(ConfigError, match="needs readout = 'concat'"):
        MemoryConfig(readout="add", concat_into="altup")
