"""A Hugging Face model saved after extmem.hf.add_memory never loads without its memories
unnoticed: config.json says `model_type = "extmem_augmented"`, so load_with_memory and (after
`import extmem`) the Auto classes rebuild the memories, transformers alone refuses the model
type, and the plain architecture class warns (naming the fix once extmem is imported)."""

import json
import logging
import os
import pickle
import subprocess
import sys
from contextlib import contextmanager

import pytest

pytest.importorskip("transformers",
                    reason='the hf extra is not installed: pip install -c constraints.txt -e ".[hf]"')

import torch
from tests.hf.test_hf_add_memory import BUILDERS, PKM, VOCAB, build
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    GPT2LMHeadModel,
)

from extmem.hf import add_memory, load_with_memory
from extmem.hf.configuration import ExtmemAugmentedConfig
from extmem.memory.module import Memory


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def saved(arch: str, path):
    """A model with a trained-looking (non-zero) memory, saved; returns it in eval mode."""
    model = build(arch)
    (memory,) = add_memory(model, PKM, layers=[1])
    torch.nn.init.normal_(memory.readout.out_proj.weight)
    model.save_pretrained(path)
    return model


@contextmanager
def transformers_warnings():
    """The messages transformers logs while the block runs."""
    records: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def test_config_json_routes_through_extmem(tmp_path):
    model = saved("gpt2", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "extmem_augmented"
    assert config["extmem_base_model_type"] == "gpt2"
    assert config["architectures"] == ["GPT2LMHeadModel"]
    assert config["n_embd"] == 32 and config["extmem_memories"][0]["layers"] == [1]
    assert "extmem.hf.load_with_memory(DIR, GPT2LMHeadModel)" in config["extmem_load"]
    # in memory the config is still the base model's (generate and PEFT read its model type)
    assert model.config.model_type == "gpt2" and model.config.to_dict()["model_type"] == "gpt2"
    assert isinstance(AutoConfig.from_pretrained(tmp_path), ExtmemAugmentedConfig)


def test_three_ways_to_load_gpt2(tmp_path):
    model = saved("gpt2", tmp_path)
    ids = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        expected = model(ids).logits
    for loaded in (load_with_memory(tmp_path, GPT2LMHeadModel),
                   AutoModelForCausalLM.from_pretrained(tmp_path)):  # extmem is imported here
        assert type(loaded) is GPT2LMHeadModel and count(loaded) == count(model)
        with torch.no_grad():
            assert torch.equal(loaded.eval()(ids).logits, expected)
    with transformers_warnings() as messages:
        plain = GPT2LMHeadModel.from_pretrained(tmp_path)
    assert count(plain) < count(model)
    assert not any(isinstance(m, Memory) for m in plain.modules())
    warning = next(m for m in messages if "model of type `extmem_augmented`" in m)
    assert "extmem.hf.load_with_memory(DIR, <this class>)" in warning


def test_without_extmem_auto_refuses_and_the_plain_class_warns(tmp_path):
    """A fresh interpreter that never imports extmem: nothing of ours runs, so transformers'
    own messages name the model type `extmem_augmented`."""
    model = saved("gpt2", tmp_path)
    code = ("import sys, transformers\n"
            "try:\n"
            f"    transformers.AutoModelForCausalLM.from_pretrained({str(tmp_path)!r})\n"
            "except ValueError as exc:\n"
            "    print('auto:', exc)\n"
            f"plain = transformers.GPT2LMHeadModel.from_pretrained({str(tmp_path)!r})\n"
            "print('plain parameters:', sum(p.numel() for p in plain.parameters()))\n"
            "print('extmem imported:', 'extmem' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=True)
    assert "auto: The checkpoint you are trying to load has model type `extmem_augmented`" \
        in done.stdout
    assert "You are using a model of type `extmem_augmented` to instantiate a model of type " \
           "`gpt2`" in done.stderr
    assert "mlp.memories.0.table.weight" in done.stderr and "UNEXPECTED" in done.stderr
    plain = count(model) - sum(p.numel() for m in model.modules() if isinstance(m, Memory)
                               for p in m.parameters())
    assert f"plain parameters: {plain}\n" in done.stdout
    assert "extmem imported: False" in done.stdout


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_auto_classes_rebuild_the_memories(arch, tmp_path):
    model = saved(arch, tmp_path)
    loaded = BUILDERS[arch][1].from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model) and count(loaded) == count(model)
    ids = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_sequence_classification_and_resave(tmp_path):
    model = saved("gpt2", tmp_path / "a")
    clf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "a", num_labels=3)
    assert clf.config.num_labels == 3 and clf.config.model_type == "gpt2"
    memory = next(m for m in clf.modules() if isinstance(m, Memory))
    assert torch.equal(memory.table.weight, next(
        m for m in model.modules() if isinstance(m, Memory)).table.weight)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    loaded.save_pretrained(tmp_path / "b")  # a loaded model saves the same way again
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "b")
    assert count(again) == count(model) and again.config.extmem_memories == \
        model.config.extmem_memories


def test_older_saves_still_load(tmp_path):
    """Before `extmem_augmented`, config.json kept the base model type beside extmem_memories."""
    model = saved("gpt2", tmp_path)
    path = tmp_path / "config.json"
    config = json.loads(path.read_text())
    config["model_type"] = config.pop("extmem_base_model_type")
    del config["extmem_load"], config["extmem_version"]
    path.write_text(json.dumps(config))
    loaded = load_with_memory(tmp_path, AutoModelForCausalLM)
    assert count(loaded) == count(model)


def test_config_pickles_and_from_config_builds_memories(tmp_path):
    model = saved("gpt2", tmp_path)
    copy = pickle.loads(pickle.dumps(model.config))
    assert type(copy) is type(model.config) and copy.extmem_memories == \
        model.config.extmem_memories
    fresh = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tmp_path))
    assert type(fresh) is GPT2LMHeadModel and count(fresh) == count(model)
