"""Run folders: ``runs/<unix-time>/`` holding config.toml, metrics.jsonl, checkpoint/ and artifacts.

Everything a run writes goes into its folder, nowhere else.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from ..errors import InputError, plain_name
from .checkpoint import atomic_write_text

try:
    import fcntl
except ImportError:          # not on Windows: no lock there
    fcntl = None

MARKER = "config.toml"


class RunFolder:
    """A run folder. ``RunFolder.create(root)`` makes a new timestamped one; ``RunFolder.open(path)``
    opens an existing one (checked to be a run folder).

    Example:
        >>> import tempfile
        >>> run = RunFolder.create(tempfile.mkdtemp(), run_id="demo")
        >>> run.log_metrics({"epoch": 1, "val_loss": 5.0}); run.metrics()[0]["val_loss"]
        5.0
    """

    def __init__(self, path: Path, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly   # ranks other than 0 of a distributed run: metrics and texts are not written
        self._tb = None            # TensorBoard writer: None = not tried yet, False = off or not installed

    @classmethod
    def create(cls, root: str | Path = "runs", run_id: str | None = None) -> "RunFolder":
        root = Path(root)
        if run_id:
            plain_name(run_id, "--run-id / run_id", "run id")
        if root.exists() and not root.is_dir():
            raise InputError(str(root), "not a folder", "a folder for run folders (--runs-dir)")
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(str(root), f"cannot create the runs folder ({e.strerror})", "a writable folder (--runs-dir)") from None
        stamp = int(time.time())
        name = run_id or str(stamp)
        path = root / name
        n = 1
        while path.exists():  # two runs in the same second get distinct folders
            if run_id:
                raise InputError(str(path), "run folder already exists", "a new run_id, or --resume to continue it")
            path, n = root / f"{stamp}-{n}", n + 1
        try:
            path.mkdir()
        except OSError as e:
            raise InputError(str(path), f"cannot create the run folder ({e.strerror})", "a writable --runs-dir") from None
        return cls(path)

    @classmethod
    def create_on_main(cls, dist, root: str | Path = "runs", run_id: str | None = None) -> "RunFolder":
        """Distributed runs: rank 0 creates the folder, the other ranks open it read-only."""
        from .distributed import broadcast
        path = cls.create(root, run_id).path if dist.main else None
        path = broadcast(str(path) if path else None, dist)
        return cls(Path(path), readonly=not dist.main)

    @classmethod
    def open(cls, path: str | Path, family: str | None = None) -> "RunFolder":
        """Open an existing run; ``family`` ('lm' or 'las') also checks which model it holds."""
        path = Path(path)
        if not (path / MARKER).is_file():
            raise InputError(str(path), f"not a run folder (no {MARKER})", "a folder written by `lstmkit ... train`")
        run = cls(path)
        if family is not None and run.family() not in (family, None):
            names = {"lm": "a language-model run (lstmkit lm)", "las": "a speech-recognition run (lstmkit las)"}
            raise InputError(str(path), f"this is {names[run.family()]}", names[family])
        return run

    def family(self) -> str | None:
        """'lm' or 'las', read from the ``[model]`` table of config.toml (None if it cannot tell)."""
        from ..config import tomllib
        try:
            model = tomllib.loads((self.path / MARKER).read_text(encoding="utf-8")).get("model", {})
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            return None
        if not isinstance(model, dict):
            return None
        return "las" if "listener_hidden" in model else "lm" if "hidden_size" in model else None

    @contextlib.contextmanager
    def in_use(self):
        """Hold the run for this process while it trains: a second training process on the same
        folder (a ``--resume`` in another terminal while the first still runs) stops with one error
        before it writes anything, instead of both writing checkpoints and metrics. The lock
        (``flock`` on ``.lock``, never followed through a link) ends with the process, kill -9 too."""
        if self.readonly or fcntl is None:
            yield
            return
        where = self.path / ".lock"
        try:
            fd = os.open(where, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as e:
            raise InputError(str(where), f"cannot be opened ({e.strerror})", "a plain lock file the run may write") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            who = os.read(fd, 20).decode("ascii", "replace").strip()
            os.close(fd)
            raise InputError(str(self.path), "in use by another training process" + (f" (pid {who})" if who.isdigit() else ""),
                             "one process per run folder: let it finish or stop it (Ctrl-C) before --resume") from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            yield
        finally:
            os.close(fd)          # releases the lock

    def file(self, name: str) -> Path:
        """Path of an artifact inside the run (parent folders created)."""
        p = self.path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoint"

    def write_text(self, name: str, text: str) -> Path:
        if self.readonly:
            return self.path / name
        p = self.file(name)
        atomic_write_text(p, text)
        return p

    def log_metrics(self, record: dict[str, Any]) -> None:
        """Append one JSON object to metrics.jsonl (one line per epoch or event)."""
        if self.readonly:
            return
        record = {**record, "time": record.get("time", round(time.time(), 3))}   # wall clock, unix seconds
        with open(self.file("metrics.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
        self._tensorboard(record)

    def _tensorboard(self, record: dict[str, Any]) -> None:
        """The same numbers as TensorBoard scalars in ``tensorboard/`` (``pip install lstmkit[tensorboard]``;
        ``LSTMKIT_TENSORBOARD=0`` turns it off): ``tensorboard --logdir runs`` compares runs live."""
        if self._tb is None:
            self._tb = False
            if os.environ.get("LSTMKIT_TENSORBOARD", "1") != "0":
                try:
                    from torch.utils.tensorboard import SummaryWriter
                    self._tb = SummaryWriter(str(self.path / "tensorboard"))
                except ImportError:
                    pass
        if not self._tb:
            return
        kind, step = record.get("type", "metrics"), record.get("step")
        for k, v in record.items():
            if k not in ("type", "step", "time", "epoch") and isinstance(v, (int, float)) and not isinstance(v, bool) \
                    and math.isfinite(v):
                self._tb.add_scalar(f"{kind}/{k}", v, global_step=step, walltime=record["time"])
        self._tb.flush()

    def metrics(self) -> list[dict[str, Any]]:
        p = self.path / "metrics.jsonl"
        if not p.exists():
            return []
        return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]

    def truncate_metrics(self, keep) -> None:
        """Keep only records for which ``keep(record)`` is true (used when resuming)."""
        if self.readonly:
            return
        recs = [r for r in self.metrics() if keep(r)]
        atomic_write_text(self.file("metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in recs))
