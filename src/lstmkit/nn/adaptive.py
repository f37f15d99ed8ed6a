"""Mean NLL of an ``nn.AdaptiveLogSoftmaxWithLoss`` (Grave et al. 2017) that runs its linear
layers in the autocast dtype (bf16) while every log-softmax and per-token log-probability stays
fp32. The module's own ``forward`` under autocast keeps per-token values in the input dtype and
fails on mixed dtypes; run in fp32 instead, it is 2-4x slower on CPUs with bf16 matmul units."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def adaptive_nll(asm: nn.AdaptiveLogSoftmaxWithLoss, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood (fp32) of ``targets`` (M,) under ``asm`` given ``h`` (M, E).

    Example:
        >>> asm = nn.AdaptiveLogSoftmaxWithLoss(16, 20, [5, 10], div_value=2.0)
        >>> h, t = torch.randn(6, 16), torch.tensor([0, 4, 5, 9, 10, 19])
        >>> bool(torch.allclose(adaptive_nll(asm, h, t), asm(h, t).loss))
        True
    """
    return -adaptive_target_logprob(asm, h, targets).sum() / max(1, targets.numel())


def adaptive_target_logprob(asm: nn.AdaptiveLogSoftmaxWithLoss, h: torch.Tensor, targets: torch.Tensor,
                            dense: bool | None = None) -> torch.Tensor:
    """Per-token ``log p(target)`` (M,) fp32 under ``asm``; see :func:`adaptive_nll`.

    ``dense`` picks how the tail clusters are scored (None: by ``h``'s device, see
    :func:`choose_adaptive_path`). Gathered: each cluster's rows are found with ``nonzero`` and only
    they go through its projection, the least arithmetic, but the row count is read back to the
    host, which on a GPU waits for every queued kernel. Dense: every row goes through every cluster
    and rows of other clusters are ignored by the loss; shapes never depend on the data, so nothing
    is read back (and the step can be captured in a CUDA graph), for ~2x the decoder's arithmetic
    with the default 4x-shrinking clusters (still ~6x less than a full softmax over WikiText-2).

    >>> asm = nn.AdaptiveLogSoftmaxWithLoss(16, 20, [5, 10], div_value=2.0)
    >>> h, t = torch.randn(6, 16), torch.tensor([0, 4, 5, 9, 10, 19])
    >>> a, b = adaptive_target_logprob(asm, h, t, dense=False), adaptive_target_logprob(asm, h, t, dense=True)
    >>> bool(torch.allclose(a, b, atol=1e-6))
    True
    """
    if targets.dim() != 1 or targets.numel() != h.size(0):
        raise ValueError(f"targets: expected shape ({h.size(0)},), got {tuple(targets.shape)}")
    # the range check reads two numbers back: on a GPU that would wait for every queued kernel at
    # each step, so it runs on host data only (a GPU's gather below still refuses a bad id)
    if targets.numel() and targets.device.type == "cpu" and (int(targets.min()) < 0 or int(targets.max()) >= asm.n_classes):
        raise ValueError(f"targets: expected ids in [0, {asm.n_classes - 1}], "
                         f"found [{int(targets.min())}, {int(targets.max())}]")
    if dense is None:
        dense = choose_adaptive_path(h.device) == "dense"
    head_logp = F.log_softmax(asm.head(h).float(), dim=1)                  # (M, shortlist + clusters)
    column = targets.clone()
    out = torch.zeros(targets.numel(), dtype=torch.float32, device=h.device)
    bounds = [0] + asm.cutoffs                                             # asm.cutoffs ends with n_classes
    for i in range(1, len(bounds) - 1):                                    # tail cluster i: [bounds[i], bounds[i+1])
        low, high = bounds[i], bounds[i + 1]
        inside = (targets >= low) & (targets < high)
        if dense:
            column = torch.where(inside, asm.shortlist_size + i - 1, column)
            word = torch.where(inside, targets - low, -100)                # -100: not in this cluster, no loss
            out = out - F.cross_entropy(asm.tail[i - 1](h).float(), word, ignore_index=-100, reduction="none")
            continue
        rows = inside.nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        column[rows] = asm.shortlist_size + i - 1
        cluster_logp = F.log_softmax(asm.tail[i - 1](h.index_select(0, rows)).float(), dim=1)
        out = out.index_add(0, rows, cluster_logp.gather(1, (targets[rows] - low)[:, None]).squeeze(1))
    return out + head_logp.gather(1, column[:, None]).squeeze(1)


def choose_adaptive_path(device: torch.device) -> str:
    """``"gathered"`` on a CPU (least arithmetic; a host read costs nothing there), ``"dense"`` on an
    accelerator (no host synchronisation); see :func:`adaptive_target_logprob`.

    >>> choose_adaptive_path(torch.device("cpu")), choose_adaptive_path(torch.device("cuda"))
    ('gathered', 'dense')
    """
    return "gathered" if torch.device(device).type == "cpu" else "dense"
