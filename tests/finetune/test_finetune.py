"""`extmem finetune`: tasks, metrics, modes, and beating the majority class on generated data."""

import hashlib
import json
import sys

import pytest
from tests.cli_helpers import error_line, run_json, train_tiny

from extmem.cli import main
from extmem.errors import DataError
from extmem.finetune import FinetuneConfig, load_task
from extmem.finetune.metrics import accuracy, macro_f1, majority_baseline
from extmem.finetune.tasks import facts_attribute
from extmem.finetune.wordnet import LEXNAMES, load_supersenses, parse_data_line

NOUN_LINE = ("02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 001 @ 02083346 n 0000 "
             "| a member of the genus Canis; \"the dog barked all night\"  \n")
VERB_LINE = "01835496 38 v 01 travel 0 000 01 + 02 00 | change location; move  \n"


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("finetune"), "train.steps=3", "train.eval_every=0")


def checkpoint_digest(run_dir) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in (run_dir / "checkpoints").rglob("*") if p.is_file()}


def test_metrics_hand_values():
    gold = [0, 0, 1, 2]
    predicted = [0, 1, 1, 1]
    assert accuracy(predicted, gold) == 0.5
    # class 0: P=1, R=1/2 -> 2/3; class 1: P=1/3, R=1 -> 1/2; class 2: 0
    assert macro_f1(predicted, gold) == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    baseline = majority_baseline([2, 2, 0], gold)
    assert baseline["majority_class"] == 2 and baseline["majority_accuracy"] == 0.25


def test_finetune_beats_the_majority_class(pretrained, capsys):
    before = checkpoint_digest(pretrained)
    result = run_json(capsys, "finetune", str(pretrained), "--task", "facts-attribute",
                      "--set", "steps=25", "--set", "batch_size=16", "--set", "facts_entities=8",
                      "--set", "lr=3e-3", "--set", "warmup_steps=3")
    assert result["n_classes"] == 8 and result["n_eval"] > 10
    assert result["accuracy"] > result["majority_accuracy"] + 0.1
    assert result["macro_f1"] > result["majority_macro_f1"]
    out = pretrained / "finetune" / "facts-attribute-full"
    assert result["out_dir"] == str(out)
    for name in ("config.toml", "metrics.jsonl", "results.json", "classifier.safetensors"):
        assert (out / name).is_file(), name
    assert checkpoint_digest(pretrained) == before  # the pretraining checkpoint is only read


@pytest.mark.parametrize("mode", ["frozen-base", "memory-only"])
def test_frozen_modes_train_fewer_parameters(pretrained, capsys, mode):
    args = ("finetune", str(pretrained), "--task", "facts-attribute", "--mode", mode,
            "--set", "steps=2", "--set", "facts_entities=4", "--set", "save_weights=false")
    result = run_json(capsys, *args)
    d_model, classes = 32, 8
    head = d_model * classes + classes
    if mode == "frozen-base":
        assert result["trainable_params"] == head
    else:
        assert head < result["trainable_params"]
    again = run_json(capsys, *args)  # a second run never overwrites the first
    assert again["out_dir"] == result["out_dir"] + "-2"
    assert again["accuracy"] == result["accuracy"]  # deterministic


def test_csv_and_jsonl_tasks(pretrained, tmp_path, capsys):
    texts, labels = facts_attribute(3)
    csv_path = tmp_path / "set.csv"
    csv_path.write_text("text,label\n" + "".join(f'"{t}",{y}\n' for t, y in zip(texts, labels, strict=True)))
    jsonl_path = tmp_path / "set.jsonl"
    jsonl_path.write_text("".join(json.dumps({"sentence": t, "y": y}) + "\n"
                                  for t, y in zip(texts, labels, strict=True)))
    cfg = FinetuneConfig(eval_fraction=0.2)
    from_csv = load_task(str(csv_path), cfg)
    assert from_csv.classes == sorted(set(labels))
    assert len(from_csv.train_texts) + len(from_csv.eval_texts) == len(texts)
    from_jsonl = load_task(str(jsonl_path), FinetuneConfig(eval_fraction=0.2, text_field="sentence",
                                                           label_field="y"))
    assert from_jsonl.eval_texts == from_csv.eval_texts  # the split is a hash of the text
    result = run_json(capsys, "finetune", str(pretrained), "--task", str(csv_path),
                      "--set", "steps=2", "--set", "save_weights=false")
    assert result["out_dir"].endswith("set-full")
    assert "no 'text' field" in error_line(capsys, "finetune", str(pretrained), "--task",
                                           str(jsonl_path))
    assert "does not exist" in error_line(capsys, "finetune", str(pretrained), "--task",
                                          str(tmp_path / "missing.csv"))


