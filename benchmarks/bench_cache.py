"""Neural cache scoring speed: tokens/s of ``lstmkit.lm.cache.NeuralCache`` against the reference
approach measured in the same run.

(a) lstmkit: one similarity matmul per window of ``bptt`` tokens, a causal window mask and a
    comparison of stored next words with the targets - nothing of vocabulary size.
(b) reference: what the AWD-LSTM repository's ``pointer.py`` does - a Python loop over tokens; for
    each, softmax over the stored states, then the cache distribution over the **whole vocabulary**
    as (window x V) one-hot next words weighted by the attention, mixed with the model's softmax.
    It is timed on the first ``--ref-tokens`` tokens only (it is slow) and reported per token.

Both get the same hidden states (random, or a trained model's with ``--run``) and must agree on
the loss of the tokens both scored.

    python benchmarks/bench_cache.py                         # random states, WT2 sizes
    python benchmarks/bench_cache.py --run runs/wt2cpu-60min # a trained model's test stream
"""
from __future__ import annotations

import argparse
import platform
import time

import torch

from lstmkit.lm.cache import NeuralCache, stream_states
from lstmkit.cli_types import nonneg_float, positive_int, unit_interval


def reference_loss(h: torch.Tensor, y: torch.Tensor, logp_vocab: torch.Tensor, vocab: int, window: int,
                   theta: float, lam: float) -> torch.Tensor:
    """Per-token loop as in pointer.py: h (L, H), y (L,), full model log-probs (L, V) -> NLL (L,)."""
    out = []
    onehot = torch.nn.functional.one_hot(y, vocab).float()                    # next word of every position
    for t in range(h.size(0)):
        p = logp_vocab[t].exp()
        lo = max(0, t - window)
        if t > lo:
            attn = torch.softmax(theta * (h[lo:t] @ h[t]), 0)                  # (W,)
            p_cache = (attn[:, None] * onehot[lo:t]).sum(0)                    # (V,)
            p = (1 - lam) * p + lam * p_cache
        out.append(-torch.log(p[y[t]]))
    return torch.stack(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="score a trained run's test stream instead of random states")
    ap.add_argument("--tokens", type=positive_int, default=20000)
    ap.add_argument("--ref-tokens", type=positive_int, default=300)
    ap.add_argument("--vocab", type=positive_int, default=33278)
    ap.add_argument("--hidden", type=positive_int, default=650)
    ap.add_argument("--window", type=positive_int, default=3785)
    ap.add_argument("--theta", type=nonneg_float, default=0.6625)
    ap.add_argument("--lam", type=unit_interval, default=0.1279)
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.run:
        from lstmkit.lm import LMConfig, load_corpus, load_model
        from lstmkit.config import load_toml
        model = load_model(args.run)
        cfg = load_toml(LMConfig, f"{args.run}/config.toml")
        stream = load_corpus(cfg.data, vocab=model.vocab).test[: args.tokens + 1]
        parts = list(stream_states(model, stream, 1, 70))
        h = torch.cat([p[0][0] for p in parts]); y = torch.cat([p[1][0] for p in parts])
        logp_y = torch.cat([p[2][0] for p in parts])
        with torch.no_grad():
            logp_full = model.decode(h[: args.ref_tokens][None])[0].float().log_softmax(-1)
        vocab = len(model.vocab)
    else:
        vocab = args.vocab
        h = torch.randn(args.tokens, args.hidden) / args.hidden ** 0.5 * 3
        y = torch.randint(0, vocab, (args.tokens,)) % 3000                     # a skewed, repeating vocabulary
        logp_full = torch.log_softmax(torch.randn(args.ref_tokens, vocab), -1)
        logp_y = torch.log_softmax(torch.randn(args.tokens, 50), -1)[:, 0]
        logp_y[: args.ref_tokens] = logp_full.gather(1, y[: args.ref_tokens, None])[:, 0]
    n = h.size(0)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{n} tokens, window {args.window}, V {vocab}")

    cache = NeuralCache(args.window, args.theta, args.lam)
    t0 = time.perf_counter()
    ours = torch.cat([-cache(h[None, i: i + 70], y[None, i: i + 70], logp_y[None, i: i + 70])[0]
                      for i in range(0, n, 70)])
    t_ours = time.perf_counter() - t0

    k = min(args.ref_tokens, n)
    t0 = time.perf_counter()
    ref = reference_loss(h[:k], y[:k], logp_full[:k], vocab, args.window, args.theta, args.lam)
    t_ref = time.perf_counter() - t0
    diff = float((ours[:k] - ref).abs().max())
    ours_tps, ref_tps = n / t_ours, k / t_ref
    print(f"{'implementation':<34} {'tokens/s':>12} {'ratio':>8}")
    print(f"{'reference (pointer.py loop)':<34} {ref_tps:>12,.0f} {1.0:>8.2f}")
    print(f"{'lstmkit NeuralCache':<34} {ours_tps:>12,.0f} {ours_tps / ref_tps:>8.1f}")
    print(f"# max |NLL difference| on the {k} tokens both scored: {diff:.2e}; "
          f"mean NLL lstmkit {float(ours.mean()):.4f} over {n} tokens")
    # The states are the same for any theta/lambda: the whole WT2 test set (245,569 tokens) at this
    # rate takes this long for the cache part alone.
    print(f"# cache part of a full WT2 test pass: {245569 / ours_tps:.1f} s (lstmkit), "
          f"{245569 / ref_tps / 3600:.1f} h (reference)")
    assert diff < 1e-3, diff


if __name__ == "__main__":
    main()
