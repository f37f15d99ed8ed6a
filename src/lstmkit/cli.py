"""Command line: lstmkit lm train | finetune | eval | generate, lstmkit las make-toy | prepare | train |
decode | transcribe | plot, lstmkit configs (the parser: cli_parser.py; the las commands: cli_las.py).

User errors (:class:`InputError`) print one line and exit with status 2; Ctrl-C during training
writes a checkpoint and exits with status 130.
"""
from __future__ import annotations

import json
import sys

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
    if getattr(args, "fit_epochs", False):
        out = merge(out, {"train": {"fit_epochs": True}})
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
    rt = pick_runtime(args.device, args.precision, where="--precision", device_where="--device")
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
    from .core.device import pick_runtime
    model = load_model(args.run, args.checkpoint).to(pick_runtime(args.device, "fp32", device_where="--device").device)
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


def lm_export(args) -> int:
    from .export import export_lm
    print(export_lm(args.run, args.out, args.checkpoint))
    return 0


def las_export(args) -> int:
    from .export import export_las
    print(export_las(args.run, args.out, args.checkpoint))
    return 0


FUNCS = {"lm export": lm_export, "las export": las_export, "lm train": lm_train, "lm finetune": lm_finetune, "lm eval": lm_eval, "lm generate": lm_generate,
         "configs": list_configs, "las make-toy": las_make_toy, "las train": las_train, "las decode": las_decode,
         "las prepare": las_prepare, "las transcribe": las_transcribe, "las plot": las_plot}


def build_parser():
    from .cli_parser import build_parser as build
    return build(FUNCS)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "threads", None):
        import torch
        torch.set_num_threads(args.threads)
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
    finally:
        from .core.distributed import close_distributed
        close_distributed()