def test_wordnet_supersense_parsing(tmp_path):
    assert len(LEXNAMES) == 45 and LEXNAMES[5] == "noun.animal" and LEXNAMES[44] == "adj.ppl"
    assert parse_data_line("  1 This software and database is being provided\n") is None
    assert parse_data_line(VERB_LINE) == ("change location; move", "verb.motion")
    (tmp_path / "data.noun").write_text("  1 license header\n" + NOUN_LINE * 3)
    (tmp_path / "data.verb").write_text(VERB_LINE)
    (tmp_path / "data.adj").write_text("")
    (tmp_path / "data.adv").write_text("")
    texts, labels = load_supersenses(tmp_path)
    assert labels == ["noun.animal"] * 3 + ["verb.motion"]
    assert texts[0] == 'a member of the genus Canis; "the dog barked all night"'


def test_missing_wordnet_says_how_to_install(pretrained, tmp_path, capsys):
    line = error_line(capsys, "finetune", str(pretrained), "--task", "wordnet-supersense",
                      "--set", f"wordnet_dir='{tmp_path}'")
    assert "apt-get install -y wordnet-base" in line


def test_hf_task_without_datasets_is_one_line(pretrained, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails as if not installed
    line = error_line(capsys, "finetune", str(pretrained), "--task", "someone/some-dataset")
    assert "Hugging Face dataset" in line and "datasets" in line


def test_bad_finetune_input(pretrained, tmp_path, capsys):
    assert "finetune.steps: 0" in error_line(capsys, "finetune", str(pretrained), "--task",
                                             "facts-attribute", "--set", "steps=0")
    assert "unknown key 'stepz'" in error_line(capsys, "finetune", str(pretrained), "--task",
                                               "facts-attribute", "--set", "stepz=3")
    assert "max_seq_len" in error_line(capsys, "finetune", str(pretrained), "--task",
                                       "facts-attribute", "--set", "max_len=1000")
    with pytest.raises(DataError, match="too few"):
        load_task("facts-attribute", FinetuneConfig(facts_entities=1, max_examples=2))


def test_progress_bar_tensorboard_and_provenance(pretrained, capsys):
    from pathlib import Path

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = ["finetune", str(pretrained), "--task", "facts-attribute", "--mode", "frozen-base",
            "--set", "steps=4", "--set", "log_every=2", "--set", "facts_entities=4",
            "--set", "save_weights=false"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "finetune" in captured.err and "4/4" in captured.err  # the tqdm bar, on stderr
    out = Path(captured.out.strip().rsplit(" -> ", 1)[1])
    events = EventAccumulator(str(out / "tb"), size_guidance={"tensors": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4]
    for tag in ("eval/accuracy", "eval/macro_f1"):
        (event,) = events.Scalars(tag)
        assert event.step == 4
    results = json.loads((out / "results.json").read_text())
    assert events.Scalars("eval/accuracy")[0].value == pytest.approx(results["accuracy"])
    assert "```toml" in events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    (session,) = json.loads((out / "provenance.json").read_text())["sessions"]
    assert session["kind"] == "finetune" and session["command"] == " ".join(["extmem", *args])
    assert session["checkpoint"] == results["checkpoint"]
    assert not list(out.parent.glob(".tmp-*"))  # the staging directory is gone

    assert main([*args, "--quiet"]) == 0
    assert "4/4" not in capsys.readouterr().err


def test_publish_takes_the_next_free_name_when_another_finetune_got_there_first(tmp_path):
    from extmem.finetune.run import _publish

    out = tmp_path / "wordnet-supersense-full"
    (out / "kept").mkdir(parents=True)  # written by the other finetune meanwhile
    tmp = tmp_path / ".tmp-x"
    tmp.mkdir()
    (tmp / "results.json").write_text("{}")
    assert _publish(tmp, out) == tmp_path / "wordnet-supersense-full-2"
    assert (out / "kept").is_dir() and (tmp_path / "wordnet-supersense-full-2" / "results.json").is_file()
