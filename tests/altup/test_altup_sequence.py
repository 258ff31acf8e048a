import pytest
import torch
import torch.nn.functional as F

from extmem.altup import AltUpConfig, SequenceAltUp
from extmem.errors import ConfigError
from extmem.model import DecodeCache, ModelConfig, Transformer, flops_per_token

V, D, L = 40, 16, 3


def build(altup: AltUpConfig | None, causal: bool = True) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=V, d_model=D, n_layers=L, n_heads=2,
                                   max_seq_len=32, causal=causal, altup=altup))


def ids(length: int = 13) -> torch.Tensor:
    return torch.randint(0, V, (2, length), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("active", ["alternating", "same"])
@pytest.mark.parametrize("t", [0, 4, 9])
def test_strictly_causal(k, active, t):
    model = build(AltUpConfig(mode="sequence", k=k, active=active, init="random")).eval()
    tokens = ids()
    changed = tokens.clone()
    changed[:, t + 1:] = (changed[:, t + 1:] + 1) % V
    torch.testing.assert_close(model(tokens)[:, :t + 1], model(changed)[:, :t + 1],
                               rtol=0, atol=0)


class _Record(torch.nn.Module):
    """A layer that adds 1 and remembers what it was run on."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x, input_ids, padding_mask, cache):
        self.seen.append(input_ids)
        return x + 1.0


@pytest.mark.parametrize(("active", "offset"), [("alternating", 1), ("same", 0)])
def test_layer_runs_on_one_position_of_every_k(active, offset):
    altup = SequenceAltUp(AltUpConfig(mode="sequence", k=3, active=active), D, n_layers=2)
    x = torch.randn(1, 8, D)
    positions = torch.arange(8)[None]
    layer = _Record()
    out = altup.step(x, 1, layer, positions, None)
    assert layer.seen[0].tolist() == [list(range(offset, 8, 3))]
    # at init every position at or after the first computed one gets its update (+1)
    torch.testing.assert_close(out[:, offset:], x[:, offset:] + 1.0)
    torch.testing.assert_close(out[:, :offset], x[:, :offset])


def test_gradients_reach_every_coefficient():
    model = build(AltUpConfig(mode="sequence", k=3))
    tokens = ids()
    logits = model(tokens[:, :-1])
    F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()
    for name in ("predictor", "gains"):
        grad = getattr(model.altup, name).grad
        assert grad is not None and (grad != 0).all(), name


def test_cached_decoding_is_refused_with_a_clear_error():
    model = build(AltUpConfig(mode="sequence")).eval()
    with pytest.raises(ConfigError, match="'sequence' does not support cached decoding"):
        model(ids(4), cache=DecodeCache())


def test_encoder_with_padding_runs():
    model = build(AltUpConfig(mode="sequence", k=2), causal=False).eval()
    mask = torch.zeros(2, 13, dtype=torch.bool)
    mask[:, 10:] = True
    assert model(ids(), padding_mask=mask).shape == (2, 13, V)


def test_flops_shrink_with_k():
    dense = flops_per_token(build(None), seq_len=16)
    half = flops_per_token(build(AltUpConfig(mode="sequence", k=2)), seq_len=16)
    assert dense["core"] / 2.5 < half["core"] < dense["core"] / 1.5
    assert half["lm_head"] == dense["lm_head"]


class _AddOne(torch.nn.Module):
    """A stand-in layer: adds 1 to every position it runs on."""

    def forward(self, x, input_ids, padding_mask, cache):
        return x + 1.0


@pytest.mark.parametrize("skipped,expected_skipped", [("predict", 1.0), ("pass", 0.0)])
def test_skipped_positions_predicted_or_passed(skipped, expected_skipped):
    """K = 2, layer 0: positions 0, 2, 4 run the layer (+1). Sequence-AltUp at its identity
    init hands the computed neighbour's update to 1, 3, 5 (+1); token dropping leaves them."""
    altup = SequenceAltUp(AltUpConfig(mode="sequence", k=2, skipped=skipped), d_model=4,
                          n_layers=2)
    x = torch.randn(1, 6, 4)
    y = altup.step(x, 0, _AddOne(), torch.zeros(1, 6, dtype=torch.long), None)
    assert torch.allclose(y[:, 0::2], x[:, 0::2] + 1.0)
    assert torch.allclose(y[:, 1::2], x[:, 1::2] + expected_skipped)
    assert (altup.flops_per_token() == 0) == (skipped == "pass")


def test_skipped_needs_sequence_mode():
    with pytest.raises(ConfigError, match="model.altup.skipped"):
        AltUpConfig(mode="blocks", skipped="pass")
