"""Command line: ``lstmkit lm train|eval|generate``, ``lstmkit las make-toy|train|decode|plot``.

User errors (:class:`InputError`) print one line and exit with status 2; Ctrl-C during training
writes a checkpoint and exits with status 130.
"""
from __future__ import annotations

import argparse
import json
import sys

from .cli_types import (Parser, finite_float, float_list, new_tokens, nonneg_float, nonneg_int, positive_float,
                        positive_int, probability_mass, unit_half_open, unit_interval)
from .cli_las import las_decode, las_make_toy, las_plot, las_prepare, las_train, las_transcribe
from .config import resolve_config
from .errors import InputError


def _overrides(args) -> dict:
    """``--set k=v`` flags plus the train flags shared by ``lm train`` and ``las train``."""
    from .config import merge, parse_override
    out: dict = {}
    for s in args.set or []:
        out = merge(out, parse_override(s))
    for flag, key in (("max_minutes", "max_minutes"), ("epochs", "epochs"), ("runs_dir", "runs_dir")):
        if getattr(args, flag, None) is not None:
            out = merge(out, {"train": {key: getattr(args, flag)}})
    if getattr(args, "data", None) is not None:
        out = merge(out, {"data": {"path": args.data}})
    return out


def _fit(trainer) -> int:
    main = getattr(trainer, "dist", None) is None or trainer.dist.main      # torchrun: rank 0 speaks
    if main:
        print(f"run folder: {trainer.run.path}", flush=True)
    res = trainer.fit()
    if main:
        print(json.dumps(res))
    return 130 if trainer._flag and trainer._flag.stop else 0


def lm_train(args) -> int:
    from .lm import LanguageModelTrainer, LMConfig
    over = _overrides(args)
    if args.resume:
        return _fit(LanguageModelTrainer.resume(args.resume, over))
    if args.config is None:
        raise InputError("--config", "missing", "a config file or a built-in name, e.g. --config tiny (a smoke run in "
                         "seconds) or --config wt2-cpu (60 minutes); `lstmkit configs` lists them")
    return _fit(LanguageModelTrainer.from_config(LMConfig.load(resolve_config(args.config), over), args.run_id))


def list_configs(args) -> int:
    from .config import BUILTIN_CONFIGS, builtin_configs
    for name, about in builtin_configs().items():
        print(f"{name:24s} {about}")
    print(f"(files in {BUILTIN_CONFIGS}; use --config NAME)")
    return 0


def lm_finetune(args) -> int:
    from .lm import LanguageModelTrainer
    return _fit(LanguageModelTrainer.finetune(args.run, args.run_id, _overrides(args)))


def lm_eval(args) -> int:
    import time
    from .core.device import pick_runtime
    from .lm import LMConfig, load_corpus, load_model, stream_loss
    from .lm.evaluate import draw_contexts, fixed_context_nll, perplexity
    from .config import load_toml
    model = load_model(args.run, args.checkpoint)
    cfg = load_toml(LMConfig, f"{args.run}/config.toml")
    corpus = load_corpus(cfg.data, vocab=model.vocab if cfg.data.format != "npy" else None)
    stream = corpus.split(args.split)
    bs = args.batch_size or (cfg.data.test_batch_size if args.split == "test" else cfg.data.eval_batch_size)
    rt = pick_runtime(args.device, args.precision)
    model.to(rt.device)
    out: dict = {"split": args.split, "batch_size": bs}
    cache = None
    if not (args.cache or args.cache_grid):
        t0 = time.time()
        loss = stream_loss(model, stream, bs, cfg.data.bptt, rt, progress=args.split)
        out.update(loss=loss, ppl=perplexity(loss), seconds=round(time.time() - t0, 1))
    else:
        from .lm.cache import NeuralCache, cache_grid, cache_losses
        theta, lam = args.theta, args.lam
        if args.cache_grid:
            t0 = time.time()
            grid = cache_grid(model, corpus.valid, args.grid_thetas, args.grid_lambdas, args.window, bs, cfg.data.bptt, rt)
            best = min(grid, key=lambda r: r["loss"])
            theta, lam = best["theta"], best["lambda"]
            out["cache_grid_valid"] = {"best": best, "seconds": round(time.time() - t0, 1), "n": len(grid)}
        t0 = time.time()   # one pass gives the model's loss and the cache's
        res = cache_losses(model, stream, args.window, theta, lam, bs, cfg.data.bptt, rt)
        c, seconds = res["cache_loss"], round(time.time() - t0, 1)
        out.update(loss=res["loss"], ppl=perplexity(res["loss"]), seconds=seconds)
        out["cache"] = {"window": args.window, "theta": theta, "lambda": lam, "loss": c, "ppl": perplexity(c),
                        "seconds": seconds}
        cache = NeuralCache(args.window, theta, lam)           # fresh, for the dynamic-evaluation pass
    if args.dynamic_eval:
        from .lm.dynamic_eval import DynamicEvalConfig, dynamic_eval_losses, gradient_rms
        de = DynamicEvalConfig(method=args.de_method, lr=args.de_lr, decay=args.de_decay, bptt=args.de_bptt,
                               batch_size=args.de_batch_size, eps=args.de_eps, grad_batches=args.de_grad_batches)
        de.check()
        t0 = time.time()
        rms = gradient_rms(model, corpus.train, de.grad_batches, de.stats_bptt, de.grad_batch_size, rt) \
            if de.method == "rms" else None
        res = dynamic_eval_losses(model, stream, de, rms, rt, cache, progress="dynamic evaluation")      # the cache's pass rides along
        d = res["dynamic"]
        out["dynamic_eval"] = {**vars(de), "loss": d, "ppl": perplexity(d), "seconds": round(time.time() - t0, 1)}
        if cache is not None:
            out["dynamic_eval_cache"] = {"loss": res["dynamic_cache"], "ppl": perplexity(res["dynamic_cache"])}
    if args.n_contexts:
        ctx, tgt = draw_contexts(stream, args.n_contexts, 20, seed=args.seed)
        out.update(fixed_context_nll=fixed_context_nll(model.cpu(), ctx, tgt), n_contexts=args.n_contexts)
    print(json.dumps(out))
    return 0


