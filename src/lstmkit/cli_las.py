"""The ``lstmkit las ...`` commands (the parser is in :mod:`lstmkit.cli`)."""
from __future__ import annotations

import json
import sys

from .config import resolve_config
from .errors import InputError


def las_make_toy(args) -> int:
    from pathlib import Path
    from .las.data import Utterance, write_split
    from .las.toy import ToyConfig, generate
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise InputError(str(out), "folder exists and is not empty", "a new or empty folder (nothing is overwritten)")
    cfg = ToyConfig(n_train=args.n_train, n_val=args.n_val, seed=args.seed, n_bands=args.n_bands)
    for split in ("train", "val"):
        utts = [Utterance(f"{split}-{i:05d}", x, t, sp) for i, (x, t, sp) in enumerate(generate(cfg, split))]
        write_split(out / split, utts)
        print(f"{out / split}: {len(utts)} utterances")
    return 0


def las_prepare(args) -> int:
    from pathlib import Path
    from .las.features import FeatureConfig
    from .las.recipes import prepare_folder, prepare_fsdd, prepare_librispeech_mini
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise InputError(str(out), "folder exists and is not empty", "a new or empty folder (nothing is overwritten)")
    if not Path(args.data_in).is_dir():
        raise InputError(str(args.data_in), "folder not found", "the corpus folder to prepare")
    if args.recipe == "fsdd":
        cfg = FeatureConfig(n_bands=args.bands, sample_rate=args.sample_rate or 8000, hop_ms=args.hop_ms)
        counts = prepare_fsdd(args.data_in, out, args.split, args.held_out, args.n_train, args.n_val, args.seed, cfg,
                              speed_perturb=args.speed_perturb, level_dbfs=args.level_dbfs, gain_db=args.gain_db,
                              noise_snr_db=tuple(args.noise_snr_db) if args.noise_snr_db else None)
    elif args.recipe == "librispeech-mini":
        counts = prepare_librispeech_mini(args.data_in, out, pool_to=args.bands if args.bands != 80 else None)
    else:
        counts = prepare_folder(args.data_in, out, FeatureConfig(n_bands=args.bands, sample_rate=args.sample_rate or 16000,
                                                                 hop_ms=args.hop_ms))
    for split, n in counts.items():
        print(f"{out / split}: {n} utterances")
    return 0


def las_train(args) -> int:
    from .las import LASRunConfig, LASTrainer
    from .cli import _fit, _overrides
    over = _overrides(args)
    if args.resume:
        return _fit(LASTrainer.resume(args.resume, over))
    return _fit(LASTrainer(LASRunConfig.load(resolve_config(args.config), over), args.run_id))


def las_decode(args) -> int:
    import csv
    from .las import SpeechDataset, cer, load_las, wer
    from .las.data import collate
    from .las.decode import decode_texts
    from .core.device import pick_runtime
    dev = pick_runtime(args.device, "fp32", device_where="--device").device
    model, vocab = load_las(args.run, args.checkpoint)      # its decode_ctc_weight: the run's, unless --ctc-weight
    model.to(dev)
    if args.window is not None:
        model.speller.window = args.window
    ds = SpeechDataset.from_folder(args.data, vocab, model.config.n_bands, allow_empty=True)
    fusion = None
    if args.lm:
        from .las.fusion import CharLMFusion
        from .lm import load_model
        fusion = CharLMFusion(load_model(args.lm).to(dev), vocab)
    from .core.progress import Progress
    refs, hyps = [], []
    bar = Progress(len(ds), "decode", "utterances", "utterances/s")
    for i in range(0, len(ds), args.batch_size):
        idx = list(range(i, min(i + args.batch_size, len(ds))))
        bar.update(len(idx))
        b = collate([ds[j] for j in idx], vocab, idx)
        hyps += decode_texts(model, vocab, b.features, b.lengths, args.beam, args.ctc_weight, fusion, args.lm_weight,
                             args.length_norm, args.length_bonus)
        refs += [ds.utts[j].text for j in idx]
    bar.close()
    w = csv.writer(sys.stdout, delimiter="\t")
    for u, h in zip(ds.utts, hyps):
        w.writerow([u.id, h])
    scored = [(r, h) for r, h in zip(refs, hyps) if r]          # utterances without a reference are only transcribed
    res = {"n": len(ds), "n_scored": len(scored)}
    if scored:
        res.update(cer=cer(*zip(*scored)), wer=wer(*zip(*scored)))
    print(json.dumps(res), file=sys.stderr)
    return 0


def las_plot(args) -> int:
    import numpy as np
    from .core.plots import plot_attention
    from .core.runs import RunFolder
    run = RunFolder.open(args.run, "las")
    path = run.path / "attention.npy"
    if not path.is_file():
        raise InputError(str(path), "not found", "a LAS run folder that has validated at least once")
    try:
        att = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise InputError(str(path), f"unreadable ({str(e)[:100]})", "a float array (plots, steps, frames) written by training") from None
    if att.ndim != 3 or att.dtype.kind != "f" or not np.isfinite(att).all():
        raise InputError(str(path), f"array {att.dtype} {att.shape}", "finite floats of shape (plots, steps, frames)")
    preds = []      # the validation transcripts the attention belongs to (first rows of predictions.csv)
    if (run.path / "predictions.csv").is_file():
        import csv
        with open(run.path / "predictions.csv", encoding="utf-8", newline="") as f:
            preds = [(r.get("id", ""), r.get("prediction", "")) for r in csv.DictReader(f)]
    for i, a in enumerate(att):
        rows = a[a.sum(-1) > 0]
        cols = int((a.sum(0) > 0).nonzero()[0].max()) + 1 if rows.size else a.shape[1]
        uid, hyp = preds[i] if i < len(preds) else (f"utterance {i}", None)
        labels = list(hyp) + ["<eos>"] if hyp is not None and len(hyp) + 1 == rows.shape[0] else None
        out = run.file(f"attention_plots/replot/attention_{i}.png")     # the training plots stay as they are
        plot_attention(out, rows[:, :cols], labels, title=f"{uid}: {hyp!r}" if hyp is not None else f"attention {i}",
                       ylabel="predicted character" if labels else "output step")
        print(out)
    return 0


def las_transcribe(args) -> int:
    from .las import transcribe
    texts = transcribe(args.run, args.audio, beam=args.beam, ctc_weight=args.ctc_weight, lm=args.lm,
                       lm_weight=args.lm_weight, batch_size=args.batch_size, checkpoint=args.checkpoint,
                       device=args.device)
    for path, text in zip(args.audio, texts):
        print(f"{path}\t{text}", flush=True)
    return 0
