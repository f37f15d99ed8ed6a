"""Speech data for LAS: a character vocabulary, a folder format shared by toy and real data, and
batching of variable-length utterances.

Folder layout (one folder per split; ``lstmkit las make-toy`` writes exactly this)::

    DATA/train/transcripts.tsv     <utt_id> TAB <transcript>, one utterance per line, UTF-8
    DATA/train/feats/<utt_id>.npy  float32 features (T, F): T frames of F bands (40 by default)
    DATA/train/spans.jsonl         optional, toy data: {"id": ..., "spans": [[start, end], ...]}
    DATA/val/...                   same layout
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import InputError, plain_name

PAD, SOS, EOS = "<pad>", "<sos>", "<eos>"


class CharVocabulary:
    """Characters <-> ids; ids 0, 1, 2 are ``<pad>``, ``<sos>``, ``<eos>``.

    Example:
        >>> v = CharVocabulary("ab ")
        >>> v.encode("ba"), v.decode([4, 3, 2, 3])
        ([4, 3], 'ba')
    """

    def __init__(self, chars: Sequence[str]):
        chars = list(dict.fromkeys(chars))
        self.itos = [PAD, SOS, EOS] + chars
        self.stoi = {c: i for i, c in enumerate(self.itos)}
        self.pad, self.sos, self.eos = 0, 1, 2

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str, where: str = "transcript") -> list[int]:
        bad = [c for c in text if c not in self.stoi or self.stoi[c] < 3]
        if bad:
            raise InputError(where, f"character {bad[0]!r} is not in the vocabulary",
                             "characters of " + repr("".join(self.itos[3:])))
        return [self.stoi[c] for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> text, stopping at the first ``<eos>``; ``<pad>``/``<sos>`` are skipped."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos:
                break
            if i > 2:
                out.append(self.itos[i])
        return "".join(out)

    def chars(self) -> str:
        return "".join(self.itos[3:])


@dataclass
class Utterance:
    id: str
    features: np.ndarray                          # (T, F) float32
    text: str
    spans: list[tuple[int, int]] | None = None    # true frame span per character (toy data)


def write_split(folder: Path, utterances: Sequence[Utterance]) -> None:
    """Write utterances in the folder layout above."""
    folder = Path(folder)
    (folder / "feats").mkdir(parents=True, exist_ok=True)
    lines, spans = [], []
    for u in utterances:
        np.save(folder / "feats" / f"{plain_name(u.id, str(folder), 'utterance id')}.npy", u.features.astype(np.float32))
        lines.append(f"{u.id}\t{u.text}")
        if u.spans is not None:
            spans.append(json.dumps({"id": u.id, "spans": [list(s) for s in u.spans]}))
    (folder / "transcripts.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if spans:
        (folder / "spans.jsonl").write_text("\n".join(spans) + "\n", encoding="utf-8")


def read_split(folder: str | Path, n_bands: int | None = 40, allow_empty: bool = False) -> list[Utterance]:
    """Read and check one split folder; every problem names the file and what was expected.
    ``allow_empty``: accept utterances with an empty transcript (audio to transcribe, no reference)."""
    folder = Path(folder)
    tsv = folder / "transcripts.tsv"
    if not folder.is_dir():
        raise InputError(str(folder), "data folder not found", "a folder with transcripts.tsv and feats/")
    if not tsv.is_file():
        raise InputError(str(tsv), "transcript file not found", "transcripts.tsv: <utt_id> TAB <text> per line")
    try:
        rows = [ln for ln in tsv.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except UnicodeDecodeError as e:
        raise InputError(str(tsv), f"not valid UTF-8 (byte {e.start})", "a UTF-8 text file") from None
    if not rows:
        raise InputError(str(tsv), "no utterances", "at least one line <utt_id> TAB <text>")
    spans = {}
    if (folder / "spans.jsonl").is_file():
        for ln in (folder / "spans.jsonl").read_text(encoding="utf-8").splitlines():
            if ln.strip():
                rec = json.loads(ln)
                spans[rec["id"]] = [tuple(s) for s in rec["spans"]]
    feats_dir = folder / "feats"
    listed = set()
    out = []
    for k, row in enumerate(rows, 1):
        if "\t" not in row:
            raise InputError(f"{tsv}:{k}", f"line {row[:40]!r} has no TAB", "<utt_id> TAB <transcript>")
        uid, text = row.split("\t", 1)
        plain_name(uid, f"{tsv}:{k}", "utterance id")
        if "\t" in text:
            raise InputError(f"{tsv}:{k}", f"{text.count(chr(9)) + 2} TAB-separated columns", "two: <utt_id> TAB <transcript>")
        if uid in listed:
            raise InputError(f"{tsv}:{k}", f"utterance id {uid!r} listed twice", "each utterance once")
        listed.add(uid)
        path = feats_dir / f"{uid}.npy"
        if path.is_symlink() and path.resolve().parent != feats_dir.resolve():
            raise InputError(str(path), "a link to a file outside the feats folder", "the features inside feats/")
        if not path.is_file():
            raise InputError(str(path), f"features of utterance {uid!r} (line {k} of transcripts.tsv) not found",
                             "one feats/<utt_id>.npy per transcript line")
        try:
            x = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise InputError(str(path), f"unreadable ({e})", "a numeric .npy array (T, F)") from None
        check_features(x, str(path), n_bands)
        if not text and not allow_empty:
            raise InputError(f"{tsv}:{k}", f"empty transcript for {uid!r}", "at least one character")
        out.append(Utterance(uid, x.astype(np.float32, copy=False), text, spans.get(uid)))
    extra = sorted(p.stem for p in feats_dir.glob("*.npy") if p.stem not in listed) if feats_dir.is_dir() else []
    if extra:
        raise InputError(str(feats_dir), f"{len(extra)} feature file(s) without a transcript line, e.g. {extra[0]!r}",
                         f"as many feature files as lines in {tsv.name} ({len(rows)})")
    return out


def check_features(x: np.ndarray, where: str, n_bands: int | None) -> None:
    if x.dtype.kind not in "fiu":
        raise InputError(where, f"dtype {x.dtype}", "a float array (T, F)")
    if x.ndim != 2:
        raise InputError(where, f"shape {x.shape}", "a 2-D array (T frames, F bands)")
    if n_bands is not None and x.shape[1] != n_bands:
        raise InputError(where, f"{x.shape[1]} bands (shape {x.shape})", f"{n_bands} bands per frame (T, {n_bands})")
    if x.shape[0] == 0:
        raise InputError(where, "zero frames", "at least one frame")
    if not np.isfinite(x).all():
        raise InputError(where, "NaN or inf values", "finite features")


class SpeechDataset(torch.utils.data.Dataset):
    """Utterances encoded for LAS: item i -> (features (T, F) tensor, char ids tensor)."""

    def __init__(self, utterances: Sequence[Utterance], vocab: CharVocabulary, where: str = "data"):
        self.utts = list(utterances)
        self.vocab = vocab
        self.targets = [torch.tensor(vocab.encode(u.text, f"{where}: utterance {u.id!r}")) for u in self.utts]
        self.features = [torch.from_numpy(u.features) for u in self.utts]

    @classmethod
    def from_folder(cls, folder: str | Path, vocab: CharVocabulary, n_bands: int | None = 40,
                    allow_empty: bool = False) -> "SpeechDataset":
        return cls(read_split(folder, n_bands, allow_empty), vocab, str(folder))

    def __len__(self) -> int:
        return len(self.utts)

    def __getitem__(self, i: int):
        return self.features[i], self.targets[i]


@dataclass
class SpeechBatch:
    features: torch.Tensor   # (N, S, F) zero-padded
    lengths: torch.Tensor    # (N,) frames per utterance
    inputs: torch.Tensor     # (N, L) <sos> + chars, padded
    targets: torch.Tensor    # (N, L) chars + <eos>, padded with <pad>
    index: torch.Tensor      # (N,) dataset indices


def collate(items, vocab: CharVocabulary, index: Sequence[int] | None = None) -> SpeechBatch:
    feats, chars = zip(*items)
    lengths = torch.tensor([f.size(0) for f in feats])
    x = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)
    sos = torch.tensor([vocab.sos])
    eos = torch.tensor([vocab.eos])
    inputs = torch.nn.utils.rnn.pad_sequence([torch.cat([sos, c]) for c in chars], batch_first=True, padding_value=vocab.pad)
    targets = torch.nn.utils.rnn.pad_sequence([torch.cat([c, eos]) for c in chars], batch_first=True, padding_value=vocab.pad)
    idx = torch.tensor(list(index) if index is not None else range(len(items)))
    return SpeechBatch(x, lengths, inputs, targets, idx)


def length_buckets(lengths: Sequence[int], batch_size: int, rng: np.random.Generator | None,
                   shortest_first: bool = False) -> list[list[int]]:
    """Batches of similar length (less padding): sort by length within shuffled chunks of 50
    batches, then shuffle the batch order. ``rng=None`` keeps dataset order (validation).
    ``shortest_first``: batches in order of length instead (SortaGrad, Amodei et al. 2016)."""
    idx = np.arange(len(lengths))
    if rng is None:
        return [idx[i: i + batch_size].tolist() for i in range(0, len(idx), batch_size)]
    idx = rng.permutation(idx)
    if shortest_first:
        part = sorted(idx.tolist(), key=lambda i: lengths[i])
        return [part[i: i + batch_size] for i in range(0, len(part), batch_size)]
    chunk = batch_size * 50
    batches = []
    for c in range(0, len(idx), chunk):
        part = sorted(idx[c: c + chunk], key=lambda i: lengths[i])
        batches += [part[i: i + batch_size] for i in range(0, len(part), batch_size)]
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def speed_perturb(x: torch.Tensor, lengths: torch.Tensor, max_change: float, generator: torch.Generator | None = None):
    """Stretch or squeeze each utterance in time by a random factor in [1 - max_change, 1 + max_change]
    (nearest-frame resampling, as speed perturbation does for audio; Ko et al. 2015). Every input
    frame range keeps its order, so transcripts stay valid. x (N, S, F), lengths (N,) ->
    (x' (N, S', F) zero-padded, lengths').

    >>> x = torch.arange(6.).view(1, 6, 1)
    >>> y, n = speed_perturb(x, torch.tensor([6]), 0.0); y.flatten().tolist(), n.tolist()
    ([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], [6])
    """
    n, device, lengths = x.size(0), lengths.device, lengths.cpu()
    factor = 1 + max_change * (2 * torch.rand(n, generator=generator) - 1)          # output frames per input frame
    new = torch.clamp((lengths.float() * factor).round().long(), min=1)
    s = int(new.max())
    t = torch.arange(s)[None, :].float()
    src = torch.minimum((t / factor[:, None]).long(), (lengths - 1)[:, None])        # (N, S')
    out = x.gather(1, src.to(x.device).unsqueeze(-1).expand(n, s, x.size(2)))
    keep = (t < new[:, None]).to(x.device)
    return out * keep.unsqueeze(-1).to(x.dtype), new.to(device)