def lm_generate(args) -> int:
    import numpy as np
    from .lm import TestLanguageModel, load_model
    model = load_model(args.run, args.checkpoint)
    words = model.vocab.tokenize(args.prompt)
    if not words:
        raise InputError("--prompt", "empty prompt", "at least one word")
    unknown = [w for w in words if w not in model.vocab]
    if unknown and model.vocab.unk is None:
        raise InputError("--prompt", f"word {unknown[0]!r} is not in the vocabulary", "known words")
    if unknown:
        print(f"note: {len(unknown)} prompt word(s) not in the vocabulary, read as <unk>: {unknown[:5]}", file=sys.stderr)
    ids = np.asarray([model.vocab.encode(words)], dtype=np.int64)
    opts = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                repetition_penalty=args.repetition_penalty, no_repeat_ngram_size=args.no_repeat_ngram_size)
    if args.beam > 1 or args.no_stream:
        out = TestLanguageModel.generation(ids, args.max_new_tokens, model, beam=args.beam, **opts)
        print(model.vocab.join(model.vocab.decode(out[0])))
        return 0
    from .lm.generate import iter_generation
    sep = "" if model.vocab.unit == "char" else " "
    for i, nxt in enumerate(iter_generation(ids, args.max_new_tokens, model, **opts)):   # print as it comes
        print((sep if i else "") + model.vocab.itos[int(nxt[0])], end="", flush=True)
    print()
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="lstmkit", description=__doc__.splitlines()[0])
    from importlib.metadata import PackageNotFoundError, version
    try:
        v = version("lstmkit")
    except PackageNotFoundError:
        v = "unknown"
    p.add_argument("--version", action="version", version=f"lstmkit {v}")
    top = p.add_subparsers(dest="family", required=True)
    lm = top.add_parser("lm", help="AWD-LSTM word language model").add_subparsers(dest="cmd", required=True)

    t = lm.add_parser("train", help="train from a TOML config (or resume a run)")
    t.add_argument("--config", help="a TOML file or a built-in name (`lstmkit configs`), e.g. tiny or wt2-cpu")
    t.add_argument("--resume", metavar="RUN", help="continue the run folder RUN from its last checkpoint")
    t.add_argument("--max-minutes", type=positive_float)
    t.add_argument("--epochs", type=positive_int)
    t.add_argument("--run-id", help="name of the run folder (default: unix time)")
    t.add_argument("--runs-dir", help="parent folder of run folders (default from config: runs)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field, e.g. optim.lr=20")
    t.set_defaults(func=lm_train)

    f = lm.add_parser("finetune", help="the paper's fine-tuning stage: averaged training from a run's best weights")
    f.add_argument("run")
    f.add_argument("--max-minutes", type=positive_float)
    f.add_argument("--epochs", type=positive_int)
    f.add_argument("--run-id", help="name of the new run folder (default: RUN-finetune)")
    f.add_argument("--runs-dir")
    f.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field, e.g. optim.lr=15")
    f.set_defaults(func=lm_finetune)

    e = lm.add_parser("eval", help="perplexity and fixed-context NLL of a trained run")
    e.add_argument("run")
    e.add_argument("--split", default="test", choices=("valid", "test"))
    e.add_argument("--checkpoint", default="best", choices=("best", "last"))
    e.add_argument("--batch-size", type=positive_int)
    e.add_argument("--n-contexts", type=nonneg_int, default=2000)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device", default="auto")
    e.add_argument("--precision", default="fp32", choices=("auto", "fp32", "bf16"))
    e.add_argument("--cache", action="store_true", help="add the neural cache (Grave et al. 2016)")
    e.add_argument("--window", type=positive_int, default=3785, help="cache window (tokens)")
    e.add_argument("--theta", type=nonneg_float, default=0.6625, help="cache flatness: softmax(theta * h_t . h_i)")
    e.add_argument("--lambda", dest="lam", type=unit_interval, default=0.1279, help="cache weight in the mixture")
    e.add_argument("--cache-grid", action="store_true", help="pick theta and lambda on the valid split first")
    e.add_argument("--grid-thetas", type=float_list, default="0.1,0.2,0.3,0.5,0.7,1.0")
    e.add_argument("--grid-lambdas", type=float_list, default="0.05,0.1,0.15,0.2,0.25,0.3")
    e.add_argument("--dynamic-eval", action="store_true", help="adapt the weights on the stream (Krause et al. 2017)")
    e.add_argument("--de-method", default="rms", choices=("rms", "sgd"))
    e.add_argument("--de-lr", type=nonneg_float, default=2e-5)
    e.add_argument("--de-decay", type=unit_half_open, default=0.02)
    e.add_argument("--de-bptt", type=positive_int, default=5, help="segment length: one update per segment")
    e.add_argument("--de-batch-size", type=positive_int, default=1)
    e.add_argument("--de-eps", type=nonneg_float, default=1e-3, help="rms: added to the gradient RMS (default 1e-3)")
    e.add_argument("--de-grad-batches", type=nonneg_int, default=100,
                   help="rms: training windows (of --de-bptt tokens, 100 rows) for the gradient statistics; 0 = all")
    e.set_defaults(func=lm_eval)

    g = lm.add_parser("generate", help="continue a prompt")
    g.add_argument("run")
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=new_tokens, default=20)
    g.add_argument("--checkpoint", default="best", choices=("best", "last"))
    g.add_argument("--temperature", type=positive_float)
    g.add_argument("--top-k", type=positive_int)
    g.add_argument("--top-p", type=probability_mass)
    g.add_argument("--seed", type=int)
    g.add_argument("--beam", type=positive_int, default=1, help="beam search width (1 = greedy/sampling, streamed)")
    g.add_argument("--repetition-penalty", type=positive_float, default=1.0, help="> 1 discourages words already used")
    g.add_argument("--no-repeat-ngram-size", type=nonneg_int, default=0, help="never repeat an n-gram of this size")
    g.add_argument("--no-stream", action="store_true", help="print the continuation at the end, not word by word")
    g.set_defaults(func=lm_generate)

    top.add_parser("configs", help="list the built-in configs (--config NAME)").set_defaults(func=list_configs)
    las = top.add_parser("las", help="Listen, Attend and Spell").add_subparsers(dest="cmd", required=True)
    m = las.add_parser("make-toy", help="write a toy speech data set in the real-data folder layout")
    m.add_argument("out")
    m.add_argument("--n-train", type=positive_int, default=5000)
    m.add_argument("--n-val", type=positive_int, default=500)
    m.add_argument("--n-bands", type=positive_int, default=40)
    m.add_argument("--seed", type=int, default=0)
    m.set_defaults(func=las_make_toy)

    t = las.add_parser("train", help="train LAS from a TOML config (or resume a run)")
    t.add_argument("--config", default="las-toy",
                   help="a TOML file or a built-in name (`lstmkit configs`); default: las-toy")
    t.add_argument("--data", help="data folder with train/ and val/ (default: toy data generated in memory)")
    t.add_argument("--resume", metavar="RUN")
    t.add_argument("--max-minutes", type=positive_float)
    t.add_argument("--epochs", type=positive_int)
    t.add_argument("--run-id")
    t.add_argument("--runs-dir")
    t.add_argument("--set", action="append", metavar="KEY=VALUE")
    t.set_defaults(func=las_train)

    d = las.add_parser("decode", help="decode a data split folder (greedy or beam); prints id TAB text, CER/WER on stderr")
    d.add_argument("run")
    d.add_argument("data", help="a split folder (transcripts.tsv + feats/)")
    d.add_argument("--checkpoint", default="best", choices=("best", "last"))
    d.add_argument("--batch-size", type=positive_int, default=64)
    d.add_argument("--beam", type=positive_int, default=1, help="beam width (1 = greedy)")
    d.add_argument("--length-norm", type=nonneg_float, default=1.0, help="finished score / length ** this (beam > 1)")
    d.add_argument("--window", type=nonneg_int, help="attend only within [peak-1, peak+W] frames of the previous "
                                              "step's peak (0 = off; default: the model's decode_window)")
    d.add_argument("--lm", help="shallow fusion with this character-level LM run folder (lstmkit lm train, data.unit = \"char\")")
    d.add_argument("--lm-weight", type=nonneg_float, default=0.3, help="lambda: score = log p_LAS + lambda * log p_LM")
    d.add_argument("--length-bonus", type=finite_float, default=0.0, help="added to the score per emitted character")
    d.add_argument("--ctc-weight", type=unit_interval, help="joint CTC/attention decoding: score = (1-w) attention + w CTC prefix "
                                                     "score (default: the run's train.val_ctc_weight; 0 = attention alone)")
    d.set_defaults(func=las_decode)

    pr = las.add_parser("prepare", help="wav corpus / FSDD / LibriSpeech-mini -> LAS data folders (feats + transcripts)")
    pr.add_argument("data_in", help="corpus folder (see docs/data-formats.md)")
    pr.add_argument("out", help="new folder for <split>/transcripts.tsv + feats/")
    pr.add_argument("--recipe", default="folder", choices=("folder", "fsdd", "librispeech-mini"))
    pr.add_argument("--split", default="official", choices=("official", "speaker"), help="fsdd: take-index or held-out speaker")
    pr.add_argument("--held-out", default="theo", help="fsdd --split speaker: the validation speaker")
    pr.add_argument("--n-train", type=positive_int, default=3000, help="fsdd: digit-string training utterances")
    pr.add_argument("--n-val", type=positive_int, default=300, help="fsdd: digit-string validation utterances")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--speed-perturb", type=unit_half_open, default=0.0,
                    help="fsdd: play each training utterance at a random speed in 1 +- this (pitch, formants and "
                         "tempo change together, Ko et al. 2015); 0 = off")
    pr.add_argument("--level-dbfs", type=finite_float, help="fsdd: scale every recording to this RMS level (e.g. -26) before "
                                                     "joining; FSDD speakers were recorded up to 20 dB apart")
    pr.add_argument("--gain-db", type=nonneg_float, default=0.0, help="fsdd: random gain in +- this many dB per training recording")
    pr.add_argument("--noise-snr-db", type=finite_float, nargs=2, metavar=("LO", "HI"),
                    help="fsdd: add white noise to each training utterance at a random SNR in [LO, HI] dB")
    pr.add_argument("--bands", type=positive_int, default=40, help="mel bands (librispeech-mini: pool 80 -> this)")
    pr.add_argument("--hop-ms", type=positive_float, default=10.0, help="frame shift (window stays 25 ms)")
    pr.add_argument("--sample-rate", type=positive_int, help="resample audio to this rate (fsdd default 8000, folder 16000)")
    pr.set_defaults(func=las_prepare)

    tr = las.add_parser("transcribe", help="transcribe audio files with a trained run (its own feature settings)")
    tr.add_argument("run", help="a LAS run trained on a folder from `lstmkit las prepare`")
    tr.add_argument("audio", nargs="+", help="WAV/FLAC files (any sample rate: resampled as the run's features were)")
    tr.add_argument("--checkpoint", default="best", choices=("best", "last"))
    tr.add_argument("--beam", type=positive_int, default=1, help="beam width (default 1: greedy)")
    tr.add_argument("--ctc-weight", type=unit_interval, help="joint CTC/attention weight (default: the run's)")
    tr.add_argument("--lm", help="shallow fusion with this character-level LM run")
    tr.add_argument("--lm-weight", type=nonneg_float, default=0.3, help="LM weight with --lm (default 0.3)")
    tr.add_argument("--batch-size", type=positive_int, default=16, help="files per batch (default 16)")
    tr.set_defaults(func=las_transcribe)

    pl = las.add_parser("plot", help="re-draw attention plots of a run from its attention.npy")
    pl.add_argument("run")
    pl.set_defaults(func=las_plot)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except InputError as e:
        print(f"lstmkit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lstmkit: interrupted", file=sys.stderr)
        return 130
    except OSError as e:        # disk full, read-only folder, permissions: one line, nothing written is lost
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"lstmkit: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
