"""What a run tells TensorBoard and a tracker: the resolved config as text, the
hyper-parameters with the validation loss as their metric (HParams tab), and, with
`train.tracker = "wandb"`, an offline W&B run with the same scalars, resumed under the same id."""

from __future__ import annotations

import json
import struct
import sys
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
from tests.cli_helpers import error_line

from extmem.cli import main
from extmem.errors import ConfigError
from extmem.run.config import TrainConfig
from extmem.train.writers import TRACKER_FILE


def events(run_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(run_dir / "tb"), size_guidance={"tensors": 0})
    accumulator.Reload()
    return accumulator


def hparams_data(accumulator: EventAccumulator) -> dict[str, plugin_data_pb2.HParamsPluginData]:
    return {tag: plugin_data_pb2.HParamsPluginData.FromString(content)
            for tag, content in accumulator.PluginTagToContent("hparams").items()}


def hparam_values(start: plugin_data_pb2.SessionStartInfo) -> dict:
    out = {}
    for key, value in start.hparams.items():
        kind = value.WhichOneof("kind")
        out[key] = getattr(value, kind)
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    from tests.conftest import TINY_TOML
    root = tmp_path_factory.mktemp("tracking")
    config = root / "tiny.toml"
    config.write_text(TINY_TOML)
    out = root / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EXTMEM_CACHE", str(root / "cache"))
        assert main(["train", str(config), "--out", str(out), "--quiet",
                     "--set", "train.steps=3"]) == 0
    return out


def test_tensorboard_has_the_config_as_text(trained):
    accumulator = events(trained)
    (text,) = accumulator.Tensors("config/text_summary")
    body = text.tensor_proto.string_val[0].decode()
    assert body.startswith("```toml\n") and body.rstrip().endswith("```")
    assert body.removeprefix("```toml\n").removesuffix("\n```") == \
        (trained / "config.toml").read_text()
    assert "d_model = 32" in body and "[[model.memories]]" in body


def test_tensorboard_hparams_with_the_validation_loss_as_metric(trained):
    accumulator = events(trained)
    data = hparams_data(accumulator)
    assert set(data) == {"_hparams_/experiment", "_hparams_/session_start_info",
                         "_hparams_/session_end_info"}
    experiment = data["_hparams_/experiment"].experiment
    metrics = [m.name.tag for m in experiment.metric_infos]
    assert "val/val_loss" in metrics
    names = {h.name for h in experiment.hparam_infos}
    values = hparam_values(data["_hparams_/session_start_info"].session_start_info)
    assert names == set(values)
    expected = {"train.lr": 0.003, "train.batch_size": 4, "train.steps": 3, "model.d_model": 32,
                "model.n_layers": 2, "data.seq_len": 16, "memory.lookups": "product_keys",
                "memory.placements": "parallel_ffn", "memory.readouts": "add",
                "memory.layers": "1", "memory.slots": 64, "model.causal": "true"}
    for key, value in expected.items():
        assert values[key] == pytest.approx(value) if isinstance(value, float) else \
            values[key] == value, key
    end = data["_hparams_/session_end_info"].session_end_info
    assert end.status == api_pb2.STATUS_SUCCESS
    # the HParams tab shows the last value of the metric's scalar: the final validation loss
    final = json.loads((trained / "results.json").read_text())["val_loss"]
    last = accumulator.Scalars("val/val_loss")[-1]
    assert last.step == 3 and last.value == pytest.approx(final, rel=1e-6)


