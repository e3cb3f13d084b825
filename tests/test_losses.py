"""training/losses.py against hand computations on tiny tensors: each expected value is written
out with plain math over explicit lists, never with the module's own helpers."""

from __future__ import annotations

import math

import pytest
import torch

from distill_dag.training.losses import (
    DIVERGENCES,
    TOPK_MODES,
    distillation_loss,
    forward_kl,
    jsd,
    reverse_kl,
    skew_kl,
    skew_reverse_kl,
    taid,
    taid_t,
    token_losses,
    topk_distributions,
)

F64 = torch.float64
P = [0.6, 0.3, 0.1]  # an asymmetric pair of distributions over three buckets
Q = [0.1, 0.2, 0.7]


def kl(a: list[float], b: list[float]) -> float:
    return sum(x * math.log(x / y) for x, y in zip(a, b, strict=True) if x > 0)


def softmax(xs: list[float]) -> list[float]:
    top = max(xs)
    e = [math.exp(x - top) for x in xs]
    return [v / sum(e) for v in e]


def normalize(xs: list[float]) -> list[float]:
    return [x / sum(xs) for x in xs]


def mix(w: float, a: list[float], b: list[float]) -> list[float]:
    return [w * x + (1 - w) * y for x, y in zip(a, b, strict=True)]


def logs(*rows: list[float]) -> torch.Tensor:
    return torch.tensor([[math.log(x) for x in row] for row in rows], dtype=F64)


def close(value: torch.Tensor | float, expected: float, tol: float = 1e-10) -> bool:
    return abs(float(torch.as_tensor(value).detach()) - expected) < tol


# ---------------------------------------------------------------- the divergences on buckets


def test_forward_and_reverse_kl_swap_their_arguments():
    lp, lq = logs(P), logs(Q)
    assert close(forward_kl(lp, lq), kl(P, Q))
    assert close(reverse_kl(lp, lq), kl(Q, P))
    assert close(forward_kl(lp, lq), float(reverse_kl(lq, lp)))
    assert abs(kl(P, Q) - kl(Q, P)) > 0.05  # the example is asymmetric: the two differ
    assert forward_kl(logs(P, Q), logs(Q, P)).shape == (2,)  # one value per token


def test_jsd_follows_trl_convention():
    lp, lq = logs(P), logs(Q)
    half = 0.5 * kl(P, mix(0.5, P, Q)) + 0.5 * kl(Q, mix(0.5, P, Q))
    assert close(jsd(lp, lq, 0.5), half)
    assert close(jsd(lq, lp, 0.5), half)  # symmetric at beta 0.5
    assert close(jsd(lp, lq, 0.0), kl(P, Q))  # beta 0: forward KL
    assert close(jsd(lp, lq, 1.0), kl(Q, P))  # beta 1: reverse KL
    # beta weights the teacher p, in the mixture and in the sum (TRL's generalized_jsd_loss).
    m = mix(0.3, P, Q)
    assert close(jsd(lp, lq, 0.3), 0.3 * kl(P, m) + 0.7 * kl(Q, m))
    assert not close(jsd(lp, lq, 0.3), float(jsd(lq, lp, 0.3)), 1e-3)


def test_skew_divergences():
    lp, lq = logs(P), logs(Q)
    assert close(skew_kl(lp, lq, 0.0), kl(P, Q))
    assert close(skew_reverse_kl(lp, lq, 0.0), kl(Q, P))
    assert close(skew_kl(lp, lq, 0.1), kl(P, mix(0.1, P, Q)))
    assert close(skew_reverse_kl(lp, lq, 0.1), kl(Q, mix(0.1, Q, P)))


def test_taid_interpolates_logits_from_the_detached_student_to_the_teacher():
    lp = logs(P)
    lq = logs(Q).requires_grad_(True)
    assert close(taid(lp, lq, 1.0), kl(P, Q))  # t = 1: the target is the teacher
    assert close(taid(lp, lq, 0.0), 0.0)  # t = 0: the target is the student itself
    # t = 0.5: softmax(0.5 log p + 0.5 log q) is the normalized geometric mean.
    target = normalize([math.sqrt(x * y) for x, y in zip(P, Q, strict=True)])
    loss = taid(lp, lq, 0.5)
    assert close(loss, kl(target, Q))
    # The target is a constant: d/d(log q) of sum target * (log target - log q) is -target.
    # Were the student's copy in the target not detached, the gradient would differ.
    (grad,) = torch.autograd.grad(loss.sum(), lq)
    assert torch.allclose(grad, -torch.tensor([target], dtype=F64), atol=1e-10)


