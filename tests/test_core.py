import os

import pytest
import torch

from lstmkit.core.checkpoint import load_checkpoint, save_checkpoint
from lstmkit.core.runs import RunFolder
from lstmkit.errors import InputError


def _save(folder, step, value):
    save_checkpoint(folder, "last", f"{step:06d}", {"w": torch.full((3,), float(value))}, {"opt": torch.ones(2)},
                    {"step": step})


def test_checkpoint_roundtrip_and_old_files_removed(tmp_path):
    _save(tmp_path, 1, 1.0)
    _save(tmp_path, 2, 2.0)
    w, extra, st = load_checkpoint(tmp_path, "last")
    assert st["step"] == 2 and float(w["w"][0]) == 2.0 and torch.equal(extra["opt"], torch.ones(2))
    assert not list(tmp_path.glob("000001.*"))


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    _save(tmp_path, 1, 1.0)
    import lstmkit.core.checkpoint as ck

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(ck.torch, "save", disk_full)
    with pytest.raises(OSError):
        _save(tmp_path, 2, 2.0)
    monkeypatch.undo()
    w, _, st = load_checkpoint(tmp_path, "last")
    assert st["step"] == 1 and float(w["w"][0]) == 1.0
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_truncated_checkpoint_is_detected(tmp_path):
    _save(tmp_path, 1, 1.0)
    f = next(tmp_path.glob("*.model.safetensors"))
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(InputError, match="truncated or corrupted"):
        load_checkpoint(tmp_path, "last")


class Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_pickle_payload_is_refused_and_not_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _save(tmp_path, 1, 1.0)
    extra = next(tmp_path.glob("*.extra.pt"))
    torch.save({"opt": Evil()}, extra)
    # keep the recorded hash valid so only the unpickling guard stands in the way
    import hashlib
    import json
    rec = json.loads((tmp_path / "last.json").read_text())
    rec["files"]["extra"].update(sha256=hashlib.sha256(extra.read_bytes()).hexdigest(), bytes=extra.stat().st_size)
    (tmp_path / "last.json").write_text(json.dumps(rec))
    with pytest.raises(InputError, match="refused to load"):
        load_checkpoint(tmp_path, "last")
    assert not (tmp_path / "PWNED").exists()


def test_missing_checkpoint_names_alternatives(tmp_path):
    _save(tmp_path, 1, 1.0)
    with pytest.raises(InputError, match="other checkpoints here: last"):
        load_checkpoint(tmp_path, "best")


def test_run_folders_are_distinct(tmp_path):
    a, b = RunFolder.create(tmp_path), RunFolder.create(tmp_path)
    assert a.path != b.path
    with pytest.raises(InputError, match="already exists"):
        RunFolder.create(tmp_path, run_id=a.path.name)
    with pytest.raises(InputError, match="not a run folder"):
        RunFolder.open(a.path)
