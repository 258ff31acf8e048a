"""extmem.model.resources: the memory a model's tables need, from its config alone, equals what a
built model holds (tables, usage counters, a training step's gradients and optimizer state);
too much is refused up front with one line (`extmem train`, `augment`, `add_memory`), and
`--force` skips the check."""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch
import torch.nn.functional as F
from tests.cli_helpers import error_line

from extmem import MemoryConfig, ModelConfig, Transformer
from extmem.cli import main
from extmem.errors import ConfigError
from extmem.memory import (
    EngramConfig,
    ExpertsConfig,
    LshLookupConfig,
    NgramLookupConfig,
    ProductKeyConfig,
    RouterLookupConfig,
    TokenLookupConfig,
)
from extmem.memory.config import LOOKUPS, READOUTS
from extmem.memory.module import build_lookup, build_readout, row_width
from extmem.memory.table import ValueTable
from extmem.model import parameter_counts, resources
from extmem.model.resources import (
    LOOKUP_PARAMETERS,
    READOUT_PARAMETERS,
    available_ram_bytes,
    check_table_memory,
    dense_parameters,
    memory_need,
    table_needs,
    table_parameter,
)
from extmem.run.config import ParamGroupConfig, TrainConfig, matching_group
from extmem.train.optim import build_optimizer

VOCAB = 40
PK = ProductKeyConfig(n_keys=6, topk=3, heads=2, key_dim=8)


def mem(lookup: str = "product_keys", **kwargs) -> MemoryConfig:
    return MemoryConfig(**{"layers": [1], "lookup": lookup, "product_keys": PK,
                           "token": TokenLookupConfig(),
                           "ngram": NgramLookupConfig(orders=[2, 3], heads=2, rows=97),
                           "lsh": LshLookupConfig(bits=3, heads=2),
                           "router": RouterLookupConfig(entries=8, topk=2),
                           "experts": ExpertsConfig(hidden=4), **kwargs})


# several memories per model: every lookup, the row widths, dtypes, sharing and storages
MODELS = {
    "lookups": [mem(lookup, layers=[i % 3]) for i, lookup in
                enumerate(["product_keys", "token", "ngram", "lsh", "router"])]
    + [mem("token", token=TokenLookupConfig(rows=11))],
    "widths_and_dtypes": [mem(value_dim=24), mem(readout="experts", layers=[0]),
                          mem(table_dtype="bfloat16", layers=[0, 2])],
    "shared_and_host": [mem(share_table=True, layers=[0, 1, 2]),
                        mem("lsh", table_storage="host", layers=[2])],
    # every readout's parameters, and the product-key query norms
    "readouts": [mem(readout="gated", value_dim=8), mem("router", readout="memory_plus"),
                 mem(readout="concat", value_dim=8, layers=[0]),
                 mem(readout="add", zero_init_output=True, layers=[2]),
                 # shared: separate engram tables take larger primes at later layers
                 mem("engram", readout="engram", engram=EngramConfig(rows_per_head=11),
                     share_table=True, layers=[0, 2]),
                 mem(readout="engram", value_dim=8, share_table=True, layers=[0, 1],
                     engram=EngramConfig(gate=False, conv=False, combine="mean")),
                 # unshared: each layer's tables take the next primes, a few rows more
                 mem("engram", readout="engram", engram=EngramConfig(rows_per_head=11),
                     layers=[0, 1, 2])],
    "query_norms": [mem(product_keys=dataclasses.replace(PK, query_norm=norm), layers=[i])
                    for i, norm in enumerate(["none", "batchnorm", "layernorm_per_head"])],
}


def model_config(memories: list[MemoryConfig]) -> ModelConfig:
    return ModelConfig(vocab_size=VOCAB, d_model=16, n_layers=3, n_heads=2, max_seq_len=16,
                       memories=memories)


def unique_tables(model: Transformer) -> list[torch.Tensor]:
    found = {id(m.weight): m.weight for m in model.modules() if isinstance(m, ValueTable)}
    return list(found.values())


def dense_memory_parameters(model: Transformer) -> list[torch.Tensor]:
    """The memories' parameters other than their tables: lookups and readouts."""
    tables = {id(t) for t in unique_tables(model)}
    return [p for _, m in model.memory_modules() for p in m.parameters() if id(p) not in tables]


