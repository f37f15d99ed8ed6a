"""metrics.jsonl's numbers also go to TensorBoard event files when tensorboard is installed (issue 21)."""
from __future__ import annotations

import pytest

from lstmkit.core.runs import RunFolder


def test_metrics_become_tensorboard_scalars(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    monkeypatch.setenv("LSTMKIT_TENSORBOARD", "1")
    run = RunFolder.create(tmp_path, run_id="tb")
    for step, loss in ((10, 5.0), (20, 4.5)):
        run.log_metrics({"type": "train", "step": step, "loss": loss, "note": "text is skipped", "flag": True})
    run.log_metrics({"type": "valid", "step": 20, "val_loss": 4.7, "cer": float("nan")})
    acc = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "valid/val_loss"} <= tags and "valid/cer" not in tags and "train/flag" not in tags
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(10, 5.0), (20, 4.5)]
    assert all("time" in r for r in run.metrics())


def test_tensorboard_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv("LSTMKIT_TENSORBOARD", "0")
    run = RunFolder.create(tmp_path, run_id="off")
    run.log_metrics({"type": "train", "step": 1, "loss": 1.0})
    assert not (tmp_path / "off" / "tensorboard").exists()
