"""The ``lstmkit`` argument parser: every command and flag, with help and defaults.
``docs/cli.md`` carries :func:`reference`'s output (a test keeps them equal)."""
from __future__ import annotations

import argparse

from .cli_types import (Parser, finite_float, float_list, new_tokens, nonneg_float, nonneg_int, positive_float,
                        positive_int, probability_mass, unit_half_open, unit_interval)

DESCRIPTION = ("AWD-LSTM language models and Listen, Attend and Spell. Commands: lm train | finetune | eval | "
               "generate, las make-toy | prepare | train | decode | transcribe | plot, configs.")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("lstmkit")
    except PackageNotFoundError:
        return "unknown"


def _train_flags(t, run_id_help: str) -> None:
    t.add_argument("--max-minutes", type=positive_float, help="stop after this much training time, with a checkpoint "
                   "(default: the config's train.max_minutes)")
    t.add_argument("--epochs", type=positive_int, help="train at most this many epochs (default: the config's train.epochs)")
    t.add_argument("--run-id", help=run_id_help)
    t.add_argument("--runs-dir", help="parent folder of run folders (default: the config's train.runs_dir, runs)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field, e.g. optim.lr=20 "
                   "(repeatable)")


def _export(sub, about: str, run: str, example: str) -> None:
    x = sub.add_parser("export", help=about)
    x.add_argument("run", help=run)
    x.add_argument("out", help=f"the file to write, e.g. {example}")
    x.add_argument("--checkpoint", default="best", choices=("best", "last"), help="which checkpoint to export")


def _device(p) -> None:
    p.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda or cuda:N")


def _threads(p) -> None:
    p.add_argument("--threads", type=positive_int, help="CPU threads for torch (default: torch's own choice)")


