import torch

from extmem.memory import Memory, MemoryConfig, ProductKeyConfig, ValueTable


def tiny_memory(**kwargs) -> Memory:
    pk = ProductKeyConfig(n_keys=6, topk=3, heads=2, key_dim=8)
    return Memory(MemoryConfig(product_keys=pk, **kwargs), d_model=16)


def test_table_read_equals_loop():
    torch.manual_seed(0)
    table = ValueTable(30, 5)
    indices = torch.randint(0, 30, (2, 3, 2, 4))
    weights = torch.rand(2, 3, 2, 4)
    out = table.read(indices, weights)
    ref = torch.zeros(2, 3, 5)
    for b in range(2):
        for t in range(3):
            for h in range(2):
                for j in range(4):
                    ref[b, t] += weights[b, t, h, j] * table.weight[indices[b, t, h, j]]
    torch.testing.assert_close(out, ref)


def test_memory_output_shape_and_projection():
    memory = tiny_memory(value_dim=10)
    assert memory.readout.out_proj is not None  # d_v != d needs a projection
    out = memory(torch.randn(3, 4, 16))
    assert out.shape == (3, 4, 16)
    assert tiny_memory().readout.out_proj is None  # d_v == d: rows added directly


def test_zero_init_output_is_zero_but_trainable():
    memory = tiny_memory(zero_init_output=True)
    h = torch.randn(2, 3, 16)
    out = memory(h)
    assert torch.count_nonzero(out) == 0
    out.sum().backward()
    assert memory.readout.out_proj.weight.grad.abs().sum() > 0


def test_usage_counters_record_on_device_in_training_only():
    memory = tiny_memory()
    h = torch.randn(2, 3, 16)
    memory.usage.step.fill_(7)
    memory(h)
    counts = memory.usage.counts
    assert int(counts.sum()) == 2 * 3 * 2 * 3  # B * T * heads * topk reads
    assert set(memory.usage.last_step[counts > 0].tolist()) == {7}
    assert torch.all(memory.usage.last_step[counts == 0] == -1)
    torch.testing.assert_close(memory.usage.weight.sum(), torch.tensor(2 * 3 * 2.0))
    memory.eval()
    with memory.collect_usage() as collector:
        memory(h)
    assert int(memory.usage.counts.sum()) == 36  # unchanged in eval
    assert int(collector.counts.sum()) == 36
    assert memory._collectors == []


def test_padding_positions_are_not_counted():
    memory = tiny_memory()
    padding = torch.tensor([[False, False, True]])
    memory(torch.randn(1, 3, 16), padding_mask=padding)
    assert int(memory.usage.counts.sum()) == 2 * 2 * 3
