"""PEFT on a tiny GPT-2 with extmem.hf.add_memory: LoRA on attention plus the memories trained in
full (`modules_to_save`), run from the README's own code block; plain LoRA leaves the memories
frozen; a table shared by several layers is refused by memory_module_names."""

from pathlib import Path

import pytest

pytest.importorskip("transformers",
                    reason='the hf extra is not installed: pip install -c constraints.txt -e ".[hf]"')
pytest.importorskip("peft", reason='peft is not installed: pip install -c constraints.txt -e ".[hf]"')

import dataclasses

import torch
from peft import LoraConfig, get_peft_model
from tests.hf.test_hf_add_memory import PKM, VOCAB, build

from extmem.errors import ConfigError
from extmem.hf import add_memory, memory_module_names
from extmem.memory.module import Memory

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "### LoRA + trainable memory (PEFT)"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def readme_block() -> str:
    """The first python block of the README's PEFT section."""
    section = README.read_text(encoding="utf-8").split(SECTION, 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def steps(model, n: int = 2) -> set[str]:
    """n SGD steps on the trainable parameters; returns the names of the parameters changed.
    Two steps: LoRA's B and a zero-initialised memory output start at zero, so A and the
    table get a gradient from the second step on."""
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    ids = torch.randint(0, VOCAB, (4, 12), generator=torch.Generator().manual_seed(0))
    for _ in range(n):
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
    return {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}


def test_readme_lora_with_trainable_memory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = build("gpt2")
    add_memory(model, PKM, layers=[1])
    model.save_pretrained("gpt2-pkm")
    seen = {}

    def train(peft_model):  # the README's `train(model)`
        seen["trainable"] = {n for n, p in peft_model.named_parameters() if p.requires_grad}
        seen["changed"] = steps(peft_model)

    namespace = {"train": train}
    exec(compile(readme_block(), str(README), "exec"), namespace)  # the README block, as is
    trained, tuned = namespace["model"].eval(), namespace["tuned"].eval()

    memory = {n for n in seen["trainable"] if ".memories.0.modules_to_save.default." in n}
    lora = {n for n in seen["trainable"] if ".lora_" in n}
    assert memory and lora and seen["trainable"] == memory | lora  # the base is frozen
    assert seen["changed"] <= seen["trainable"]
    assert any(n.endswith("memories.0.modules_to_save.default.table.weight")
               for n in seen["changed"])
    assert any(".lora_A." in n for n in seen["changed"])
    assert any(".lora_B." in n for n in seen["changed"])
    # the adapter directory holds the trained memory: reloaded, the same logits
    ids = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        assert torch.equal(tuned(input_ids=ids).logits, trained(input_ids=ids).logits)
        with tuned.disable_adapter():  # without LoRA and the trained memory: the saved base
            assert not torch.equal(tuned(input_ids=ids).logits, trained(input_ids=ids).logits)


def test_plain_lora_leaves_the_memory_frozen():
    model = build("gpt2")
    (memory,) = add_memory(model, PKM, layers=[1])
    table = memory.table.weight.detach().clone()
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["c_attn"],
                                                  fan_in_fan_out=True))
    assert not any(p.requires_grad for p in memory.parameters())
    changed = steps(peft_model)
    assert changed and all(".lora_" in n for n in changed)
    assert torch.equal(memory.table.weight, table)


def test_the_memories_container_is_wrappable():
    """`modules_to_save=["memories"]`: the layer's MemoryList is copied and trained whole."""
    model = build("gpt2")
    add_memory(model, PKM, layers=[1])
    assert memory_module_names(model) == ["transformer.h.1.mlp.memories.0"]
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["c_attn"],
                                                  fan_in_fan_out=True,
                                                  modules_to_save=["memories"]))
    changed = steps(peft_model)
    assert "base_model.model.transformer.h.1.mlp.memories.modules_to_save.default.0.table.weight" \
        in changed


def test_a_shared_table_is_refused():
    model = build("gpt2")
    add_memory(model, dataclasses.replace(PKM, share_table=True), layers=[0, 1])
    assert len([m for m in model.modules() if isinstance(m, Memory)]) == 2
    with pytest.raises(ConfigError, match="shares its table"):
        memory_module_names(model)
