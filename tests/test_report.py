"""report.py's trackers read back from what they wrote (TensorBoard's event files, a wandb offline run), the
parser's line for a missing tracker package, and plots.plot_training's panels."""
import glob
import json
import os

import pytest

import plots
import report
import train
from conftest import ROOT

LINES = [{"step": 0, "val_acc": 0.25, "time": 1.5},
         {"step": 1, "reward": 40.0, "reward_std": 45.0, "tokens_per_s": 210.0, "time": 2.5},
         {"step": 2, "reward": 55.0, "reward_std": 38.0, "tokens_per_s": 190.0, "time": 3.0, "val_acc": 0.5}]


def run_folder(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"mode": "fuzzy", "lr": 3e-5, "run_id": "20261203-120000-1"}))
    return str(out)


def test_tensorboard_writes_every_field_at_its_step(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out = run_folder(tmp_path)
    tracker = report.open_tracker("tensorboard", out)
    for m in LINES:
        tracker.log(m)
    tracker.close()
    events = EventAccumulator(os.path.join(out, "tensorboard")).Reload()
    for key in ("val_acc", "time", "reward", "reward_std", "tokens_per_s"):
        assert [(e.step, e.value) for e in events.Scalars(key)] == \
            [(m["step"], pytest.approx(m[key])) for m in LINES if key in m], key
    assert '"lr": 3e-05' in events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()


def wandb_records(path):
    """The records of a .wandb file: its 7-byte header, then LevelDB-log framed protobufs (32 KiB blocks, each
    chunk with a 7-byte header: crc32, length, type; types 1 = whole, 2-4 = first / middle / last piece)."""
    from wandb.proto import wandb_internal_pb2
    raw, pos, block, piece, out = open(path, "rb").read(), 7, 32768, b"", []
    while pos + 7 <= len(raw):
        if block - pos % block < 7:                  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        n, kind = int.from_bytes(raw[pos + 4:pos + 6], "little"), raw[pos + 6]
        piece, pos = piece + raw[pos + 7:pos + 7 + n], pos + 7 + n
        if kind in (1, 4):
            out.append(wandb_internal_pb2.Record.FromString(piece))
            piece = b""
    return out


def test_wandb_offline_run_holds_every_line_and_the_settings(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")        # no account, no network
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):   # nothing in ~
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = run_folder(tmp_path)
    tracker = report.open_tracker("wandb", out)
    for m in LINES:
        tracker.log(m)
    tracker.close()
    files = glob.glob(os.path.join(out, "wandb", "offline-run-*", "run-20261203-120000-1.wandb"))   # the run's id
    assert len(files) == 1, os.listdir(out)
    records = wandb_records(files[0])
    history = [{k: json.loads(i.value_json) for i in r.history.item
                if not (k := i.key or "/".join(i.nested_key)).startswith("_")}    # _step, _runtime: wandb's own
               for r in records if r.WhichOneof("record_type") == "history"]
    assert history == LINES
    config = [r.run.config for r in records if r.WhichOneof("record_type") == "run"][0]
    assert {i.key: json.loads(i.value_json) for i in config.update}["lr"] == 3e-5


def test_a_missing_tracker_package_is_named_with_its_pip_line(tmp_path, monkeypatch, capsys):
    pins = open(os.path.join(ROOT, "requirements.txt")).read().split()
    assert all(pin in pins for pin in report.PACKAGES.values())      # the line says what requirements.txt pins
    monkeypatch.setattr(report.importlib.util, "find_spec", lambda name: None)
    assert report.missing("wandb") == "--report_to wandb: the wandb package is not installed; pip install wandb==0.31.0"
    assert report.missing("none") is None
    monkeypatch.setenv("SOFTCOT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SystemExit) as e:
        train.parse_args(["--recipe", "tiny", "--out", str(tmp_path / "run"), "--report_to", "tensorboard"])
    assert e.value.code == 2 and "pip install tensorboard==2.21.0" in capsys.readouterr().err


def test_plot_training_draws_the_six_curves_of_a_run(tmp_path, monkeypatch):
    steps = [{"step": 0, "val_acc": 0.1}] + [
        {"step": s, "reward": 10.0 * s, "accuracy": 0.1 * s, "cot_len": 30 + s, "cot_entropy": 0.5, "grad_norm": 0.0,
         **({"val_acc": 0.2 * s} if s % 2 == 0 else {})} for s in range(1, 5)]
    metrics = tmp_path / "tiny-fuzzy-s0" / "metrics.jsonl"
    metrics.parent.mkdir()
    metrics.write_text("".join(json.dumps(m) + "\n" for m in steps))
    drawn = []
    monkeypatch.setattr(plots.Figure, "savefig", lambda fig, path, **kw: drawn.append(fig))
    plots.plot_training([str(metrics)], str(tmp_path / "training.png"))
    panels = {ax.get_title(): ax for ax in drawn[0].axes if ax.get_visible()}
    assert list(panels) == [title for _, title in plots.CURVES]
    val = panels["greedy validation accuracy"].lines[0]
    assert list(val.get_xdata()) == [0, 2, 4] and list(val.get_ydata()) == [0.1, 0.4, 0.8]
    assert list(panels["CoT length (tokens)"].lines[0].get_ydata()) == [31, 32, 33, 34]
    assert panels["gradient norm (before clipping)"].get_yscale() == "linear"   # all zero: no log axis to draw on
