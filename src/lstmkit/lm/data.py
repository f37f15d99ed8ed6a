"""Corpora for the word language model: vocabulary, readers, batchify and the BPTT iterator.

Readers turn a corpus into one long stream of ids with an end-of-line token after every line
(``<eos>`` for WikiText, ``<eol>`` for the course-handout ``.npy`` format)::

    wikitext   data/wikitext-2/wiki.{train,valid,test}.tokens   (space-separated tokens, <unk> present)
    text       any UTF-8 text files: train/valid/test paths; whitespace tokens, optional size cap
    npy        a folder with vocab.npy (array of words) and {train,valid,test}.npy
               (object array of per-article int arrays, ids into vocab.npy)

``unit = "char"`` (wikitext and text formats) reads the same files as characters: every character of
a line is a token, runs of whitespace become one space ``" "``, and ``<eos>`` still ends each line.
This is the character-level language model the speech recognizer fuses with (``lowercase = true``
matches its lower-case transcripts).
"""
from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from ..errors import InputError
from .npy_articles import load_articles

UNK, EOS = "<unk>", "<eos>"
SPLITS = ("train", "valid", "test")
# sha256 of the vendored WikiText-2 files (see data/wikitext-2/README.md)
WIKITEXT2_SHA256 = {
    "wiki.train.tokens": "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f",
    "wiki.valid.tokens": "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
    "wiki.test.tokens": "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
}


class Vocabulary:
    """Word <-> id map. Unknown words map to ``unk`` (if the vocabulary has one).

    Example:
        >>> v = Vocabulary(["<eos>", "<unk>", "the", "cat"])
        >>> v.encode("the dog".split()), v.decode([3, 0])
        ([2, 1], ['cat', '<eos>'])
    """

    def __init__(self, words: Sequence[str], unk: str | None = UNK, eos: str = EOS, unit: str = "word"):
        self.itos = list(words)
        self.unit = unit
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            dup = next(w for w, c in Counter(self.itos).items() if c > 1)
            raise InputError("vocabulary", f"word {dup!r} appears twice", "unique words")
        self.unk = unk if unk in self.stoi else None
        self.eos = eos

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, w: str) -> bool:
        return w in self.stoi

    def encode(self, words: Sequence[str], where: str = "input") -> list[int]:
        """Words -> ids; unknown words become ``<unk>``, or raise when there is none."""
        if self.unk is None:
            missing = [w for w in words if w not in self.stoi]
            if missing:
                raise InputError(where, f"word {missing[0]!r} is not in the vocabulary ({len(self)} words, no <unk>)",
                                 "words of the training vocabulary")
            return [self.stoi[w] for w in words]
        u = self.stoi[self.unk]
        return [self.stoi.get(w, u) for w in words]

    def decode(self, ids: Sequence[int]) -> list[str]:
        return [self.itos[int(i)] for i in ids]

    def tokenize(self, text: str) -> list[str]:
        """Text -> tokens of this vocabulary's unit (words, or characters with single spaces)."""
        return list(" ".join(text.split())) if self.unit == "char" else text.split()

    def join(self, tokens: Sequence[str]) -> str:
        """Tokens -> display text: words joined by spaces, characters as they are."""
        return "".join(tokens) if self.unit == "char" else " ".join(tokens)

    def save(self, path: str | Path) -> None:
        from ..core.checkpoint import atomic_write_text
        atomic_write_text(Path(path), "\n".join(self.itos) + "\n")

    @classmethod
    def load(cls, path: str | Path, eos: str = EOS, unit: str = "word") -> "Vocabulary":
        path = Path(path)
        if not path.is_file():
            raise InputError(str(path), "vocabulary file not found", "one word per line")
        words = path.read_text(encoding="utf-8").split("\n")
        if words and words[-1] == "":
            words = words[:-1]
        return cls(words, eos=eos, unit=unit)

    @classmethod
    def build(cls, lines: Sequence[Sequence[str]], max_size: int | None = None, eos: str = EOS,
              unit: str = "word") -> "Vocabulary":
        """Vocabulary from tokenized training lines: ``eos``, ``<unk>``, then words by frequency."""
        counts = Counter(w for line in lines for w in line)
        counts.pop(eos, None)
        counts.pop(UNK, None)
        words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
        if max_size is not None:
            words = words[: max(0, max_size - 2)]
        return cls([eos, UNK] + words, eos=eos, unit=unit)


