"""Atomic checkpoints: weights in safetensors, other tensors via ``torch.save`` (loaded with
``weights_only=True``), trainer state in JSON. Nothing is unpickled.

A checkpoint named ``last`` inside ``run/checkpoint/`` is three files written under a fresh step
tag, then committed by atomically replacing the small pointer ``last.json``, which records the
sha256 of each file. Until that rename the previous checkpoint is untouched, so a crash or a full
disk at any moment leaves the last good checkpoint loadable::

    checkpoint/
      last.json                  {"tag": "000120", "files": {name: sha256}, "state": {...}}
      000120.model.safetensors   model weights
      000120.extra.pt            optimizer + RNG + other tensors (weights_only loadable)
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..errors import InputError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via temp file + fsync + rename (never a half-written file)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_via(path: Path, writer) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        writer(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(folder: Path, name: str, tag: str, weights: dict[str, torch.Tensor],
                    extra: dict[str, Any], state: dict[str, Any]) -> None:
    """Write checkpoint ``name`` (e.g. 'last', 'best') under ``folder`` atomically.

    ``weights``: flat dict of tensors (a ``state_dict``); ``extra``: nested tensors/numbers/strings
    (optimizer state, RNG states); ``state``: JSON-able trainer state.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".*.tmp"):     # left by a writer killed mid-write (one writer per run)
        stale.unlink(missing_ok=True)
    files = {"model": f"{tag}.{name}.model.safetensors", "extra": f"{tag}.{name}.extra.pt"}
    contiguous = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
    _atomic_via(folder / files["model"], lambda p: save_file(contiguous, p))
    _atomic_via(folder / files["extra"], lambda p: torch.save(extra, p))
    pointer = folder / f"{name}.json"
    try:
        old = _read_pointer(pointer) if pointer.exists() else None
    except InputError:      # an unreadable or hostile old pointer: replace it, delete nothing it names
        old = None
    record = {"tag": tag, "files": {k: {"name": v, "sha256": _sha256(folder / v),
                                        "bytes": (folder / v).stat().st_size} for k, v in files.items()},
              "state": state, "state_sha256": _state_sha256(state)}
    atomic_write_text(pointer, json.dumps(record, indent=1))
    if old:  # the new checkpoint is whole: drop the files the old pointer named (inside the folder only)
        for f in old["files"].values():
            if f["name"] not in files.values():
                (folder / f["name"]).unlink(missing_ok=True)


_FILE_NAME = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]*\.[0-9A-Za-z_.-]+")
_SUFFIX = {"model": ".model.safetensors", "extra": ".extra.pt"}


def _state_sha256(state: dict) -> str:
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode("utf-8")).hexdigest()


def _checked_pointer(rec: Any, pointer: Path) -> dict:
    """The pointer's structure, every file name a plain name of the expected kind inside the pointer's
    folder (never a path: no '/', '..', absolute paths or links out), and the state's hash."""
    where = str(pointer)
    if not isinstance(rec, dict) or not isinstance(rec.get("files"), dict) or not isinstance(rec.get("state"), dict):
        raise InputError(where, "a pointer without 'files' and 'state' objects", "a checkpoint pointer written by lstmkit")
    folder = pointer.parent.resolve()
    for kind, suffix in _SUFFIX.items():
        f = rec["files"].get(kind)
        if not isinstance(f, dict):
            raise InputError(f"{where}: files.{kind}", "missing", "an object with name, sha256 and bytes")
        name = f.get("name")
        if not (isinstance(name, str) and _FILE_NAME.fullmatch(name) and name.endswith(suffix)
                and (folder / name).resolve().parent == folder):
            raise InputError(f"{where}: files.{kind}.name", f"found {name!r}",
                             f"a file name ending in {suffix} inside {pointer.parent} (no paths)")
        if not isinstance(f.get("sha256"), str) or isinstance(f.get("bytes"), bool) or not isinstance(f.get("bytes"), int):
            raise InputError(f"{where}: files.{kind}", "sha256/bytes missing or of the wrong type",
                             "sha256 as a hex string and bytes as an integer")
    if set(rec["files"]) != set(_SUFFIX):
        raise InputError(f"{where}: files", f"entries {sorted(rec['files'])}", f"exactly {sorted(_SUFFIX)}")
    if "state_sha256" in rec and rec["state_sha256"] != _state_sha256(rec["state"]):
        raise InputError(f"{where}: state", "edited after the checkpoint was written (sha256 differs)",
                         "the state lstmkit wrote")
    return rec