# ---------------------------------------------------------------- the buckets from top-k

# Row 0: V = 5, teacher top-2 ids 0 and 3 with 0.5 and 0.2 (0.3 left for the tail);
# row 1: ids 4 and 1 with 0.6 and 0.25 (tail 0.15).
LOGITS = [[1.0, 0.5, 0.0, -0.5, 2.0], [0.2, -1.0, 0.3, 0.0, 1.5]]
IDS = [[0, 3], [4, 1]]
TOP = [[0.5, 0.2], [0.6, 0.25]]


def example(dtype=F64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (torch.tensor(LOGITS, dtype=dtype), torch.tensor(IDS),
            torch.tensor([[math.log(x) for x in row] for row in TOP], dtype=dtype))


def hand_buckets(row: int) -> tuple[list[float], list[float]]:
    """(teacher, student) over [id_1, id_2, tail] at temperature 1, by hand."""
    q = softmax(LOGITS[row])
    q_top = [q[i] for i in IDS[row]]
    return [*TOP[row], 1 - sum(TOP[row])], [*q_top, 1 - sum(q_top)]


def test_tail_bucket_holds_the_mass_outside_the_top_k():
    log_p, log_q = topk_distributions(*example())
    p0, q0 = hand_buckets(0)
    assert torch.allclose(log_p[0].exp(), torch.tensor([0.5, 0.2, 0.3], dtype=F64), atol=1e-12)
    assert torch.allclose(log_q[0].exp(), torch.tensor(q0, dtype=F64), atol=1e-12)
    expected = (kl(p0, q0) + kl(*hand_buckets(1))) / 2
    assert close(distillation_loss(*example()), expected)
    reverse = (kl(q0, p0) + kl(*hand_buckets(1)[::-1])) / 2
    assert close(distillation_loss(*example(), divergence="reverse_kl"), reverse)


def test_renormalize_mode_drops_the_tail():
    log_p, log_q = topk_distributions(*example(), topk_mode="renormalize")
    assert log_p.shape == (2, 2)
    assert torch.allclose(log_p[0].exp(), torch.tensor([0.5 / 0.7, 0.2 / 0.7], dtype=F64))
    assert torch.allclose(log_q[0].exp(), torch.tensor(normalize(hand_buckets(0)[1][:2]),
                                                       dtype=F64))
    expected = 0.0
    for row in range(2):
        p, q = hand_buckets(row)
        expected += kl(normalize(p[:2]), normalize(q[:2])) / 2
    assert close(distillation_loss(*example(), topk_mode="renormalize"), expected)
    assert not close(distillation_loss(*example()), expected, 1e-3)  # the tail mattered


def test_student_tail_is_exact_when_the_student_is_confident():
    # A tail of 4 e^-30 / (1 + 4 e^-30): 1 - sum(top k) in fp32 would round it to 0.
    logits = torch.tensor([[30.0, 0.0, 0.0, 0.0, 0.0]])
    _, log_q = topk_distributions(logits, torch.tensor([[0]]), torch.tensor([[-0.1]]))
    assert abs(float(log_q[0, 1]) - (math.log(4) - 30 - math.log1p(4 * math.exp(-30)))) < 1e-4


def test_teacher_top_k_summing_above_one_is_renormalized():
    # fp16 storage can round a near-certain top k a little above 1.
    log_p, _ = topk_distributions(torch.zeros(1, 4), torch.tensor([[0, 1]]),
                                  torch.tensor([[math.log(0.7005), math.log(0.3)]]))
    assert abs(float(log_p.exp().sum()) - 1) < 1e-6
    # The tail is floored at a mass of 1e-8 (as generation/topk.py stores it), then normalized.
    assert abs(float(log_p[0, 2].exp()) * 1.0005 / 1e-8 - 1) < 1e-4


# ---------------------------------------------------------------- temperature


def test_temperature_one_is_no_temperature_and_t_squared_scales():
    assert close(distillation_loss(*example(), temperature=1.0), float(distillation_loss(
        *example())))
    # T = 2: each side's temperature-1 buckets b become softmax(log b / 2), i.e. sqrt(b)
    # normalized (the tail a pseudo-token), and the KL is multiplied by T**2 = 4.
    expected = 0.0
    for row in range(2):
        p, q = hand_buckets(row)
        expected += 4 * kl(normalize([math.sqrt(x) for x in p]),
                           normalize([math.sqrt(x) for x in q])) / 2
    assert close(distillation_loss(*example(), temperature=2.0), expected)


# ---------------------------------------------------------------- every divergence, end to end

KWARGS = {"taid": {"taid_t": 0.5}}


@pytest.mark.parametrize("mode", TOPK_MODES)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_every_divergence_is_zero_when_the_student_is_the_teacher(mode, temperature):
    full = [0.35, 0.05, 0.25, 0.15, 0.12, 0.08]  # V = 6, top 3: ids 0, 2, 3
    logits = torch.tensor([[math.log(x) + 3.0 for x in full]] * 2)  # a shift changes nothing
    ids = torch.tensor([[0, 2, 3], [3, 0, 2]])  # any order of the top k
    logprobs = torch.tensor([[math.log(full[i]) for i in row] for row in ids.tolist()])
    for name in DIVERGENCES:
        loss = distillation_loss(logits, ids, logprobs, divergence=name, topk_mode=mode,
                                 temperature=temperature, **KWARGS.get(name, {}))
        assert abs(float(loss)) < 1e-6, name


def test_divergences_match_their_per_token_definitions_end_to_end():
    p, q = hand_buckets(0)
    args = [t[:1] for t in example()]
    assert close(distillation_loss(*args, divergence="skew_kl"), kl(p, mix(0.1, p, q)))
    assert close(distillation_loss(*args, divergence="skew_reverse_kl", skew_lambda=0.2),
                 kl(q, mix(0.2, q, p)))
    assert close(distillation_loss(*args, divergence="jsd", beta=0.0), kl(p, q))
    assert close(distillation_loss(*args, divergence="jsd", beta=1.0), kl(q, p))
    assert close(distillation_loss(*args, divergence="taid", taid_t=1.0), kl(p, q))
    assert token_losses(*example(), divergence="reverse_kl").shape == (2,)


def test_taid_at_zero_has_zero_loss_and_zero_gradient():
    logits, ids, logprobs = example(torch.float32)
    logits.requires_grad_(True)
    loss = distillation_loss(logits, ids, logprobs, divergence="taid", taid_t=0.0)
    (grad,) = torch.autograd.grad(loss, logits)
    assert close(loss, 0.0, 1e-6)
    assert torch.isfinite(grad).all() and float(grad.abs().max()) < 1e-6
    loss = distillation_loss(logits, ids, logprobs, divergence="taid", taid_t=0.7)
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.isfinite(grad).all() and float(grad.abs().max()) > 1e-3


def test_taid_schedule_is_linear():
    assert taid_t(0.0) == pytest.approx(0.4)
    assert taid_t(0.5) == pytest.approx(0.7)
    assert taid_t(1.0) == pytest.approx(1.0)
    assert taid_t(0.25, t_start=0.0, t_end=0.8) == pytest.approx(0.2)


# ---------------------------------------------------------------- mask, gradients, safety


def test_masked_rows_do_not_change_the_result():
    logits, ids, logprobs = example()
    # A garbage middle row: NaN logits and log-probs, ids outside the vocabulary.
    logits = torch.stack([logits[0], torch.full((5,), math.nan, dtype=F64), logits[1]])
    ids = torch.stack([ids[0], torch.tensor([99, 99]), ids[1]])
    logprobs = torch.stack([logprobs[0], torch.full((2,), math.nan, dtype=F64), logprobs[1]])
    logits.requires_grad_(True)
    mask = torch.tensor([True, False, True])
    for name in DIVERGENCES:
        kw = KWARGS.get(name, {})
        loss = distillation_loss(logits, ids, logprobs, divergence=name, mask=mask, **kw)
        assert close(loss, float(distillation_loss(*example(), divergence=name, **kw))), name
        (grad,) = torch.autograd.grad(loss, logits)
        assert torch.isfinite(grad).all() and not grad[1].any()
    with pytest.raises(ValueError, match="no supervised tokens"):
        distillation_loss(logits, ids, logprobs, mask=torch.zeros(3, dtype=torch.bool))


def test_gradient_reaches_the_student_only():
    logits, ids, logprobs = example(torch.float32)
    logits.requires_grad_(True)
    logprobs.requires_grad_(True)
    for name in DIVERGENCES:
        loss = distillation_loss(logits, ids, logprobs, divergence=name, **KWARGS.get(name, {}))
        loss.backward()
        assert logprobs.grad is None, name
        assert torch.isfinite(logits.grad).all() and float(logits.grad.abs().max()) > 1e-4, name
        logits.grad = None


@pytest.mark.parametrize("mode", TOPK_MODES)
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_no_nan_with_extreme_log_probs(mode, temperature):
    logits = torch.tensor([[-1e4, 0.0, 1.0, 0.5, 0.0], [2.0, -1e4, -1e4, 0.0, 1.0]],
                          requires_grad=True)
    ids = torch.tensor([[0, 2], [1, 4]])
    logprobs = torch.tensor([[-math.inf, math.log(0.5)], [-1e4, math.log(0.3)]])
    # And K = V: nothing outside the top k, the tail is empty.
    whole = torch.tensor([[0.0, 1.0, -1e4]], requires_grad=True)
    whole_ids, whole_lp = torch.tensor([[0, 1, 2]]), torch.tensor([[-1.0, -0.5, -math.inf]])
    for name in DIVERGENCES:
        for x, i, lp in [(logits, ids, logprobs), (whole, whole_ids, whole_lp)]:
            loss = distillation_loss(x, i, lp, divergence=name, topk_mode=mode,
                                     temperature=temperature, **KWARGS.get(name, {}))
            (grad,) = torch.autograd.grad(loss, x)
            assert torch.isfinite(loss), name
            assert torch.isfinite(grad).all(), name


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"divergence": "kl"}, r"divergence must be one of \['forward_kl'"),
    ({"topk_mode": "drop"}, r"topk_mode must be one of \['tail', 'renormalize'\]"),
    ({"temperature": 0.0}, "temperature must be"),
    ({"temperature": -1.0}, "temperature must be"),
    ({"beta": 1.5}, r"beta must be in \[0, 1\]"),
    ({"skew_lambda": 1.0}, r"skew_lambda must be in \[0, 1\)"),
    ({"divergence": "taid", "taid_t": 1.5}, r"taid_t must be in \[0, 1\]"),
    ({"divergence": "taid"}, "needs taid_t"),
    ({"mask": torch.ones(3, dtype=torch.bool)}, r"mask must be bool of shape \(2,\)"),
    ({"mask": torch.ones(2)}, "mask must be bool"),
])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        distillation_loss(*example(), **kwargs)


