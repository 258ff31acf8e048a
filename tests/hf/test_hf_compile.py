"""torch.compile of an exported model: no graph break comes from extmem's code (product keys,
token / n-gram lookups, the padding mask), and the compiled forward (and backward) equals the
eager one. backend="eager": dynamo's tracing only, a few seconds."""

import pytest

pytest.importorskip("transformers",
                    reason='the hf extra is not installed: pip install -c constraints.txt -e ".[hf]"')

from pathlib import Path

import torch
import torch._dynamo
from tests.hf.test_hf_export import MEMORIES, make_run
from transformers import AutoModelForCausalLM

import extmem
from extmem import MemoryConfig, ProductKeyConfig
from extmem.cli import main
from extmem.hf import add_memory

SRC = str(Path(extmem.__file__).resolve().parent)
TOKEN_MEMORIES = [{"layers": [0], "lookup": "token"},
                  {"layers": [1], "lookup": "ngram", "ngram": {"orders": [2, 3], "heads": 2,
                                                               "rows": 64}}]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module", params=["product_keys", "token"])
def exported(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    make_run(root / "run", memories=MEMORIES if request.param == "product_keys"
             else TOKEN_MEMORIES)
    assert main(["export", str(root / "run"), "--out", str(root / "hf")]) == 0
    return AutoModelForCausalLM.from_pretrained(root / "hf").eval()


def extmem_breaks(explained) -> list[str]:
    """The graph breaks whose stack passes through a file of the extmem package."""
    return [f"{frame.filename}:{frame.lineno} {reason.reason.splitlines()[0]}"
            for reason in explained.break_reasons for frame in reason.user_stack
            if str(Path(frame.filename).resolve()).startswith(SRC)]


def test_no_graph_breaks_from_extmem(exported):
    ids = torch.randint(3, 300, (2, 12))
    mask = torch.ones_like(ids)
    for kwargs in ({}, {"attention_mask": mask}):
        torch._dynamo.reset()
        explained = torch._dynamo.explain(exported)(ids, **kwargs)  # grad on: backward traced
        assert extmem_breaks(explained) == []
        assert explained.graph_break_count == 0  # transformers' own code adds none either


def test_fullgraph_compile_equals_eager(exported):
    ids = torch.randint(3, 300, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding: the padding mask is traced, not tested in Python
    torch._dynamo.reset()
    compiled = torch.compile(exported, backend="eager", fullgraph=True)
    # no mask; no padding (compiled: an all-False padding mask, eager: none); left padding
    for kwargs in ({}, {"attention_mask": torch.ones_like(ids)}, {"attention_mask": mask}):
        with torch.no_grad():
            torch.testing.assert_close(compiled(ids, **kwargs).logits,
                                       exported(ids, **kwargs).logits)
    # the backward too (under compile the sub-key gradient takes the static-shape path)
    grads = []
    for model in (compiled, exported):
        exported.zero_grad()
        model(ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in exported.named_parameters()
                      if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)


def test_gpt2_with_add_memory_traces_its_attention_mask_without_graph_breaks():
    """A Hugging Face GPT-2 with `add_memory`: the memories' padding comes from the attention
    mask, kept as a tensor while compiling (no `padding.any()` test), and the compiled forward
    equals the eager one with and without left padding."""
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=2,
                                       n_head=2)).eval()
    add_memory(model, MemoryConfig(product_keys=ProductKeyConfig(n_keys=4, heads=2, topk=2,
                                                                 key_dim=8)), layers=[1])
    ids = torch.randint(0, 64, (2, 8))
    padded = torch.ones_like(ids)
    padded[1, :3] = 0  # left padding
    for mask in (torch.ones_like(ids), padded):
        torch._dynamo.reset()
        with torch.no_grad():
            explained = torch._dynamo.explain(model)(ids, attention_mask=mask)
        assert extmem_breaks(explained) == []
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager")
    with torch.no_grad():
        for mask in (torch.ones_like(ids), padded):
            torch.testing.assert_close(compiled(ids, attention_mask=mask).logits,
                                       model(ids, attention_mask=mask).logits)
