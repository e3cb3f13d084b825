"""Per-token divergences between a teacher's distribution p and a student's q, for logit
distillation from the teacher's STORED top-k log-probs.

The teacher is known only by its top k ids and their log-probs under its full distribution
(temperature 1, so they sum to at most 1 in probability; generation/topk.py stores them). Both
distributions are put on a common support of buckets:

- ``topk_mode="tail"`` (default): the k ids plus one tail bucket holding all the remaining mass.
  The teacher's tail is ``1 - sum(top k)``, so the student is not told that every other token
  has probability 0.
- ``topk_mode="renormalize"``: the k ids only, each distribution renormalized over them. This
  overstates the top k's confidence (a teacher with 0.7 on its top k reads as 1.0) and pushes
  the student's mass off every other token.

Temperature T softens both sides the same way, bucket by bucket: each side's temperature-1
bucket log-probs are divided by T and renormalized (log_softmax), the tail bucket treated as one
pseudo-token. The teacher's true tail, many small tokens, cannot be re-tempered from its sum
alone; the student is given the same treatment (not its exact tempered softmax) so that equal
bucket distributions give a zero loss at every T and the minimizer stays the teacher's. T = 1
is the untempered distribution. The loss is multiplied by T**2 (Hinton et al. 2015): soft-target
gradients scale as 1/T**2, and the product keeps the divergence's weight against kd's
cross-entropy term independent of T. (TRL's GKD trainer does not scale.)

Every function works on log-probs and mixes in log space (logaddexp), and log-probs are floored
at LOG_FLOOR, so a -inf or -1e4 log-prob gives neither NaN nor an infinite loss. Gradients reach
the student's logits only: the teacher's tensors are constants.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DIVERGENCES = ("forward_kl", "reverse_kl", "skew_kl", "skew_reverse_kl", "jsd", "taid")
TOPK_MODES = ("tail", "renormalize")

# Far below any real log-prob (10^4 nats), yet finite: 0 * (log 0 - x) is never NaN, and a
# reverse divergence against a zero-probability bucket is large instead of infinite.
LOG_FLOOR = -1e4
# The smallest tail mass, as generation/topk.py floors the stored tail: a top k holding all the
# mass (within fp16 rounding, even a little more) would otherwise give log 0.
TAIL_FLOOR = 1e-8


# -----------------------------------------------------------------------------
# The two distributions on a common support


def topk_distributions(student_logits: torch.Tensor, teacher_ids: torch.Tensor,
                       teacher_logprobs: torch.Tensor, *, temperature: float = 1.0,
                       topk_mode: str = "tail") -> tuple[torch.Tensor, torch.Tensor]:
    """(log p, log q): the teacher's and the student's log-probs over the buckets, each [N, K+1]
    (tail mode, the last column the tail) or [N, K] (renormalize mode).

    student_logits [N, V], teacher_ids [N, K] (distinct ids per row), teacher_logprobs [N, K].
    """
    _check_temperature(temperature)
    _check_mode(topk_mode)
    _check_shapes(student_logits, teacher_ids, teacher_logprobs)
    _check_ids(teacher_ids, student_logits.shape[1])
    # bf16/fp16 logits are upcast: a softmax over 50k+ entries needs fp32.
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    z = student_logits.to(dtype)
    ids = teacher_ids.long()
    teacher = _floor(teacher_logprobs.detach().to(dtype))
    if topk_mode == "renormalize":
        # Renormalizing is a log_softmax over the k values: the rest of either distribution
        # never enters, so the student's logits are only gathered.
        return _temper(teacher, temperature), _temper(z.gather(1, ids), temperature)
    # -expm1(x) is 1 - e^x without the cancellation of 1 - exp(x) when the top k holds nearly
    # all the mass (x near 0).
    teacher_mass = torch.logsumexp(teacher, dim=-1, keepdim=True)
    teacher_tail = torch.log((-torch.expm1(teacher_mass)).clamp_min(TAIL_FLOOR))
    teacher = torch.cat([teacher, teacher_tail], dim=-1)
    # The student's tail is the logsumexp of the logits outside the top k, not
    # log(1 - sum(top k)): once the student is confident the latter is rounding noise (1 - s in
    # fp32 keeps no digits of a 1e-7 tail) and its gradient, -s / (1 - s), blows that noise up.
    # The direct form is exact to relative precision however small the tail, for one more
    # [N, V] buffer. finfo.min, not -inf, fills the top k so an empty rest (K = V) stays finite.
    lse = torch.logsumexp(z, dim=-1, keepdim=True)
    in_topk = torch.zeros_like(z, dtype=torch.bool).scatter_(1, ids, True)
    rest = z.masked_fill(in_topk, torch.finfo(dtype).min)
    student = torch.cat([z.gather(1, ids), torch.logsumexp(rest, dim=-1, keepdim=True)], dim=-1)
    return _temper(teacher, temperature), _temper(student - lse, temperature)


def _temper(logprobs: torch.Tensor, temperature: float) -> torch.Tensor:
    # Dividing bucket log-probs by T and renormalizing is a softmax at temperature T over the
    # buckets. At T = 1 it renormalizes only: a no-op for the student, and for the teacher it
    # absorbs fp16 rounding that lets the stored top k sum a little above 1.
    return _floor(F.log_softmax(_floor(logprobs) / temperature, dim=-1))


def _floor(logprobs: torch.Tensor) -> torch.Tensor:
    return logprobs.clamp_min(LOG_FLOOR)


# -----------------------------------------------------------------------------
# Divergences: log p (teacher, the target) and log q (student), [N, B] -> per-token [N]


def forward_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q): mode-covering, the student spreads over everything the teacher allows."""
    return _kl(log_p, log_q)


