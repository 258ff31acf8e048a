import math

import pytest

from extmem import MemoryConfig, ModelConfig, ProductKeyConfig, Transformer
from extmem.errors import ConfigError
from extmem.train import ParamGroupConfig, TrainConfig
from extmem.train.optim import assign_groups, build_optimizer, lr_factor


def model() -> Transformer:
    pk = ProductKeyConfig(n_keys=6, topk=3, heads=2, key_dim=8)
    return Transformer(ModelConfig(vocab_size=40, d_model=16, n_layers=2, n_heads=2,
                                   memories=[MemoryConfig(layers=[1], product_keys=pk)]))


def test_every_parameter_lands_in_exactly_one_group():
    m = model()
    groups = assign_groups(m, TrainConfig())
    names = [name for members in groups.values() for name, _ in members]
    assert len(names) == len(set(names)) == len(list(m.named_parameters()))
    assert [n for n, _ in groups["memory_values"]] == ["blocks.1.memories.0.table.weight"]
    assert all("norm" in n or n.endswith((".bias", "sub_keys")) for n, _ in groups["no_decay"])


def test_group_settings_reach_the_optimizer():
    cfg = TrainConfig(lr=1e-3, weight_decay=0.2, param_groups=[
        ParamGroupConfig("values", ["*.table.weight"], lr=5e-2, weight_decay=0.0)])
    optimizer, table = build_optimizer(model(), cfg)
    by_name = {g["name"]: g for g in optimizer.param_groups}
    assert by_name["values"]["lr"] == 5e-2 and by_name["values"]["weight_decay"] == 0.0
    assert by_name["default"]["lr"] == 1e-3 and by_name["default"]["weight_decay"] == 0.2
    assert sum(row["params"] for row in table) == sum(p.numel() for p in model().parameters())


def test_warmup_then_cosine():
    cfg = TrainConfig(steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(10, cfg) == pytest.approx(1.0)
    assert lr_factor(60, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(110, cfg) == pytest.approx(0.1)


def test_reserved_and_duplicate_group_names():
    with pytest.raises(ConfigError, match="duplicate"):
        TrainConfig(param_groups=[ParamGroupConfig("a", ["x"]), ParamGroupConfig("a", ["y"])])
    with pytest.raises(ConfigError, match="reserved"):
        TrainConfig(param_groups=[ParamGroupConfig("default", ["x"])])


def test_a_constant_group_skips_the_schedule():
    from extmem.train.optim import set_lr
    cfg = TrainConfig(lr=1e-3, steps=100, warmup_steps=10, param_groups=[
        ParamGroupConfig("values", ["*.table.weight"], lr=5e-2, schedule="constant"),
        ParamGroupConfig("keys", ["*.sub_keys"], lr=2e-3)])
    optimizer, table = build_optimizer(model(), cfg)
    assert {row["group"]: row["schedule"] for row in table} == {
        "values": "constant", "keys": "shared", "default": "shared"}
    for step in (0, 5, 50, 99):
        factor = lr_factor(step, cfg)
        set_lr(optimizer, factor)
        by_name = {g["name"]: g["lr"] for g in optimizer.param_groups}
        assert by_name["values"] == 5e-2  # its own lr, no warmup or cosine
        assert by_name["keys"] == pytest.approx(2e-3 * factor)
        assert by_name["default"] == pytest.approx(1e-3 * factor)
    with pytest.raises(ConfigError, match=r"train.param_groups\[v\].schedule: 'cosine'"):
        ParamGroupConfig("v", ["x"], schedule="cosine")


def test_adamw_runs_fused_and_matches_the_for_loop_update():
    """On CPU (torch >= 2.4) AdamW takes torch's fused kernel: the same update as the for-loop
    implementation, to float32 rounding, over steps with per-group lr and weight decay."""
    import torch

    from extmem.train.optim import adamw

    def trained(fused: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(64, 8)), torch.nn.Parameter(torch.randn(8))]
        groups = [{"params": params[:1], "lr": 1e-2, "weight_decay": 0.0},
                  {"params": params[1:], "lr": 3e-3, "weight_decay": 0.1}]
        optimizer = (adamw(groups, (0.9, 0.95)) if fused
                     else torch.optim.AdamW(groups, betas=(0.9, 0.95)))
        assert all(bool(g["fused"]) is fused for g in optimizer.param_groups)
        generator = torch.Generator().manual_seed(1)
        for _ in range(50):
            for p in params:
                p.grad = torch.randn(p.shape, generator=generator)
            optimizer.step()
        return [p.detach() for p in params]

    for fast, reference in zip(trained(True), trained(False), strict=True):
        torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-6)
    optimizer, _ = build_optimizer(model(), TrainConfig())
    assert all(g["fused"] for g in optimizer.param_groups)