@pytest.mark.parametrize("name", list(MODELS))
def test_rows_width_and_bytes_equal_the_built_model(name):
    cfg = model_config(MODELS[name])
    needs = table_needs(cfg)
    model = Transformer(cfg)
    tables = unique_tables(model)
    assert sum(n.table_bytes for n in needs) == sum(t.numel() * t.element_size() for t in tables)
    assert sum(n.total_rows * n.width for n in needs) == parameter_counts(model)["memory_tables"]
    counters = [b for _, m in model.memory_modules() for b in m.usage.buffers() if b.dim() == 1]
    assert sum(n.counter_bytes for n in needs) == sum(b.numel() * b.element_size() for b in counters)
    params = dict(model.named_parameters())
    for i, need in enumerate(needs):
        table = params[table_parameter(cfg, i)]  # named as training's parameter groups see it
        assert (need.rows, need.width, need.dtype) == (*table.shape, table.dtype)
        layers = cfg.memories[i].layers
        built = [model.blocks[layer].memories[[j for j, _ in cfg.memories_at(layer)].index(i)]
                 for layer in layers]
        assert all(m.table.weight is table or not cfg.memories[i].share_table for m in built)
        assert built[0].num_slots == need.rows
        own_tables = {id(m.table.weight): m.table.weight for m in built}
        assert need.total_rows == sum(t.shape[0] for t in own_tables.values())
        assert all(m.value_dim == need.width for m in built)
        # the lookups' and readouts' parameters at all its layers (a shared table shares
        # nothing else)
        dense = [p for m in built for p in [*m.lookup.parameters(), *m.readout.parameters()]]
        assert need.dense_bytes == sum(p.numel() * p.element_size() for p in dense)
    dense_bytes = sum(p.numel() * p.element_size() for p in dense_memory_parameters(model))
    assert sum(n.dense_bytes for n in needs) == dense_bytes > 0
    assert sum(n.dense_bytes for n in needs) == 4 * parameter_counts(model)["memory_other"]


def test_dense_parameter_formulas_cover_every_lookup_and_readout():
    assert tuple(LOOKUP_PARAMETERS) == LOOKUPS and tuple(READOUT_PARAMETERS) == READOUTS


@pytest.mark.parametrize("cfg", [
    mem("router", router=RouterLookupConfig(entries=1000, topk=2)),  # d x entries
    mem(product_keys=ProductKeyConfig(n_keys=300, topk=3, heads=3, key_dim=10)),
    mem("lsh", readout="experts"), mem("token", readout="concat", concat_into="altup"),
    mem("ngram", readout="add", value_dim=24),
    mem("engram", readout="engram", engram=EngramConfig(orders=[2], heads=3, conv_kernel=5,
                                                        rows_per_head=7)),
], ids=["router", "product_keys", "experts", "concat_into_altup", "add_projected", "engram"])
def test_dense_parameters_equal_the_built_lookup_and_readout(cfg):
    d = 16
    modules = [build_lookup(cfg, d, VOCAB, 0), build_readout(cfg, d, row_width(cfg, d))]
    assert dense_parameters(cfg, d) == sum(p.numel() for m in modules for p in m.parameters())


def state_bytes(optimizer, table: torch.Tensor) -> int:
    state = optimizer.state.get(table) or {}
    return sum(v.numel() * v.element_size() for k, v in state.items()
               if torch.is_tensor(v) and k != "step")


@pytest.mark.parametrize("optimizer, sparse, dtype", [
    ("adamw", False, "float32"), ("adamw", False, "bfloat16"), ("lazy_adam", True, "float32"),
    ("lazy_adam", True, "bfloat16"), ("rowwise_adagrad", True, "float32")])
def test_gradient_and_optimizer_state_equal_a_training_step(optimizer, sparse, dtype):
    cfg = model_config([mem(layers=[0, 2], sparse_updates=sparse, table_dtype=dtype)])
    train = TrainConfig(param_groups=[ParamGroupConfig("tables", ["*.table.weight"],
                                                       optimizer=optimizer)])
    (need,) = table_needs(cfg, lambda name: matching_group(name, train.param_groups).optimizer)
    assert need.optimizer == optimizer
    torch.manual_seed(0)
    model = Transformer(cfg)
    opt, _ = build_optimizer(model, train)
    ids = torch.randint(0, VOCAB, (2, 9))
    F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten()).backward()
    tables = unique_tables(model)
    grads = sum(t.grad.numel() * t.grad.element_size() for t in tables)
    assert need.gradient_bytes == (0 if sparse else grads)
    dense = dense_memory_parameters(model)
    dense_grads = sum(p.grad.numel() * p.grad.element_size() for p in dense)
    opt.step()
    assert need.optimizer_bytes == sum(state_bytes(opt, t) for t in tables)
    # the lookup's query network and sub-keys: a gradient and two AdamW moments each
    assert need.dense_training_bytes == dense_grads + sum(state_bytes(opt, p) for p in dense)
    assert need.dense_training_bytes == 3 * need.dense_bytes > 0


