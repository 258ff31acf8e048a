"""`extmem augment HF_DIR` and the tool chain on a run that starts from a Hugging Face checkpoint
(tiny random BERT and GPT-2 written to temporary directories; no hub, no real weights)."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from extmem.cli import main
from extmem.config import read_toml
from extmem.decode_cache import DecodeCache
from extmem.model import flops_per_token, parameter_counts
from extmem.run.session import load_trained
from tests.cli_helpers import error_line, run_json
from tests.pretrained.hf_dirs import write_bert, write_gpt2

pytest.importorskip("transformers")

QUICK = ["--set", "train.eval_every=0", "--set", "train.eval_tokens=2048"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {"bert": write_bert(root / "bert"), "gpt2": write_gpt2(root / "gpt2")}


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_parallel_ffn_with_zero_output_keeps_the_pretrained_loss(sources, tmp_path, capsys,
                                                                  family):
    out = tmp_path / "run"
    report = run_json(capsys, "augment", str(sources[family]), "--layers", "1",
                      "--placement", "parallel_ffn", "--out", str(out), *QUICK)
    assert abs(report["val_loss_augmented"] - report["val_loss_dense"]) <= 1e-6
    assert report["max_abs_logit_diff"] <= 1e-6
    assert report["new_params"] > 0 and report["dropped_tensors"] == []
    cfg = read_toml(out / "config.toml")
    assert cfg["model"]["pretrained"] == str(sources[family].resolve())
    assert cfg["model"]["causal"] is (family == "gpt2")
    assert cfg["model"]["d_model"] == 32 and cfg["model"]["n_layers"] == 2
    assert cfg["model"]["memories"][0]["zero_init_output"] is True
    # the run keeps the checkpoint's config and tokenizer, never its weights
    assert sorted(p.name for p in (out / "pretrained").iterdir()) == ["config.json",
                                                                     "tokenizer.json"]
    assert (out / "tokenizer.json").read_bytes() == \
        (sources[family] / "tokenizer.json").read_bytes()
    if family == "bert":  # saved as BertModel: no MLM head, so one is created and said so
        assert "cls.predictions.transform.dense.weight" in report["created_head"]
        assert "no MLM head" in report["note"]
    else:  # GPT-2's LM head is tied to its embeddings: nothing to create
        assert report["created_head"] == [] and report["note"] is None


def test_tool_chain_runs_without_the_source_directory(sources, tmp_path, capsys):
    """augment -> train --resume -> eval -> usage -> finetune -> export, with the source
    checkpoint deleted after augment: the run directory is complete on its own."""
    source = shutil.copytree(sources["bert"], tmp_path / "bert-copy")
    run = tmp_path / "run"
    assert main(["augment", str(source), "--layers", "0,1", "--out", str(run), *QUICK]) == 0
    out = capsys.readouterr().out
    assert "note: the checkpoint has no MLM head" in out
    shutil.rmtree(source)

    trained = run_json(capsys, "train", "--resume", "--out", str(run), "--quiet",
                       "--set", "train.steps=3", *QUICK)
    assert trained["steps"] == 3 and len(trained["memory_usage"]) == 2
    evaluated = run_json(capsys, "eval", str(run))
    assert evaluated["val_loss"] == pytest.approx(trained["val_loss"], abs=1e-6)
    usage = run_json(capsys, "usage", str(run), "--no-plots")
    assert len(usage["memories"]) == 2
    finetuned = run_json(capsys, "finetune", str(run), "--task", "facts-attribute", "--quiet",
                         "--set", "steps=2")
    assert 0.0 <= finetuned["accuracy"] <= 1.0

    exported = run_json(capsys, "export", str(run), "--format", "hf", "--out",
                        str(tmp_path / "export"))
    assert exported["architecture"] == "BertForMaskedLM"
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    import extmem  # noqa: F401 - registers extmem_augmented with the Auto classes
    loaded = AutoModelForMaskedLM.from_pretrained(str(tmp_path / "export")).eval()
    ours = load_trained(run).model.eval()
    ids = torch.randint(5, 60, (2, 12))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, ours(ids))
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "export"))
    assert tokenizer("abc")["input_ids"] == ours_ids(run, "abc")


def ours_ids(run, text):
    from tokenizers import Tokenizer
    return Tokenizer.from_file(str(run / "tokenizer.json")).encode(text).ids


def test_replace_ffn_drops_the_bert_feed_forward(sources, tmp_path, capsys):
    report = run_json(capsys, "augment", str(sources["bert"]), "--layers", "1",
                      "--placement", "replace_ffn", "--out", str(tmp_path / "run"), *QUICK)
    assert "bert.encoder.layer.1.intermediate.dense.weight" in \
        [name.removeprefix("hf.") for name in report["dropped_tensors"]]
    saved = load_file(str(tmp_path / "run" / "checkpoints" / "step-0" / "model.safetensors"))
    assert not any(".layer.1.intermediate." in name for name in saved)
    assert "hf.bert.encoder.layer.0.intermediate.dense.weight" in saved
    assert report["val_loss_augmented"] != report["val_loss_dense"]


def test_no_memory_is_the_continued_pretraining_control(sources, tmp_path, capsys):
    run = tmp_path / "control"
    report = run_json(capsys, "augment", str(sources["gpt2"]), "--no-memory", "--out", str(run),
                      *QUICK)
    assert report["memories"] == [] and report["new_params"] == 0
    assert report["val_loss_augmented"] == report["val_loss_dense"]
    trained = run_json(capsys, "train", "--resume", "--out", str(run), "--quiet",
                       "--set", "train.steps=2", *QUICK)
    assert trained["steps"] == 2
    assert error_line(capsys, "augment", str(sources["gpt2"]), "--no-memory", "--layers", "1",
                      "--out", str(tmp_path / "x")).startswith("error: augment: --no-memory")


def test_random_init_is_the_scratch_arm(sources, tmp_path, capsys):
    run = tmp_path / "scratch"
    run_json(capsys, "augment", str(sources["bert"]), "--layers", "1", "--out", str(run),
             "--set", 'model.pretrained_init="random"', *QUICK)
    pretrained = load_file(str(sources["bert"] / "model.safetensors"))
    saved = load_file(str(run / "checkpoints" / "step-0" / "model.safetensors"))
    name = "embeddings.word_embeddings.weight"
    assert saved[f"hf.bert.{name}"].shape == pretrained[name].shape
    assert not torch.equal(saved[f"hf.bert.{name}"], pretrained[name])


def test_cached_decoding_equals_the_full_forward(sources, tmp_path, capsys):
    run, memory = tmp_path / "run", tmp_path / "ngram.toml"
    memory.write_text('lookup = "ngram"\n')  # reads earlier tokens: the cache must carry them
    run_json(capsys, "augment", str(sources["gpt2"]), "--layers", "0", "--memory", str(memory),
             "--out", str(run), *QUICK)
    model = load_trained(run).model.eval()
    ids = torch.randint(1, 250, (1, 10))
    with torch.no_grad():
        full = model(ids)  # (1, 10, V)
        cache = DecodeCache()
        steps = [model(ids[:, :4], cache=cache)] + [model(ids[:, i:i + 1], cache=cache)
                                                    for i in range(4, 10)]
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)
    assert main(["generate", str(run), "--prompt", "the capital", "--max-new-tokens", "3",
                 "--temperature", "0"]) == 0


def test_accounting_names_the_embeddings_and_the_memory(sources, tmp_path, capsys):
    run = tmp_path / "run"
    run_json(capsys, "augment", str(sources["bert"]), "--layers", "1", "--out", str(run), *QUICK)
    model = load_trained(run).model
    counts = parameter_counts(model)
    hf = model.hf
    tables = [m.weight for m in hf.bert.embeddings.modules() if isinstance(m, torch.nn.Embedding)]
    embeddings = sum(w.numel() for w in tables) + \
        sum(p.numel() for n, p in hf.cls.named_parameters() if "decoder.weight" not in n)
    table = model.memory_modules()[0][1].table.weight.numel()
    assert counts["embeddings"] == embeddings  # the tied decoder counts once
    assert counts["memory_tables"] == table
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    flops = flops_per_token(model, 64)
    d, ff, layers = 32, 64, 2
    assert flops["core"] == layers * (8 * d * d + 4 * 64 * d + 4 * d * ff)
    assert flops["memory"] > 0 and flops["total"] == sum(
        flops[k] for k in ("core", "memory", "lm_head"))
    # BERT's MLM head (transform d x d, decoder d x V) runs at the masked positions only
    head = 2 * d * d + 2 * d * model.cfg.vocab_size
    assert flops["lm_head"] == int(head * 0.15)  # train.mask_prob's default
    assert flops_per_token(model, 64, mask_prob=0.5)["lm_head"] == head // 2


def test_bad_sources_and_mismatched_configs_are_one_line_errors(sources, tmp_path, capsys):
    t5 = tmp_path / "t5"
    t5.mkdir()
    (t5 / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 8,
                                                "num_layers": 1, "num_heads": 1,
                                                "vocab_size": 10}))
    line = error_line(capsys, "augment", str(t5), "--layers", "0", "--out", str(tmp_path / "a"))
    assert "model_type 't5' is not supported" in line or "lacks" in line
    config = tmp_path / "mine.toml"
    config.write_text(f'[model]\npretrained = "{sources["bert"]}"\ncausal = false\n'
                      'd_model = 64\nn_heads = 2\nn_layers = 2\n[data]\n[train]\nsteps = 1\n')
    line = error_line(capsys, "train", str(config), "--out", str(tmp_path / "b"))
    assert "model.d_model: 64 but the pretrained checkpoint" in line
    assert not (tmp_path / "b" / "config.toml").exists()


def test_finetuning_frames_texts_as_the_pretrained_tokenizer_does():
    """A BERT tokenizer's `[CLS] text [SEP]` is kept; extmem's BPE gets `EOS text`."""
    from extmem.finetune.run import encode
    from tests.pretrained.hf_dirs import bpe_tokenizer, wordpiece_tokenizer
    wordpiece = wordpiece_tokenizer()
    cls, sep = wordpiece.token_to_id("[CLS]"), wordpiece.token_to_id("[SEP]")
    ids = encode(wordpiece, ["ab c"], eos_id=sep, max_len=16)[0]
    assert ids[0] == cls and ids[-1] == sep and ids.count(sep) == 1
    bpe = bpe_tokenizer()
    eos = bpe.token_to_id("<|endoftext|>")
    ids = encode(bpe, ["the lake"], eos_id=eos, max_len=16)[0]
    assert ids == [eos, *bpe.encode("the lake").ids]
    assert encode(bpe, ["the lake"], eos_id=eos, max_len=2)[0] == ids[:2]


def test_a_run_config_can_name_the_checkpoint(sources, tmp_path, capsys):
    """`model.pretrained` + `data.tokenizer` in a train config: the pretrained weights at step
    0, the run keeps the checkpoint's config, and a resume needs no source directory."""
    source = shutil.copytree(sources["bert"], tmp_path / "bert")
    config = tmp_path / "mine.toml"
    config.write_text(f'[model]\npretrained = "{source}"\ncausal = false\nvocab_size = '
                      f'{json.loads((source / "config.json").read_text())["vocab_size"]}\n'
                      'd_model = 32\nn_heads = 2\nn_layers = 2\nd_ff = 64\nffn = "gelu"\n'
                      'max_seq_len = 128\n[data]\nseq_len = 32\n'
                      f'tokenizer = "{source}"\n[train]\nsteps = 2\neval_every = 0\n'
                      'eval_tokens = 2048\ncheckpoint_every = 1\nkeep_checkpoints = 0\n')
    run = tmp_path / "run"
    assert main(["train", str(config), "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    assert (run / "pretrained" / "config.json").is_file()
    assert not (run / "pretrained" / "model.safetensors").exists()
    pretrained = load_file(str(source / "model.safetensors"))
    shutil.rmtree(source)
    first = load_file(str(run / "checkpoints" / "step-1" / "model.safetensors"))
    name = "embeddings.position_embeddings.weight"  # trained, so only close to the source
    assert torch.allclose(first[f"hf.bert.{name}"], pretrained[name], atol=0.05)
    resumed = run_json(capsys, "train", "--resume", "--out", str(run), "--quiet",
                       "--set", "train.steps=3")
    assert resumed["steps"] == 3