def test_bad_shapes_and_ids_raise():
    logits, ids, logprobs = example()
    with pytest.raises(ValueError, match=r"teacher_ids shape \(2, 2\) and teacher_logprobs "
                                         r"shape \(2, 1\)"):
        distillation_loss(logits, ids, logprobs[:, :1])
    with pytest.raises(ValueError, match=r"student_logits shape \(1, 5\) and teacher_ids "
                                         r"shape \(2, 2\)"):
        distillation_loss(logits[:1], ids, logprobs)
    with pytest.raises(ValueError, match=r"student_logits must be a float tensor \[N, V\]"):
        distillation_loss(logits[0], ids, logprobs)
    with pytest.raises(ValueError, match=r"teacher_ids must lie in \[0, 5\)"):
        distillation_loss(logits, torch.tensor([[0, 5], [1, 2]]), logprobs)
    with pytest.raises(ValueError, match="repeat an id"):
        distillation_loss(logits, torch.tensor([[0, 0], [1, 2]]), logprobs)
    with pytest.raises(ValueError, match="teacher_ids must be an integer tensor"):
        distillation_loss(logits, ids.double(), logprobs)
    with pytest.raises(ValueError, match=r"progress must be in \[0, 1\]"):
        taid_t(1.5)
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\]"):
        jsd(logs(P), logs(Q), -0.1)