def build_parser(funcs: dict) -> argparse.ArgumentParser:
    """The parser; ``funcs`` maps 'lm train', 'las decode', ... to the functions that run them."""
    p = Parser(prog="lstmkit", description=DESCRIPTION)
    p.add_argument("--version", action="version", version=f"lstmkit {_version()}")
    top = p.add_subparsers(dest="family", required=True, metavar="{lm,las,configs}")
    lm = top.add_parser("lm", help="AWD-LSTM word language model").add_subparsers(dest="cmd", required=True)

    t = lm.add_parser("train", help="train from a TOML config (or resume a run)")
    t.add_argument("--config", help="a TOML file or a built-in name (`lstmkit configs`), e.g. tiny or wt2-cpu; "
                   "required unless --resume")
    t.add_argument("--resume", metavar="RUN", help="continue the run folder RUN from its last checkpoint")
    _train_flags(t, "name of the run folder (default: unix time)")
    t.add_argument("--fit-epochs", action="store_true", help="time a few steps here first, then set train.epochs to "
                   "what fits in the time budget, so the learning-rate schedule ends inside it (train.fit_epochs)")

    f = lm.add_parser("finetune", help="the paper's fine-tuning stage: averaged training from a run's best weights")
    f.add_argument("run", help="the run folder to fine-tune (its best checkpoint)")
    _train_flags(f, "name of the new run folder (default: RUN-finetune)")

    e = lm.add_parser("eval", help="perplexity (paper protocol), fixed-context NLL, neural cache, dynamic evaluation")
    e.add_argument("run", help="a language-model run folder")
    e.add_argument("--split", default="test", choices=("valid", "test"), help="which split to score")
    e.add_argument("--checkpoint", default="best", choices=("best", "last"), help="which checkpoint to load")
    e.add_argument("--batch-size", type=positive_int, help="stream rows (default: the config's test/eval batch size)")
    e.add_argument("--n-contexts", type=nonneg_int, default=2000, help="20-word contexts for the fixed-context NLL "
                   "(0 = skip)")
    e.add_argument("--seed", type=int, default=0, help="which contexts are drawn")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    e.add_argument("--precision", default="fp32", choices=("auto", "fp32", "bf16"), help="autocast precision")
    _threads(e)
    e.add_argument("--cache", action="store_true", help="add the neural cache (Grave et al. 2016)")
    e.add_argument("--window", type=positive_int, default=3785, help="cache window (tokens)")
    e.add_argument("--theta", type=nonneg_float, default=0.6625, help="cache flatness: softmax(theta * h_t . h_i)")
    e.add_argument("--lambda", dest="lam", type=unit_interval, default=0.1279, help="cache weight in the mixture")
    e.add_argument("--cache-grid", action="store_true", help="pick theta and lambda on the valid split first")
    e.add_argument("--grid-thetas", type=float_list, default="0.1,0.2,0.3,0.5,0.7,1.0", help="thetas of the grid")
    e.add_argument("--grid-lambdas", type=float_list, default="0.05,0.1,0.15,0.2,0.25,0.3", help="lambdas of the grid")
    e.add_argument("--dynamic-eval", action="store_true", help="adapt the weights on the stream (Krause et al. 2017)")
    e.add_argument("--de-method", default="rms", choices=("rms", "sgd"), help="the paper's RMS-normalized rule or SGD")
    e.add_argument("--de-lr", type=nonneg_float, default=2e-5, help="step size of each update")
    e.add_argument("--de-decay", type=unit_half_open, default=0.02, help="pull back toward the trained weights (lambda)")
    e.add_argument("--de-bptt", type=positive_int, default=5, help="segment length: one update per segment")
    e.add_argument("--de-batch-size", type=positive_int, default=1, help="stream rows adapted on jointly")
    e.add_argument("--de-eps", type=nonneg_float, default=1e-3, help="rms: added to the gradient RMS")
    e.add_argument("--de-grad-batches", type=nonneg_int, default=100,
                   help="rms: training windows (of --de-bptt tokens, 100 rows) for the gradient statistics; 0 = all")

    g = lm.add_parser("generate", help="continue a prompt (streamed word by word)")
    g.add_argument("run", help="a language-model run folder")
    g.add_argument("--prompt", required=True, help="the text to continue")
    g.add_argument("--max-new-tokens", type=new_tokens, default=20, help="words to generate (at most 100,000)")
    g.add_argument("--checkpoint", default="best", choices=("best", "last"), help="which checkpoint to load")
    g.add_argument("--temperature", type=positive_float, help="sample with this temperature (default: greedy)")
    g.add_argument("--top-k", type=positive_int, help="sample among the k most likely words")
    g.add_argument("--top-p", type=probability_mass, help="sample from the smallest set with this probability mass")
    g.add_argument("--seed", type=int, help="makes sampling reproducible")
    g.add_argument("--beam", type=positive_int, default=1, help="beam search width (1 = greedy/sampling, streamed)")
    g.add_argument("--repetition-penalty", type=positive_float, default=1.0, help="> 1 discourages words already used")
    g.add_argument("--no-repeat-ngram-size", type=nonneg_int, default=0, help="never repeat an n-gram of this size")
    g.add_argument("--no-stream", action="store_true", help="print the continuation at the end, not word by word")
    _device(g)
    _threads(g)

    _export(lm, "one TorchScript file that plain PyTorch loads (torch.jit.load), vocabulary inside",
            "a language-model run folder", "lm.pt")

    top.add_parser("configs", help="list the built-in configs (--config NAME)")
    las = top.add_parser("las", help="Listen, Attend and Spell").add_subparsers(dest="cmd", required=True)
    m = las.add_parser("make-toy", help="write a toy speech data set in the real-data folder layout")
    m.add_argument("out", help="a new (or empty) folder")
    m.add_argument("--n-train", type=positive_int, default=5000, help="training utterances")
    m.add_argument("--n-val", type=positive_int, default=500, help="validation utterances")
    m.add_argument("--n-bands", type=positive_int, default=40, help="feature bands per frame")
    m.add_argument("--seed", type=int, default=0, help="which utterances are drawn")

    t = las.add_parser("train", help="train LAS from a TOML config (or resume a run)")
    t.add_argument("--config", default="las-toy", help="a TOML file or a built-in name (`lstmkit configs`)")
    t.add_argument("--data", help="data folder with train/ and val/ (default: toy data generated in memory)")
    t.add_argument("--resume", metavar="RUN", help="continue the run folder RUN from its last checkpoint")
    _train_flags(t, "name of the run folder (default: unix time)")

    d = las.add_parser("decode", help="decode a data split folder; prints id TAB text, CER/WER on stderr")
    d.add_argument("run", help="a LAS run folder")
    d.add_argument("data", help="a split folder (transcripts.tsv + feats/)")
    d.add_argument("--checkpoint", default="best", choices=("best", "last"), help="which checkpoint to load")
    d.add_argument("--batch-size", type=positive_int, default=64, help="utterances per batch")
    d.add_argument("--beam", type=positive_int, default=1, help="beam width (1 = greedy)")
    d.add_argument("--length-norm", type=nonneg_float, default=1.0, help="finished score / length ** this (beam > 1)")
    d.add_argument("--window", type=nonneg_int, help="attend only within [peak-1, peak+W] frames of the previous "
                   "step's peak (0 = off; default: the model's decode_window)")
    d.add_argument("--lm", help="shallow fusion with this character-level LM run folder (data.unit = \"char\")")
    d.add_argument("--lm-weight", type=nonneg_float, default=0.3, help="lambda: score = log p_LAS + lambda * log p_LM")
    d.add_argument("--length-bonus", type=finite_float, default=0.0, help="added to the score per emitted character")
    d.add_argument("--ctc-weight", type=unit_interval, help="joint CTC/attention decoding: score = (1-w) attention + "
                   "w CTC prefix score (default: the run's train.val_ctc_weight; 0 = attention alone)")
    _device(d)
    _threads(d)

    pr = las.add_parser("prepare", help="wav corpus / FSDD / LibriSpeech-mini -> LAS data folders (feats + transcripts)")
    pr.add_argument("data_in", help="corpus folder (see docs/data-formats.md)")
    pr.add_argument("out", help="new folder for <split>/transcripts.tsv + feats/ and features.json")
    pr.add_argument("--recipe", default="folder", choices=("folder", "fsdd", "librispeech-mini"), help="input layout")
    pr.add_argument("--split", default="official", choices=("official", "speaker"), help="fsdd: take-index or "
                    "held-out speaker")
    pr.add_argument("--held-out", default="theo", help="fsdd --split speaker: the validation speaker")
    pr.add_argument("--n-train", type=positive_int, default=3000, help="fsdd: digit-string training utterances")
    pr.add_argument("--n-val", type=positive_int, default=300, help="fsdd: digit-string validation utterances")
    pr.add_argument("--seed", type=int, default=0, help="fsdd: which digit strings are drawn")
    pr.add_argument("--speed-perturb", type=unit_half_open, default=0.0,
                    help="fsdd: play each training utterance at a random speed in 1 +- this (Ko et al. 2015); 0 = off")
    pr.add_argument("--level-dbfs", type=finite_float, help="fsdd: scale every recording to this RMS level (e.g. -26) "
                    "before joining; FSDD speakers were recorded up to 20 dB apart")
    pr.add_argument("--gain-db", type=nonneg_float, default=0.0, help="fsdd: random gain in +- this many dB per "
                    "training recording")
    pr.add_argument("--noise-snr-db", type=finite_float, nargs=2, metavar=("LO", "HI"),
                    help="fsdd: add white noise to each training utterance at a random SNR in [LO, HI] dB")
    pr.add_argument("--bands", type=positive_int, default=40, help="mel bands (librispeech-mini: pool 80 -> this)")
    pr.add_argument("--hop-ms", type=positive_float, default=10.0, help="frame shift (window stays 25 ms)")
    pr.add_argument("--sample-rate", type=positive_int, help="resample audio to this rate (fsdd default 8000, "
                    "folder 16000)")

    tr = las.add_parser("transcribe", help="transcribe audio files with a trained run (its own feature settings)")
    tr.add_argument("run", help="a LAS run trained on a folder from `lstmkit las prepare`")
    tr.add_argument("audio", nargs="+", help="WAV/FLAC files (any sample rate: resampled as the run's features were)")
    tr.add_argument("--checkpoint", default="best", choices=("best", "last"), help="which checkpoint to load")
    tr.add_argument("--beam", type=positive_int, default=1, help="beam width (1 = greedy)")
    tr.add_argument("--ctc-weight", type=unit_interval, help="joint CTC/attention weight (default: the run's)")
    tr.add_argument("--lm", help="shallow fusion with this character-level LM run")
    tr.add_argument("--lm-weight", type=nonneg_float, default=0.3, help="LM weight with --lm")
    tr.add_argument("--batch-size", type=positive_int, default=16, help="files per batch")
    _device(tr)
    _threads(tr)

    _export(las, "one TorchScript file (methods listen and step) that plain PyTorch loads", "a LAS run folder", "las.pt")

    pl = las.add_parser("plot", help="labelled re-plots of a run's attention.npy into attention_plots/replot/")
    pl.add_argument("run", help="a LAS run folder")

    for path, parser in commands(p):
        parser.set_defaults(func=funcs[path])
    return p


