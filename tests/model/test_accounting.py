from extmem import MemoryConfig, ModelConfig, ProductKeyConfig, Transformer
from extmem.model import flops_per_token, parameter_counts


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
