import json

from extmem import MemoryConfig, ModelConfig, ProductKeyConfig, Transformer
from extmem.cli import main
from extmem.model import flops_per_token, parameter_counts
from extmem.run.config import TrainConfig
from extmem.run.session import load_trained


def test_parameter_split_covers_every_parameter_once():
    pk = ProductKeyConfig(n_keys=6, topk=3, heads=2, key_dim=8)
    cfg = ModelConfig(vocab_size=50, d_model=16, n_layers=2, n_heads=2, ffn="gelu",
                      memories=[MemoryConfig(layers=[1], product_keys=pk, value_dim=12)])
    model = Transformer(cfg)
    counts = parameter_counts(model)
    unique = {id(p): p.numel() for p in model.parameters()}
    assert counts["total"] == sum(unique.values())
    assert counts["embeddings"] == 50 * 16  # tied: counted once
    assert counts["memory_tables"] == 36 * 12
    # query (16 -> 2*8, + bias) + LayerNorm(16) + sub-keys (2 heads, 2 halves, 6 keys, 4) + out proj
    assert counts["memory_other"] == (16 * 16 + 16) + 2 * 16 + 2 * 2 * 6 * 4 + 12 * 16
    # per layer: attention 4*d*d, GELU FFN 2*d*4d, two RMSNorm weights; plus the final norm
    assert counts["core"] == 2 * (4 * 16 * 16 + 2 * 16 * 64 + 2 * 16) + 16


def test_flops_count_the_product_key_search():
    pk = ProductKeyConfig(n_keys=6, topk=3, heads=2, key_dim=8)
    cfg = ModelConfig(vocab_size=50, d_model=16, n_layers=1, n_heads=2, ffn="gelu",
                      memories=[MemoryConfig(layers=[0], product_keys=pk)])
    flops = flops_per_token(Transformer(cfg), seq_len=10)
    query = 2 * 16 * 2 * 8
    search = 2 * 2 * 6 * 8 + 2 * 3 * 3
    bag = 2 * (2 * 3) * 16
    assert flops["memory"] == query + search + bag
    assert flops["core"] == 2 * 4 * 16 * 16 + 2 * 2 * 5 * 16 + 2 * 16 * 64 * 2
    assert flops["total"] == flops["core"] + flops["memory"] + flops["lm_head"]


def test_a_masked_lm_counts_its_head_at_the_masked_share():
    """Training runs a masked LM's head at its masked positions only (`select`), a decoder's
    at every position: the head's FLOPs per token follow."""
    def build(causal: bool) -> Transformer:
        return Transformer(ModelConfig(vocab_size=50, d_model=16, n_layers=1, n_heads=2,
                                       ffn="gelu", causal=causal))
    decoder, encoder = build(True), build(False)
    head = 2 * 16 * 50
    assert flops_per_token(decoder, 10, mask_prob=0.25)["lm_head"] == head
    assert flops_per_token(encoder, 10, mask_prob=0.25)["lm_head"] == head // 4
    # the default is train.mask_prob's
    assert flops_per_token(encoder, 10)["lm_head"] == int(head * TrainConfig().mask_prob)
    flops = flops_per_token(encoder, 10, mask_prob=0.25)
    assert flops["core"] == flops_per_token(encoder, 10, mask_prob=0.5)["core"]
    assert flops["total"] == flops["core"] + flops["memory"] + flops["lm_head"]


def test_a_masked_lm_run_records_its_head_at_train_mask_prob(tiny_config, tmp_path):
    out = tmp_path / "run"
    assert main(["train", str(tiny_config), "--out", str(out), "--quiet",
                 "--set", "model.causal=false", "--set", "train.mask_prob=0.3",
                 "--set", "train.steps=1", "--set", "train.eval_every=0",
                 "--set", "train.checkpoint_every=0"]) == 0
    accounting = json.loads((out / "accounting.json").read_text())["flops_per_token"]
    results = json.loads((out / "results.json").read_text())
    model = load_trained(out).model
    assert accounting["lm_head"] == int(2 * 32 * model.cfg.vocab_size * 0.3)
    assert accounting == flops_per_token(model, 16, mask_prob=0.3)
    assert results["flops_per_token"] == accounting  # results.json carries the same figures