def commands(parser: argparse.ArgumentParser, path: str = "") -> list[tuple[str, argparse.ArgumentParser]]:
    """Every leaf command as ('lm train', its parser), in order."""
    out = []
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sub in a.choices.items():
                name = f"{path} {name}".strip()
                subs = commands(sub, name)
                out += subs if subs else [(name, sub)]
    return out


def reference(parser: argparse.ArgumentParser) -> str:
    """Markdown of every command and flag (what docs/cli.md carries under "Reference")."""
    lines = []
    for name, sub in commands(parser):
        lines += [f"### `lstmkit {name}`", "", sub.description or _help_of(parser, name), "", "| argument | default | |",
                  "|---|---|---|"]
        for a in sub._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            flag = ", ".join(a.option_strings) or a.dest.upper()
            default = "" if a.default in (None, False, argparse.SUPPRESS) or a.required else f"`{a.default}`"
            lines.append(f"| `{flag}` | {default} | {(a.help or '').replace('|', '/')} |")
        lines.append("")
    return "\n".join(lines)


def _help_of(parser, name: str) -> str:
    *family, leaf = name.split()
    p = parser
    for part in family:
        p = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices[part]
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return next((c.help for c in sub._choices_actions if c.dest == leaf), "")


def update_docs(path: str = "docs/cli.md") -> None:
    """Rewrite the Reference section of docs/cli.md from the parser: ``python -m lstmkit.cli_parser``."""
    from pathlib import Path
    from .cli import build_parser as build
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    head = text[: text.index("## Reference")] if "## Reference" in text else text.rstrip() + "\n\n"
    p.write_text(head + "## Reference\n\nGenerated from the parser by `python -m lstmkit.cli_parser`; `tests/test_docs.py` "
                 "checks that it is current.\n\n" + reference(build()).rstrip() + "\n", encoding="utf-8")


if __name__ == "__main__":
    update_docs()