def reverse_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(q || p): mode-seeking, the student may drop teacher modes but not invent mass."""
    return _kl(log_q, log_p)


def skew_kl(log_p: torch.Tensor, log_q: torch.Tensor, lam: float = 0.1) -> torch.Tensor:
    """KL(p || lam p + (1 - lam) q), DistiLLM's skew KL (Ko et al. 2024): mixing p into the
    second argument bounds the log-ratio where q is tiny. lam = 0 is forward KL."""
    _check_fraction("skew_lambda", lam, upper_open=True)
    return _kl(log_p, _mix(log_p, log_q, lam))


def skew_reverse_kl(log_p: torch.Tensor, log_q: torch.Tensor, lam: float = 0.1) -> torch.Tensor:
    """KL(q || lam q + (1 - lam) p), DistiLLM's skew reverse KL. lam = 0 is reverse KL."""
    _check_fraction("skew_lambda", lam, upper_open=True)
    return _kl(log_q, _mix(log_q, log_p, lam))


def jsd(log_p: torch.Tensor, log_q: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """Generalized Jensen-Shannon divergence, TRL's convention: with m = beta p + (1 - beta) q,
    beta KL(p || m) + (1 - beta) KL(q || m); beta = 0 is forward KL, beta = 1 reverse KL.

    As in trl/experimental/gkd/gkd_trainer.py, GKDTrainer.generalized_jsd_loss (trl 1.16;
    trl/trainer/distillation_trainer.py documents the same beta): beta weights the teacher
    both in the mixture and in the sum, and the end points are special cases. The general
    formula tends to beta * KL(p || q) as beta -> 0 (and (1 - beta) * KL(q || p) as beta -> 1),
    so the loss's scale jumps at exactly 0 and 1; that is TRL's behaviour, kept.
    """
    _check_fraction("beta", beta)
    if beta == 0:
        return _kl(log_p, log_q)
    if beta == 1:
        return _kl(log_q, log_p)
    log_m = _mix(log_p, log_q, beta)
    return beta * _kl(log_p, log_m) + (1 - beta) * _kl(log_q, log_m)


def taid(log_p: torch.Tensor, log_q: torch.Tensor, t: float) -> torch.Tensor:
    """TAID (Shing et al. 2025): KL(p_t || q) toward the intermediate target
    p_t = softmax(t log p + (1 - t) log sg(q)), sg the stop-gradient; t = 0 is the student
    itself (zero loss and gradient), t = 1 the teacher (forward KL).

    The interpolation is in logit space, as in the paper and its official code (the target is
    softmax((1 - t) * logits.detach() + t * teacher_logits)); log-probs are logits up to a
    per-row constant, which the softmax removes. A probability-space target
    (1 - t) sg(q) + t p would not be TAID: its gradient is exactly t times forward KL's.
    """
    _check_fraction("taid_t", t)
    target = F.log_softmax(t * log_p + (1 - t) * log_q.detach(), dim=-1)
    return _kl(target, log_q)


def taid_t(progress: float, t_start: float = 0.4, t_end: float = 1.0) -> float:
    """TAID's interpolation t at training progress in [0, 1]: linear from t_start to t_end.
    The paper's adaptive schedule (t advanced faster while the loss improves) is not
    implemented; its linear floor is."""
    _check_fraction("progress", progress)
    _check_fraction("t_start", t_start)
    _check_fraction("t_end", t_end)
    return t_start + (t_end - t_start) * progress


def _kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    # Both arguments are floored (finite), so a zero-probability bucket contributes 0 * finite.
    return (log_a.exp() * (log_a - log_b)).sum(dim=-1)


def _mix(log_a: torch.Tensor, log_b: torch.Tensor, w: float) -> torch.Tensor:
    # log(w a + (1 - w) b) without leaving log space, where a mixture of tiny probabilities
    # would underflow. The end points return an argument itself: log(0) = -inf would give
    # logaddexp(-inf, -inf) = NaN gradients on floored entries, and the reductions stay exact.
    if w == 0:
        return log_b
    if w == 1:
        return log_a
    return torch.logaddexp(log_a + math.log(w), log_b + math.log1p(-w))


# -----------------------------------------------------------------------------
# The entry point


def token_losses(student_logits: torch.Tensor, teacher_ids: torch.Tensor,
                 teacher_logprobs: torch.Tensor, *, divergence: str = "forward_kl",
                 temperature: float = 1.0, topk_mode: str = "tail", skew_lambda: float = 0.1,
                 beta: float = 0.5, taid_t: float | None = None) -> torch.Tensor:
    """The chosen divergence at every row, [N], times temperature**2."""
    _check_divergence(divergence)
    _check_fraction("skew_lambda", skew_lambda, upper_open=True)
    _check_fraction("beta", beta)
    if taid_t is not None:
        _check_fraction("taid_t", taid_t)
    elif divergence == "taid":
        raise ValueError("divergence 'taid' needs taid_t, the interpolation in [0, 1] "
                         "(losses.taid_t(progress) gives the linear schedule)")
    log_p, log_q = topk_distributions(student_logits, teacher_ids, teacher_logprobs,
                                      temperature=temperature, topk_mode=topk_mode)
    if divergence == "forward_kl":
        loss = forward_kl(log_p, log_q)
    elif divergence == "reverse_kl":
        loss = reverse_kl(log_p, log_q)
    elif divergence == "skew_kl":
        loss = skew_kl(log_p, log_q, skew_lambda)
    elif divergence == "skew_reverse_kl":
        loss = skew_reverse_kl(log_p, log_q, skew_lambda)
    elif divergence == "jsd":
        loss = jsd(log_p, log_q, beta)
    else:
        assert taid_t is not None
        loss = taid(log_p, log_q, taid_t)
    return loss * temperature**2


def distillation_loss(student_logits: torch.Tensor, teacher_ids: torch.Tensor,
                      teacher_logprobs: torch.Tensor, *, divergence: str = "forward_kl",
                      temperature: float = 1.0, topk_mode: str = "tail",
                      skew_lambda: float = 0.1, beta: float = 0.5, taid_t: float | None = None,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    """The mean over supervised tokens of the per-token divergence (see token_losses): a
    scalar, differentiable w.r.t. student_logits only.

    student_logits [N, V] float, teacher_ids [N, K] int, teacher_logprobs [N, K] float (the
    teacher's temperature-1 log-probs of those ids), mask [N] bool (default all True).
    """
    _check_shapes(student_logits, teacher_ids, teacher_logprobs)
    if mask is not None:
        if mask.dtype != torch.bool or tuple(mask.shape) != (student_logits.shape[0],):
            raise ValueError(f"mask must be bool of shape ({student_logits.shape[0]},) like "
                             f"student_logits {tuple(student_logits.shape)}, got "
                             f"{mask.dtype} of shape {tuple(mask.shape)}")
        # Rows are dropped before any arithmetic, so whatever a masked row holds (padding,
        # NaN) cannot reach the loss or its gradient, as it would through loss * mask.
        student_logits, teacher_ids = student_logits[mask], teacher_ids[mask]
        teacher_logprobs = teacher_logprobs[mask]
    if student_logits.shape[0] == 0:
        # A mean over nothing would be NaN or, clamped, a silent 0 that trains nothing.
        raise ValueError("distillation_loss: no supervised tokens (the mask is all False or "
                         "there are no rows)")
    return token_losses(student_logits, teacher_ids, teacher_logprobs, divergence=divergence,
                        temperature=temperature, topk_mode=topk_mode, skew_lambda=skew_lambda,
                        beta=beta, taid_t=taid_t).mean()


# -----------------------------------------------------------------------------
# Argument checks: a wrong knob should fail here, not as a NaN many steps later


def _check_divergence(divergence: str) -> None:
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {list(DIVERGENCES)}, got {divergence!r}")


def _check_mode(topk_mode: str) -> None:
    if topk_mode not in TOPK_MODES:
        raise ValueError(f"topk_mode must be one of {list(TOPK_MODES)}, got {topk_mode!r}")


def _check_temperature(temperature: float) -> None:
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")


def _check_fraction(name: str, value: float, *, upper_open: bool = False) -> None:
    # Written as a range test that NaN fails too (every comparison with NaN is False).
    ok = 0 <= value < 1 if upper_open else 0 <= value <= 1
    if not ok:
        raise ValueError(f"{name} must be in [0, {'1)' if upper_open else '1]'}, got {value!r}")


def _check_shapes(student_logits: torch.Tensor, teacher_ids: torch.Tensor,
                  teacher_logprobs: torch.Tensor) -> None:
    logits, ids, logprobs = (tuple(t.shape) for t in (student_logits, teacher_ids,
                                                       teacher_logprobs))
    if len(logits) != 2 or not student_logits.dtype.is_floating_point:
        raise ValueError(f"student_logits must be a float tensor [N, V], got "
                         f"{student_logits.dtype} of shape {logits}")
    if len(ids) != 2 or ids != logprobs:
        raise ValueError(f"teacher_ids shape {ids} and teacher_logprobs shape {logprobs} must "
                         "be the same [N, K]")
    if ids[0] != logits[0]:
        raise ValueError(f"student_logits shape {logits} and teacher_ids shape {ids} disagree "
                         "on N, the number of tokens")
    if not 1 <= ids[1] <= logits[1]:
        raise ValueError(f"teacher_ids shape {ids}: K must be in [1, V] for student_logits "
                         f"shape {logits}")
    if (teacher_ids.dtype.is_floating_point or teacher_ids.dtype.is_complex
            or teacher_ids.dtype == torch.bool):
        raise ValueError(f"teacher_ids must be an integer tensor, got {teacher_ids.dtype}")
    if not teacher_logprobs.dtype.is_floating_point:
        raise ValueError(f"teacher_logprobs must be a float tensor, got {teacher_logprobs.dtype}")


def _check_ids(teacher_ids: torch.Tensor, vocab: int) -> None:
    if teacher_ids.numel() == 0:
        return
    # Out of range, gather fails on CPU and device-asserts on CUDA; a repeated id would count
    # its probability twice, so q would sum above 1 and a KL could go negative.
    low, high = int(teacher_ids.min()), int(teacher_ids.max())
    if low < 0 or high >= vocab:
        raise ValueError(f"teacher_ids must lie in [0, {vocab}) (the student's vocabulary), got "
                         f"ids from {low} to {high}")
    ordered = teacher_ids.sort(dim=-1).values
    if bool((ordered[:, 1:] == ordered[:, :-1]).any()):
        raise ValueError("teacher_ids repeat an id within a row; a top k has distinct ids")