def read_lines(path: str | Path, unit: str = "word", lowercase: bool = False) -> list[list[str]]:
    """Tokenized lines of a UTF-8 text file: whitespace-separated words, or (``unit="char"``) the
    characters of each line with whitespace runs collapsed to one space. Blank lines are kept (each
    becomes a lone end-of-line token, as in the standard WikiText protocol: 2,088,628 training
    words)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(str(path), "corpus file not found", "an existing UTF-8 text file")
    raw = path.read_bytes()
    if b"\x00" in raw[:65536]:
        raise InputError(str(path), "the file looks binary (NUL bytes)", "a UTF-8 text file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(str(path), f"not valid UTF-8 (byte {e.start})", "a UTF-8 text file") from None
    if lowercase:
        text = text.lower()
    if unit == "char":
        lines = [list(" ".join(ln.split())) for ln in text.splitlines()]
    elif unit == "word":
        lines = [ln.split() for ln in text.splitlines()]
    else:
        raise InputError("data.unit", f"found {unit!r}", "'word' or 'char'")
    if not any(lines):
        raise InputError(str(path), "the file is empty (no tokens)", "at least one word")
    return lines


def encode_lines(lines: Sequence[Sequence[str]], vocab: Vocabulary, where: str) -> np.ndarray:
    """Lines -> one int64 stream with ``vocab.eos`` after each line."""
    eos = vocab.stoi[vocab.eos]
    out: list[int] = []
    for line in lines:
        out.extend(vocab.encode(line, where))
        out.append(eos)
    return np.asarray(out, dtype=np.int64)


@dataclass
class Corpus:
    """A vocabulary and its train/valid/test id streams (1-D int64 arrays)."""

    vocab: Vocabulary
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    source: str = ""

    def split(self, name: str) -> np.ndarray:
        if name not in SPLITS:
            raise InputError("split", f"found {name!r}", "one of 'train', 'valid', 'test'")
        return getattr(self, name)


def verify_sha256(path: Path, expected: str) -> None:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != expected:
        raise InputError(str(path), f"sha256 {digest[:12]}... differs from the published WikiText-2 file",
                         f"sha256 {expected[:12]}... (re-clone or re-copy the data)")


def load_wikitext(folder: str | Path, verify: bool = True, vocab: Vocabulary | None = None, unit: str = "word",
                  lowercase: bool = False) -> Corpus:
    """WikiText ``wiki.{train,valid,test}.tokens``; vocabulary from train only (the paper's 33,278
    words with ``<eos>`` for WikiText-2). Checksums are verified for the WikiText-2 files."""
    folder = Path(folder)
    lines = {}
    for s in SPLITS:
        p = folder / f"wiki.{s}.tokens"
        if verify and p.name in WIKITEXT2_SHA256 and p.is_file() and p.stat().st_size > 1_000_000:
            verify_sha256(p, WIKITEXT2_SHA256[p.name])
        lines[s] = read_lines(p, unit, lowercase)
    vocab = vocab or Vocabulary.build(lines["train"], unit=unit)
    streams = {s: encode_lines(lines[s], vocab, str(folder / f"wiki.{s}.tokens")) for s in SPLITS}
    return Corpus(vocab, **streams, source=str(folder))


def load_text(train: str | Path, valid: str | Path, test: str | Path, max_vocab: int | None = None,
              vocab: Vocabulary | None = None, unit: str = "word", lowercase: bool = False) -> Corpus:
    """Any plain UTF-8 corpus: vocabulary from ``train`` (top ``max_vocab`` tokens, rest ``<unk>``)."""
    paths = dict(zip(SPLITS, (Path(train), Path(valid), Path(test))))
    lines = {s: read_lines(p, unit, lowercase) for s, p in paths.items()}
    vocab = vocab or Vocabulary.build(lines["train"], max_size=max_vocab, unit=unit)
    return Corpus(vocab, **{s: encode_lines(lines[s], vocab, str(paths[s])) for s in SPLITS}, source=str(paths["train"]))


def load_npy(folder: str | Path, eol: str = "<eol>") -> Corpus:
    """Course-handout format: ``vocab.npy`` + ``{train,valid,test}.npy`` object arrays of articles.

    Articles are concatenated into one stream; the ids already contain ``<eol>`` line ends.
    """
    folder = Path(folder)
    vpath = folder / "vocab.npy"
    if not vpath.is_file():
        raise InputError(str(vpath), "vocabulary file not found", "vocab.npy (array of words)")
    words = [str(w) for w in np.load(vpath, allow_pickle=False)]
    vocab = Vocabulary(words, eos=eol)
    if eol not in vocab:
        raise InputError(str(vpath), f"no line-end token {eol!r}", f"a vocabulary containing {eol!r}")
    streams = {}
    for s in SPLITS:
        p = folder / f"{s}.npy"
        if not p.is_file():
            raise InputError(str(p), "split file not found", "an .npy array of per-article id arrays")
        arts = load_articles(p)      # never runs code from the file (lm/npy_articles.py)
        stream = np.concatenate(arts) if arts else np.zeros(0, np.int64)
        if stream.size == 0:
            raise InputError(str(p), "no tokens", "at least one article with ids")
        bad = (stream < 0) | (stream >= len(vocab))
        if bad.any():
            raise InputError(str(p), f"id {int(stream[bad][0])} out of range", f"ids in [0, {len(vocab)})")
        streams[s] = stream
    return Corpus(vocab, **streams, source=str(folder))


def batchify(stream: np.ndarray | torch.Tensor, n: int) -> torch.Tensor:
    """Cut a 1-D stream into ``n`` contiguous rows (N, L), dropping the remainder.

    Batch-first, so row i is one long text that the hidden state follows from batch to batch::

        stream  a b c d e f g h i j k l m n o p q r s t u v w x (y z dropped), n = 4
        rows    [a b c d e f]
                [g h i j k l]
                [m n o p q r]
                [s t u v w x]
    """
    data = torch.as_tensor(np.asarray(stream), dtype=torch.long)
    length = data.numel() // n
    if length < 2:
        raise InputError("batchify", f"{data.numel()} tokens for {n} streams", f"at least {2 * n} tokens")
    return data[: length * n].view(n, length)


def bptt_length(rng: np.random.Generator, bptt: int, max_len: int, variable: bool = True) -> int:
    """The paper's variable BPTT length (section 4.1): bptt with prob 0.95 else bptt/2, then
    N(that, 5), at least 5, at most ``max_len``."""
    if not variable:
        return min(bptt, max_len)
    base = bptt if rng.random() < 0.95 else bptt / 2.0
    return int(min(max(5, int(rng.normal(base, 5))), max_len))


def mean_bptt_length(bptt: int, max_len: int, variable: bool = True) -> float:
    """Expected value of :func:`bptt_length`, exactly (a sum over the integers the truncated
    normal can give): about ``0.975 * bptt - 0.5`` for the paper's lengths, so an epoch has ~3%
    more windows than ``tokens / bptt``.

    >>> round(mean_bptt_length(70, 110), 2), mean_bptt_length(70, 110, variable=False)
    (67.75, 70)
    """
    if not variable:
        return min(bptt, max_len)

    def mean(mu: float) -> float:       # E[min(max(5, trunc(X)), max_len)], X ~ N(mu, 5)
        cdf = lambda x: 0.5 * (1.0 + math.erf((x - mu) / (5.0 * math.sqrt(2.0))))   # noqa: E731
        total = 0.0
        for k in range(int(mu) - 60, int(mu) + 61):  # trunc(X) = k: X in [k, k+1) for k > 0, (k-1, k] for k < 0
            p = cdf(k + 1) - cdf(k) if k > 0 else cdf(k) - cdf(k - 1) if k < 0 else cdf(1) - cdf(-1)
            total += p * min(max(5, k), max_len)
        return total
    return 0.95 * mean(float(bptt)) + 0.05 * mean(bptt / 2.0)


class BPTTIterator:
    """Walk batchified rows (N, L) in windows of variable length, batch-first.

    Yields ``(inputs, targets)`` of shape (N, T) with targets shifted by one. ``seq_len / bptt`` is
    the learning-rate scale of each window (section 4.1), available as ``last_scale``. Its
    position and generator make up ``state_dict()`` so a run can resume mid-epoch.

    Example:
        >>> it = BPTTIterator(batchify(np.arange(100), 2), bptt=10, seed=0, variable=False)
        >>> x, y = next(iter(it)); x.shape, int(y[0, 0])
        (torch.Size([2, 10]), 1)
    """

    def __init__(self, rows: torch.Tensor, bptt: int, seed: int = 0, variable: bool = True, max_extra: int = 40):
        self.rows, self.bptt, self.variable = rows, bptt, variable
        self.max_len = bptt + max_extra
        self.mean_len = mean_bptt_length(bptt, self.max_len, variable)   # once: ~0.2 ms, and len() is read per step
        self.rng = np.random.default_rng(seed)
        self.pos = 0
        self.last_scale = 1.0

    def __len__(self) -> int:
        """Expected number of windows per epoch (the lengths are random: a given epoch may have a
        few more or fewer); learning-rate schedules, averaging and validation points count by it."""
        return max(1, round((self.rows.size(1) - 1) / self.mean_len))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while self.pos < self.rows.size(1) - 1:
            seq = bptt_length(self.rng, self.bptt, self.max_len, self.variable)
            seq = min(seq, self.rows.size(1) - 1 - self.pos)
            x = self.rows[:, self.pos: self.pos + seq]
            y = self.rows[:, self.pos + 1: self.pos + 1 + seq]
            self.pos += seq
            self.last_scale = seq / self.bptt
            yield x, y
        self.pos = 0

    def state_dict(self) -> dict:
        return {"pos": self.pos, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, st: dict) -> None:
        self.pos = int(st["pos"])
        self.rng.bit_generator.state = st["rng"]


class LanguageModelDataLoader:
    """The training stream of ``corpus`` as (N, T) windows of variable length (the seed's loader).

    Holds the whole corpus so the trainer can reach the validation and test splits.
    """

    def __init__(self, corpus: Corpus, batch_size: int = 80, bptt: int = 70, variable: bool = True, seed: int = 0,
                 rows: slice = slice(None)):
        self.corpus, self.batch_size, self.bptt = corpus, batch_size, bptt
        # ``rows``: under torchrun each rank owns a contiguous slice of the batch_size streams; the
        # window lengths come from the same seed on every rank
        self.iterator = BPTTIterator(batchify(corpus.train, batch_size)[rows], bptt, seed, variable)

    def __iter__(self):
        return iter(self.iterator)

    def __len__(self) -> int:
        return len(self.iterator)


def load_corpus(cfg, vocab: Vocabulary | None = None) -> Corpus:
    """Corpus described by a :class:`lstmkit.lm.config.DataConfig`. Relative paths that do not
    exist from the working directory are looked up in the project checkout (vendored data)."""
    path = resolve_data_path(cfg.path)
    if cfg.format == "wikitext":
        corpus = load_wikitext(path, vocab=vocab, unit=cfg.unit, lowercase=cfg.lowercase)
    elif cfg.format == "npy":
        corpus = load_npy(path)
    else:
        if path.is_dir():
            train, valid, test = path / "train.txt", path / "valid.txt", path / "test.txt"
        else:
            train = path
            valid = Path(cfg.valid_path) if cfg.valid_path else path.with_name("valid.txt")
            test = Path(cfg.test_path) if cfg.test_path else path.with_name("test.txt")
        corpus = load_text(train, valid, test, max_vocab=cfg.max_vocab, vocab=vocab, unit=cfg.unit,
                           lowercase=cfg.lowercase)
    return slice_corpus(corpus, getattr(cfg, "max_train_tokens", 0), getattr(cfg, "max_eval_tokens", 0))


def slice_corpus(corpus: Corpus, max_train: int = 0, max_eval: int = 0) -> Corpus:
    """The first ``max_train`` training and ``max_eval`` validation/test tokens (0 = all): smoke runs
    and quick trials. The vocabulary stays that of the whole corpus."""
    cut = (lambda a, n: a[:n] if n else a)
    if not max_train and not max_eval:
        return corpus
    return Corpus(corpus.vocab, cut(corpus.train, max_train), cut(corpus.valid, max_eval), cut(corpus.test, max_eval),
                  source=corpus.source)


def resolve_data_path(p: str | Path) -> Path:
    p = Path(p)
    if p.exists() or p.is_absolute():
        return p
    shipped = Path(__file__).resolve().parents[1] / p  # lstmkit/data/wikitext-2: the demo corpus, installed too
    return shipped if shipped.exists() else p