def test_missing_wandb_is_one_line_before_anything_is_written(tiny_config, tmp_path, capsys,
                                                              monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    out = tmp_path / "run"
    line = error_line(capsys, "train", str(tiny_config), "--out", str(out),
                      "--set", "train.tracker=wandb")
    assert 'pip install "extmem[wandb]"' in line and "train.tracker" in line
    assert not out.exists()
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(f'name = "s"\nbase = "{tiny_config.name}"\nseeds = [0]\nsteps = 2\n'
                     '[[variants]]\nname = "a"\n')
    line = error_line(capsys, "compare", str(sweep), "--out", str(tmp_path / "sweep"),
                      "--set", "train.tracker=wandb")
    assert 'pip install "extmem[wandb]"' in line
    assert not (tmp_path / "sweep").exists()
    with pytest.raises(ConfigError, match="tracker_project"):
        TrainConfig(tracker_project=" ")


# --- W&B (offline): the record log of an offline run ------------------------------------------

BLOCK = 32768  # the .wandb file is a LevelDB-style log: 7-byte header, then records in blocks


def wandb_records(path: Path):
    """Every protobuf Record of an offline run's .wandb file."""
    from wandb.proto import wandb_internal_pb2
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # the rest of a block is padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk  # FULL / FIRST start a record
        if kind in (1, 4):  # FULL / LAST end it
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def finished_records(path: Path, timeout_s: float = 30.0) -> list:
    """The records once the run's `exit` record is on disk: wandb's service process writes the
    log asynchronously, and `run.finish()` may return before the last records land."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            records = list(wandb_records(path))
        except Exception:  # noqa: BLE001 (a record still being written)
            records = []
        if (records and records[-1].WhichOneof("record_type") == "exit") or \
                time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def wandb_history(path: Path) -> dict[str, list[tuple[int, float]]]:
    """Scalar history of an offline run: key -> [(step, value)] (histograms left out)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for record in finished_records(path):
        if record.WhichOneof("record_type") != "history":
            continue
        items = {"/".join(i.nested_key) or i.key: json.loads(i.value_json)
                 for i in record.history.item}
        step = int(items.pop("_step"))
        for key, value in items.items():
            if not key.startswith("_") and isinstance(value, (int, float)):
                out.setdefault(key, []).append((step, value))
    return out


def wandb_config(path: Path) -> dict:
    for record in finished_records(path):
        if record.WhichOneof("record_type") == "run":
            return {i.key: json.loads(i.value_json) for i in record.run.config.update}
    return {}


def test_wandb_offline_run_logs_what_tensorboard_logs(tiny_config, tmp_path, monkeypatch,
                                                      capsys):
    pytest.importorskip("wandb")
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "run"
    assert main(["train", str(tiny_config), "--out", str(out), "--json",
                 "--set", "train.steps=3", "--set", "train.tracker=wandb"]) == 0
    json.loads(capsys.readouterr().out)  # stdout is still exactly one JSON object
    run_id = json.loads((out / TRACKER_FILE).read_text())["wandb"]["id"]
    (log,) = (out / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    history = wandb_history(log)
    scalars = events(out).Tags()["scalars"]
    assert set(history) == set(scalars) and "train/loss" in history and "val/val_loss" in history
    for tag in ("train/loss", "val/val_loss"):
        tensorboard = [(e.step, e.value) for e in events(out).Scalars(tag)]
        assert [s for s, _ in history[tag]] == [s for s, _ in tensorboard]
        assert [v for _, v in history[tag]] == pytest.approx([v for _, v in tensorboard])
    config = wandb_config(log)
    assert config["train"]["tracker"] == "wandb"
    assert config["model"]["d_model"] == 32

    # --resume continues the same W&B run (the id kept in RUN/tracker.json)
    assert main(["train", "--resume", "--out", str(out), "--quiet",
                 "--set", "train.steps=4"]) == 0
    capsys.readouterr()
    logs = sorted((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(logs) == 2 and all(p.name == f"run-{run_id}.wandb" for p in logs)
    assert 4 in {step for p in logs for step, _ in wandb_history(p)["train/loss"]}


def test_a_tracker_that_cannot_start_is_one_line_and_leaves_nothing(tiny_config, tmp_path,
                                                                   capsys, monkeypatch):
    wandb = pytest.importorskip("wandb")

    def refuse(**kwargs):
        raise RuntimeError("api_key not configured (no-tty). call wandb.login(key=...)\nmore")
    monkeypatch.setattr(wandb, "init", refuse)
    out = tmp_path / "run"
    line = error_line(capsys, "train", str(tiny_config), "--out", str(out), "--quiet",
                      "--set", "train.tracker=wandb")
    assert "api_key not configured" in line and "WANDB_MODE=offline" in line
    assert not out.exists()  # the same command can run again


def test_wandb_names_group_the_seeds_of_a_sweep_variant(tmp_path):
    from extmem.train.writers import wandb_names

    assert wandb_names(tmp_path / "gcide-long" / "pkm" / "seed-2") == ("pkm/seed-2", "gcide-long/pkm")
    assert wandb_names(tmp_path / "runs" / "quickstart") == ("quickstart", None)


def test_an_interrupted_wandb_run_is_marked_failed(tiny_config, tmp_path, monkeypatch, capsys):
    """W&B records the exit code: 0 for a finished run, 128 + signal for an interrupted one."""
    pytest.importorskip("wandb")
    import os
    import signal

    from extmem.data.batches import LMData

    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    original = LMData.train_batch

    def sigterm_at_step_2(self, step, batch_size, seed):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, step, batch_size, seed)
    monkeypatch.setattr(LMData, "train_batch", sigterm_at_step_2)
    out = tmp_path / "run"
    assert main(["train", str(tiny_config), "--out", str(out), "--quiet",
                 "--set", "train.tracker=wandb"]) == 143
    (log,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    (exit_record,) = [r for r in finished_records(log) if r.WhichOneof("record_type") == "exit"]
    assert exit_record.exit.exit_code == 143
