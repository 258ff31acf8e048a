"""Parity of the Gemma-style coefficients with Hugging Face's Gemma 3n AltUp (tiny, offline)."""

import pytest
import torch

from extmem.altup.coefficients import RouterCoefficients

gemma3n = pytest.importorskip(
    "transformers.models.gemma3n.modeling_gemma3n",
    reason="needs the `hf` extra (transformers with Gemma 3n): pip install -e '.[hf]'")
configuration = pytest.importorskip("transformers.models.gemma3n.configuration_gemma3n")

D, K = 16, 4


def hf_altup(active: int) -> torch.nn.Module:
    cfg = configuration.Gemma3nTextConfig(
        hidden_size=D, altup_num_inputs=K, altup_active_idx=active, altup_coef_clip=120.0,
        num_hidden_layers=1, vocab_size=32, vocab_size_per_layer_input=32,
        hidden_size_per_layer_input=4, intermediate_size=32, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8)
    torch.manual_seed(0)
    module = gemma3n.Gemma3nTextAltUp(cfg).eval()
    with torch.no_grad():  # random weights, large enough that tanh is not linear
        module.modality_router.weight.mul_(40.0)
        module.router_norm.weight.uniform_(0.5, 1.5)
    return module


def copied(hf: torch.nn.Module) -> RouterCoefficients:
    ours = RouterCoefficients(K, D, coef_clip=120.0, norm_eps=hf.config.rms_norm_eps).eval()
    with torch.no_grad():
        ours.router_norm.weight.copy_(hf.router_norm.weight)
        ours.modality_router.copy_(hf.modality_router.weight)
        ours.prediction_coefs.copy_(hf.prediction_coefs.weight)
        ours.correction_coefs.copy_(hf.correction_coefs.weight)
    return ours


@pytest.mark.parametrize("active", [0, 2])
def test_predict_and_correct_match_gemma3n(active):
    hf = hf_altup(active)
    ours = copied(hf)
    stream = torch.randn(2, 5, K, D)  # ours (B, T, K, d); Gemma 3n stacks blocks first
    activated = torch.randn(2, 5, D)
    with torch.no_grad():
        hf_pred = hf.predict(stream.permute(2, 0, 1, 3))  # (K, B, T, d)
        our_pred = ours.predict(stream, active)  # (B, T, K, d)
        torch.testing.assert_close(our_pred, hf_pred.permute(1, 2, 0, 3), rtol=1e-5, atol=1e-5)
        hf_corr = hf.correct(hf_pred, activated)
        our_corr = ours.correct(our_pred, activated, active)
        torch.testing.assert_close(our_corr, hf_corr.permute(1, 2, 0, 3), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(our_pred, stream, atol=1e-3)  # the coefficients did something