def test_a_model_that_is_not_trained_needs_its_tables_parameters_and_counters_only():
    (need,) = table_needs(model_config([mem()]))
    assert need.optimizer is None and need.optimizer_bytes == need.gradient_bytes == 0
    assert need.dense_training_bytes == 0
    assert need.held("RAM", accelerator=False) == {
        "table": need.table_bytes, "lookup / readout parameters": need.dense_bytes,
        "usage counters": need.counter_bytes}


def test_a_frozen_table_still_has_trained_lookups():
    (need,) = table_needs(model_config([mem(freeze_table=True)]), lambda name: "adamw")
    assert need.optimizer is None and need.optimizer_bytes == need.gradient_bytes == 0
    assert need.dense_training_bytes == 3 * need.dense_bytes > 0


def test_mmap_tables_count_as_file_bytes_not_ram():
    need = memory_need(mem(table_storage="mmap"), 16, VOCAB, "m", optimizer="lazy_adam")
    assert need.file_bytes == need.table_bytes > 0
    assert need.held("RAM", accelerator=False) == {
        "lazy_adam state": need.optimizer_bytes, "gradient": need.gradient_bytes,
        "lookup / readout parameters": need.dense_bytes,
        "their gradient and moments": need.dense_training_bytes,
        "usage counters": need.counter_bytes}


def test_on_an_accelerator_device_tables_are_checked_against_its_memory():
    device = memory_need(mem(), 16, VOCAB, "d", optimizer="adamw")
    host = memory_need(mem(table_storage="host"), 16, VOCAB, "h", optimizer="adamw")
    dense = {"lookup / readout parameters": device.dense_bytes,
             "their gradient and moments": device.dense_training_bytes}
    assert device.held("device", True) == {"table": device.table_bytes,
                                           "adamw state": device.optimizer_bytes,
                                           "gradient": device.gradient_bytes, **dense,
                                           "usage counters": device.counter_bytes}
    assert device.held("RAM", True) == {"table": device.table_bytes,  # built in RAM first
                                        "lookup / readout parameters": device.dense_bytes,
                                        "usage counters": device.counter_bytes}
    # a host table stays in RAM; its lookup and readout move with the model
    assert host.held("device", True) == {**dense, "usage counters": host.counter_bytes}
    assert sum(host.held("RAM", True).values()) == (host.table_bytes + host.optimizer_bytes
                                                    + host.gradient_bytes + host.dense_bytes
                                                    + host.counter_bytes)