def check_state(state: dict, where: str, spec: dict[str, tuple]) -> None:
    """Validate trainer state read from a pointer: ``spec`` maps a key to ``(type, min, max)``
    (``max`` may be None); a missing key is allowed only where the trainer has a default."""
    for key, (kind, lo, hi) in spec.items():
        if key not in state:
            continue
        v = state[key]
        ok = isinstance(v, kind) and not isinstance(v, bool)
        if ok and isinstance(v, (int, float)):
            ok = math.isfinite(v) and v >= lo and (hi is None or v <= hi)
        if not ok:
            rng = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
            raise InputError(f"{where}: state.{key}", f"found {v!r}", f"a finite {getattr(kind, '__name__', kind)} {rng}")


def _read_pointer(pointer: Path) -> dict:
    try:
        rec = json.loads(pointer.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(str(pointer), f"checkpoint pointer unreadable ({e})", "a JSON file written by lstmkit") from None
    return _checked_pointer(rec, pointer)


def require_resumable(run_path: Path, family: str) -> None:
    """Refuse ``--resume`` of a run stopped before its first checkpoint, saying what to do."""
    if not has_checkpoint(Path(run_path) / "checkpoint", "last"):
        raise InputError(str(run_path), "no checkpoint yet: the run stopped before its first one was written",
                         f"a run with checkpoint/last.json; start it again: lstmkit {family} train --config "
                         f"{Path(run_path) / 'config.toml'} --run-id <new id>")


def has_checkpoint(folder: Path, name: str = "last") -> bool:
    """True when checkpoint ``name`` has been committed in ``folder``."""
    return (Path(folder) / f"{name}.json").is_file()


def load_checkpoint(folder: Path, name: str = "last", map_location: str | torch.device = "cpu"):
    """Load checkpoint ``name`` -> ``(weights, extra, state)``; verifies size and sha256 first.

    Raises :class:`InputError` for a missing, truncated or altered checkpoint, naming the other
    checkpoints present in the folder.
    """
    folder = Path(folder)
    pointer = folder / f"{name}.json"
    others = sorted(p.stem for p in folder.glob("*.json") if p.stem != name) if folder.is_dir() else []
    hint = f" (other checkpoints here: {', '.join(others)})" if others else ""
    if not pointer.exists():
        raise InputError(str(pointer), "checkpoint not found" + hint, "a run folder with a checkpoint")
    rec = _read_pointer(pointer)
    for kind, f in rec["files"].items():
        path = folder / f["name"]
        if not path.exists():
            raise InputError(str(path), "checkpoint file missing" + hint, "the file named in " + pointer.name)
        if path.stat().st_size != f["bytes"] or _sha256(path) != f["sha256"]:
            raise InputError(str(path), "checkpoint file is truncated or corrupted (size/sha256 differ)" + hint,
                             f"{f['bytes']} bytes with sha256 {f['sha256'][:12]}...")
    try:
        weights = load_file(str(folder / rec["files"]["model"]["name"]), device=str(map_location))
    except Exception as e:  # not a safetensors file
        raise InputError(str(folder / rec["files"]["model"]["name"]), f"unreadable weights ({type(e).__name__})",
                         "a safetensors file written by lstmkit") from None
    try:
        extra = torch.load(folder / rec["files"]["extra"]["name"], map_location=map_location, weights_only=True)
    except Exception as e:  # pickle.UnpicklingError and friends: refuse, do not execute
        raise InputError(str(folder / rec["files"]["extra"]["name"]),
                         f"refused to load ({type(e).__name__}: {str(e).splitlines()[0][:200]})",
                         "tensors and plain containers only (weights_only=True)") from None
    return weights, extra, rec["state"]


def rng_state(device: str | torch.device | None = None) -> dict[str, Any]:
    """Every global RNG state we rely on, as tensors/plain values (``weights_only`` safe): torch's
    CPU generator, Python's, NumPy's and, when ``device`` is a GPU, that GPU's generator (the one
    dropout and sampling draw from there; not every visible GPU's, which would not fit a machine
    with fewer GPUs and under torchrun would hold another process's unused generators)."""
    import random

    import numpy as np
    py = random.getstate()
    st = {"torch": torch.get_rng_state(), "python": [py[0], list(py[1]), py[2]],
          "numpy": _np_state_to_plain(np.random.get_state())}
    if device is not None and torch.device(device).type == "cuda":
        st["cuda_device"] = torch.cuda.get_rng_state(torch.device(device))
    return st


def _np_state_to_plain(s):
    return [s[0], torch.from_numpy(s[1].astype("int64")), int(s[2]), int(s[3]), float(s[4])]


def set_rng_state(st: dict[str, Any], device: str | torch.device | None = None) -> None:
    """Restore what :func:`rng_state` saved; the GPU state goes to ``device`` (the run's device now,
    which may be another index than when it was saved). The states are host data whatever device a
    checkpoint was mapped to: ``load_checkpoint(..., map_location="cuda")`` puts every tensor of
    ``extra`` on the GPU, and ``torch.set_rng_state`` / ``torch.cuda.set_rng_state`` take CPU byte
    tensors only. A GPU state meets a CPU run (or the reverse) only when a run moves between
    machines: then it is skipped (the GPU generator keeps its seed)."""
    import random

    import numpy as np
    torch.set_rng_state(st["torch"].cpu())
    random.setstate((st["python"][0], tuple(st["python"][1]), st["python"][2]))
    n = st["numpy"]
    np.random.set_state((n[0], n[1].cpu().numpy().astype("uint32"), n[2], n[3], n[4]))
    dev = torch.device(device) if device is not None else None
    if dev is None or dev.type != "cuda":
        return
    saved = st.get("cuda_device")
    if saved is None and st.get("cuda"):             # checkpoints before this: every visible GPU's state
        old = st["cuda"]
        saved = old[dev.index if dev.index is not None and dev.index < len(old) else 0]
    if saved is not None:
        torch.cuda.set_rng_state(saved.cpu(), dev)


def module_weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``state_dict`` without aliases (tied weights are stored once, under their first name)."""
    seen: set[int] = set()
    out = {}
    for k, v in module.state_dict().items():
        key = v.data_ptr()
        if key in seen and v.numel() > 0:
            continue
        seen.add(key)
        out[k] = v
    return out


def load_module_weights(module: torch.nn.Module, weights: dict[str, torch.Tensor], where: str = "checkpoint") -> None:
    """Load weights saved by :func:`module_weights`; shape mismatches become :class:`InputError`."""
    own = module.state_dict()
    for k, v in weights.items():
        if k not in own:
            raise InputError(where, f"unexpected weight {k!r}", "weights of the same model class/config")
        if own[k].shape != v.shape:
            raise InputError(where, f"weight {k!r} has shape {tuple(v.shape)}",
                             f"{tuple(own[k].shape)} (does the config/vocabulary match the checkpoint?)")
    missing = set(own) - set(weights)
    ptr = {own[k].data_ptr() for k in weights}
    unexplained = [k for k in missing if own[k].data_ptr() not in ptr]
    if unexplained:
        raise InputError(where, f"missing weight {sorted(unexplained)[0]!r}", "a complete checkpoint")
    module.load_state_dict(weights, strict=False)
