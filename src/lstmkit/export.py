"""Export a trained run to one TorchScript file that plain PyTorch loads without lstmkit
(``torch.jit.load``), with the vocabulary inside (``_extra_files``).

Language model (``lstmkit lm export RUN OUT.pt``)::

    m = torch.jit.load("lm.pt", _extra_files=(extra := {"vocab.txt": "", "export.json": ""}))
    state = tuple(torch.zeros(1, n, h) for h in json.loads(extra["export.json"])["state_sizes"] for _ in (0, 1))
    scores, state = m(token_ids, state)      # (N, T) int64 -> raw next-word scores (N, T, V), new state

LAS (``lstmkit las export RUN OUT.pt``): ``m.listen(features (N, S, F), lengths (N,))`` -> keys,
values, lengths; ``m.step(prev (N,), h1, c1, h2, c2, context, weights, keys, values, mask)`` -> logits
(N, C) and the new state (attention weights last); ``export.json`` holds the characters and the
``<sos>``/``<eos>`` ids for a greedy loop (docs/api.md shows one).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from .core.checkpoint import _atomic_via


class _LMExport(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, state: tuple):
        hidden = [(state[2 * i], state[2 * i + 1]) for i in range(len(state) // 2)]
        dropped, _, hidden = self.model.features(tokens, hidden)
        return self.model.decode(dropped), tuple(t for hc in hidden for t in hc)


class _LASExport(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor, lengths: torch.Tensor):
        return self.listen(features, lengths)

    def listen(self, features: torch.Tensor, lengths: torch.Tensor):
        return self.model.listener(features, lengths)

    def step(self, prev, h1, c1, h2, c2, context, weights, keys, values, mask):
        from .las.model import SpellerState
        logits, st, _ = self.model.speller.step(prev, SpellerState(h1, c1, h2, c2, context, weights), keys, values, mask)
        return (logits,) + tuple(st)


def _trace(fn):
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")          # tracer warnings about Python ints: shapes are checked in tests
        return fn()


def export_lm(run_dir: str | Path, out: str | Path, which: str = "best") -> Path:
    """Trace the run's language model (eval mode, CPU, fp32) into ``out``."""
    from .lm import load_model
    model = load_model(run_dir, which).float().eval()
    sizes = [r.module.hidden_size for r in model.rnns]
    tokens = torch.zeros(2, 3, dtype=torch.long)
    state = tuple(torch.zeros(1, 2, h) for h in sizes for _ in (0, 1))
    traced = _trace(lambda: torch.jit.trace(_LMExport(model), (tokens, state), check_trace=False))
    extra = {"vocab.txt": "\n".join(model.vocab.itos), "export.json": json.dumps(
        {"kind": "lm", "state_sizes": sizes, "eos": model.vocab.eos, "unit": getattr(model.vocab, "unit", "word")})}
    out = Path(out)
    _atomic_via(out, lambda p: torch.jit.save(traced, p, _extra_files=extra))
    return out


def export_las(run_dir: str | Path, out: str | Path, which: str = "best") -> Path:
    """Trace the run's listener and one speller step into ``out`` (methods ``listen`` and ``step``)."""
    from .las import load_las
    from .las.model import frame_mask
    model, vocab = load_las(run_dir, which)
    model = model.float().eval()
    feats, lens = torch.zeros(2, 9, model.config.n_bands), torch.tensor([9, 6])
    keys, values, l2 = model.listener(feats, lens)
    mask = frame_mask(l2, keys.size(1))
    st = model.speller.init_state(keys, values, mask)
    step_in = (torch.zeros(2, dtype=torch.long), *st, keys, values, mask)
    traced = _trace(lambda: torch.jit.trace_module(_LASExport(model), {"listen": (feats, lens), "step": step_in},
                                                   check_trace=False))
    extra = {"export.json": json.dumps({"kind": "las", "chars": vocab.chars(), "sos": vocab.sos, "eos": vocab.eos,
                                        "pad": vocab.pad, "speller_hidden": model.config.speller_hidden,
                                        "key_size": model.config.key_size, "n_bands": model.config.n_bands})}
    out = Path(out)
    _atomic_via(out, lambda p: torch.jit.save(traced, p, _extra_files=extra))
    return out