def test_available_ram_reads_meminfo_and_the_cgroup_limit(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  8000 kB\nMemFree:  100 kB\nMemAvailable:   2000 kB\n")
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    assert available_ram_bytes(meminfo, cgroup) == 2000 * 1024  # no cgroup files
    (cgroup / "memory.max").write_text("max\n")
    assert available_ram_bytes(meminfo, cgroup) == 2000 * 1024  # no limit
    (cgroup / "memory.max").write_text("1000000\n")
    (cgroup / "memory.current").write_text("400000\n")
    assert available_ram_bytes(meminfo, cgroup) == 600000  # the lower: the cgroup's headroom
    fallback = available_ram_bytes(tmp_path / "missing", tmp_path / "none")  # os.sysconf
    assert fallback is None or fallback > 0
    assert available_ram_bytes() is None or available_ram_bytes() > 0  # this machine


def test_refusal_is_one_line_with_the_numbers(monkeypatch):
    monkeypatch.setattr(resources, "available_ram_bytes", lambda: 3 << 30)
    big = mem(product_keys=ProductKeyConfig(n_keys=100_000), layers=[0, 1])
    filed = mem("lsh", table_storage="mmap", lsh=LshLookupConfig(bits=20, heads=4))
    needs = table_needs(model_config([big, filed]), lambda name: "adamw")
    check_table_memory(needs[1:], torch.device("cpu"))  # the mmap table fits
    with pytest.raises(ConfigError) as info:
        check_table_memory(needs, torch.device("cpu"))
    message = str(info.value)
    assert "\n" not in message
    total = sum(sum(n.held("RAM", False).values()) for n in needs)
    assert message.startswith(f"memory tables need {total / (1 << 30):,.2f} GiB of RAM (")
    # 2 tables x 10^10 rows x 16 x 4 bytes, twice that in AdamW moments, a gradient like the
    # tables, 2 counter sets x 10^10 rows x 20 bytes (5,140.90 GiB); 2 layers' sub-keys
    # (4 heads x 2 x 10^5 x 128) and query networks, 4 bytes each, with a gradient and two
    # moments (3.05 GiB)
    assert ("model.memories[0]: 5,143.95 GiB for table, adamw state, gradient, lookup / "
            "readout parameters, their gradient and moments and usage counters of 2 x "
            "10,000,000,000 rows x 16 float32") in message
    assert "model.memories[1]: " in message
    assert "3.00 GiB available; model.memories[1]'s table (0.25 GiB) is a file" in message
    assert "product_keys.n_keys" in message and message.endswith("or pass --force")


def test_train_refuses_a_table_too_big_quickly_and_writes_nothing(tiny_config, tmp_path, capsys):
    out = tmp_path / "run"
    started = time.perf_counter()
    line = error_line(capsys, "train", str(tiny_config), "--out", str(out),
                      "--set", "model.memories.0.product_keys.n_keys=1000000")
    assert time.perf_counter() - started < 60  # no allocation attempted
    assert line.startswith("error: memory tables need ")
    assert "GiB of RAM (model.memories[0]: " in line
    assert "1 x 1,000,000,000,000 rows x 32 float32" in line
    assert "GiB available; shrink the tables" in line and line.endswith("or pass --force")
    # nothing written (the run's lock file may be there: run/lock.py takes it first)
    assert not out.exists() or {p.name for p in out.iterdir()} <= {".lock"}


def test_force_skips_the_check(tiny_config, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(resources, "available_ram_bytes", lambda: 1)
    out = tmp_path / "run"
    args = ["train", str(tiny_config), "--out", str(out), "--quiet", "--set", "train.steps=1",
            "--set", "train.eval_every=0", "--set", "train.checkpoint_every=0"]
    assert "memory tables need" in error_line(capsys, *args)
    assert main([*args, "--force"]) == 0
    assert (out / "results.json").is_file()


def test_add_memory_refuses_a_table_too_big_and_leaves_the_model_alone():
    transformers = pytest.importorskip("transformers")
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=16, n_embd=16, n_layer=2, n_head=2))
    before = dict(model.state_dict())
    huge = dataclasses.replace(mem(), product_keys=ProductKeyConfig(n_keys=1_000_000))
    with pytest.raises(ConfigError, match=r"^memory tables need .* GiB of RAM .*pass force=True$"):
        from extmem.hf import add_memory
        add_memory(model, huge, layers=[1])
    assert dict(model.state_dict()).keys() == before.keys()
    assert not getattr(model.config, "extmem_memories", None)


def test_a_process_limit_counts_as_available_ram(tmp_path, monkeypatch):
    """`ulimit -v` / `prlimit --data`: the limit less the process's current size."""
    import resource
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmSize:\t  300000 kB\nVmData:\t  100000 kB\n")
    limits = {resource.RLIMIT_AS: (resource.RLIM_INFINITY, resource.RLIM_INFINITY),
              resource.RLIMIT_DATA: (500_000 * 1024, resource.RLIM_INFINITY)}
    monkeypatch.setattr(resource, "getrlimit", lambda which: limits.get(which, (-1, -1)))
    assert resources._rlimit_headroom(status) == 400_000 * 1024
    limits[resource.RLIMIT_AS] = (350_000 * 1024, resource.RLIM_INFINITY)
    assert resources._rlimit_headroom(status) == 50_000 * 1024  # the tighter of the two
    limits[resource.RLIMIT_AS] = limits[resource.RLIMIT_DATA] = (resource.RLIM_INFINITY,) * 2
    assert resources._rlimit_headroom(status) is None
    # under a real limit, a table that does not fit is refused in one line before the build
    monkeypatch.setattr(resources, "_rlimit_headroom", lambda: 1024)
    with pytest.raises(ConfigError, match="memory tables need"):
        check_table_memory([memory_need(mem(), 64, 100, "model.memories[0]")],
                           torch.device("cpu"))
