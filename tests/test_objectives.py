"""The kd and redi objectives on the real SmolLM2: teacher top-k storage, masks, the vocabulary
check, the losses as the trainers compute them, and a crash and resume for each."""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pytest
import torch

from distill_dag.generation.config import TeacherConfig
from distill_dag.generation.run import generate_teacher_outputs
from distill_dag.generation.topk import (
    FORWARD,
    SAMPLING,
    TopKError,
    ensure_topk,
    forward_topk,
    read_topk,
    storage_report,
)
from distill_dag.store import Store
from distill_dag.training.config import TrainingConfig
from distill_dag.training.data import IGNORE_INDEX, TrainingDataError
from distill_dag.training.objectives import TrainerJob, get_objective
from distill_dag.training.train import read_finished, train_student
from tests.conftest import SMOLLM

pytestmark = pytest.mark.slow

GEMMA = "pkg:gemma3-270m"
QUESTIONS = [f"Ana has {a} apples. Ana buys {b} more apples. How many apples does Ana have now?"
             for a, b in ((3, 4), (5, 6), (7, 2))]


def _teacher(k: int = 5, **sampling) -> TeacherConfig:
    return TeacherConfig.from_dict({
        "name": "smol", "model": SMOLLM, "top_logprobs": k, "batch_size": 4,
        "sampling": {"max_new_tokens": 16, "num_samples": 2, "temperature": 0.8, **sampling}})


def _queries() -> pl.DataFrame:
    return pl.DataFrame({"query_id": [f"q{i}" for i in range(len(QUESTIONS))],
                         "prompt": QUESTIONS, "reference_answer": ["7", "11", "9"]})


@pytest.fixture(scope="module")
def sampled(tmp_path_factory):
    """SmolLM2's samples of three questions with their top-5 taken at sampling time."""
    store = Store(tmp_path_factory.mktemp("store"))
    summary = generate_teacher_outputs(_teacher(), _queries(), store, device="cpu",
                                       dtype="fp32", show_progress=False)
    return store, summary.outputs


def test_sampling_time_top_k_is_the_teachers_distribution_at_each_sampled_token(
        sampled, smollm_fp32):
    store, outputs = sampled
    stored = read_topk(store, "smol")
    assert set(stored) == set(outputs["request_key"])
    from distill_dag.generation.prompts import render_prompt

    for row in outputs.iter_rows(named=True):
        topk, source = stored[row["request_key"]]
        assert source == SAMPLING and topk.k == 5 and topk.tokens == len(row["token_ids"])
        assert topk.ids.dtype == np.int32 and topk.logprobs.dtype == np.float16
        lp = topk.logprobs.astype(np.float32)
        assert (np.diff(lp, axis=1) <= 1e-3).all()  # most likely first
        # The top-5 mass and the tail add up to 1.
        mass = np.exp(lp).sum(1) + np.exp(topk.tail.astype(np.float32))
        np.testing.assert_allclose(mass, 1.0, atol=5e-3)
        # Where the sampled token is in the top 5, its stored log-prob is the sample's own.
        for i, (token, own) in enumerate(zip(row["token_ids"], row["token_logprobs"],
                                             strict=True)):
            hit = np.flatnonzero(topk.ids[i] == token)
            if hit.size:
                assert lp[i, hit[0]] == pytest.approx(own, abs=2e-2)
        # A forward pass over the prompt and the sampled tokens gives the same top-5.
        tokenizer = smollm_fp32.tokenizer
        prompt = render_prompt(_teacher().prompt, QUESTIONS[int(row["query_id"][1:])], tokenizer)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        again = forward_topk(smollm_fp32.model, [prompt_ids], [row["token_ids"]], 5,
                             pad_id=tokenizer.pad_token_id)[0]
        assert (again.ids[:, 0] == topk.ids[:, 0]).all()
        np.testing.assert_allclose(again.logprobs.astype(np.float32), lp, atol=3e-2)
    report = storage_report(store, "smol")
    assert report["raw_bytes_per_token"] == 5 * 6 + 2  # int32 ids + fp16 log-probs + fp16 tail
    assert report["disk_bytes_per_token"] > 0


def test_missing_top_k_are_computed_once_and_then_reused(sampled, tmp_path):
    _, outputs = sampled
    store = Store(tmp_path)  # the samples without their top-k: as a backend without them
    prompts = dict(zip(_queries()["query_id"], QUESTIONS, strict=True))
    first = ensure_topk(store, _teacher(), outputs, prompts, 5, device="cpu", dtype="fp32",
                        show_progress=False)
    assert first.computed == outputs.height and first.from_sampling == 0
    again = ensure_topk(store, _teacher(), outputs, prompts, 5, device="cpu", dtype="fp32",
                        show_progress=False)
    assert again.computed == 0 and again.reused == outputs.height
    assert all(v[1] == FORWARD for v in read_topk(store, "smol").values())
    # A smaller k is cut from the stored one; a larger one needs a new forward pass.
    fewer = ensure_topk(store, _teacher(), outputs, prompts, 3, device="cpu", dtype="fp32",
                        show_progress=False)
    assert fewer.computed == 0 and next(iter(fewer.topk.values())).k == 3
    more = ensure_topk(store, _teacher(), outputs, prompts, 8, device="cpu", dtype="fp32",
                       show_progress=False)
    assert more.computed == outputs.height
    # Samples of another model cannot borrow this one's distributions.
    foreign = outputs.with_columns(pl.lit("other-model").alias("model_fingerprint"))
    with pytest.raises(TopKError, match="generated by model"):
        ensure_topk(Store(tmp_path / "other"), _teacher(), foreign, prompts, 5, device="cpu",
                    show_progress=False)


def test_kd_refuses_a_teacher_with_another_vocabulary():
    from distill_dag.config import ProjectConfig
    from distill_dag.training.objectives.kd import check_vocabularies

    project = ProjectConfig.from_dict({"teachers": [
        {"name": "gemma", "model": GEMMA, "prompt": {"style": "plain", "few_shot": 2}},
        {"name": "smol", "model": SMOLLM}]})
    check_vocabularies(project, SMOLLM, ["smol"])
    with pytest.raises(TopKError, match=r"teacher 'gemma' \(pkg:gemma3-270m\) and the student "
                                        r"\(pkg:smollm2-135m-instruct\) do not share a vocab"):
        check_vocabularies(project, SMOLLM, ["smol", "gemma"])


def _kd_records(outputs: pl.DataFrame, topk: dict) -> list[dict]:
    from distill_dag.generation.prompts import chat_messages
    from distill_dag.generation.spec import PromptConfig

    records = []
    for row in outputs.iter_rows(named=True):
        if not row["response"].strip():
            continue
        t = topk[row["request_key"]]
        messages = [*chat_messages(PromptConfig(style="chat"), QUESTIONS[int(row["query_id"][1:])]),
                    {"role": "assistant", "content": row["response"]}]
        records.append({"messages": messages, "request_key": row["request_key"],
                        "token_ids": row["token_ids"], "topk_ids": t.ids.tolist(),
                        "topk_logprobs": t.logprobs.astype(np.float32).tolist()})
    return records


@pytest.fixture(scope="module")
def kd_records(sampled):
    store, outputs = sampled
    return _kd_records(outputs, {k: v[0] for k, v in read_topk(store, "smol").items()})


def test_kd_supervises_the_sampled_tokens_and_the_end_of_turn_only(kd_records, smollm_fp32):
    kd = get_objective("kd")
    tokenizer = smollm_fp32.tokenizer
    data = kd.prepare(tokenizer, kd_records, 256)
    for example, record in zip(data.examples, kd_records, strict=True):
        start, n = example.teacher_start, len(record["token_ids"])
        assert set(example.labels[:start]) == {IGNORE_INDEX}  # the prompt is never supervised
        assert example.input_ids[start:start + n] == record["token_ids"]
        end = example.labels[start + n:]
        assert end and tokenizer.decode(end).startswith("<|im_end|>")
        assert len(example.topk_ids) == n
    broken = dict(kd_records[0], token_ids=[])
    with pytest.raises(TrainingDataError, match=r"kd record 0 .* 'token_ids' is empty"):
        kd.prepare(tokenizer, [broken], 256)
    reply = kd_records[0]["messages"][-1]["content"]
    donor = next(r for r in kd_records if not tokenizer.decode(r["token_ids"]).strip()
                 .startswith(reply))
    other = dict(kd_records[0], token_ids=donor["token_ids"], topk_ids=donor["topk_ids"])
    with pytest.raises(TrainingDataError, match="decode to"):
        kd.prepare(tokenizer, [other], 256)
    with pytest.raises(TrainingDataError, match="0 records"):
        kd.prepare(tokenizer, [], 256)


def _job(objective: str, records, model, tokenizer, tmp_path, **settings) -> TrainerJob:
    from distill_dag.training.train import trainer_arguments

    cfg = TrainingConfig.from_dict({"objective": objective, objective: settings,
                                    "batch_size": 4, "max_steps": 1, "dtype": "fp32"})
    data = get_objective(objective).prepare(tokenizer, records, 256)
    return TrainerJob(model=model, tokenizer=tokenizer, data=data,
                      arguments=trainer_arguments(cfg, tmp_path, "cpu", False), max_length=256,
                      packing=False, peft_config=None, settings=cfg.objective_settings())


def test_kd_loss_is_only_the_end_of_turn_cross_entropy_when_the_student_is_the_teacher(
        kd_records, smollm_fp32, tmp_path):
    """The teacher is SmolLM2 itself: every divergence at the sampled tokens is 0 (top-k and
    tail taken from the student's own distribution), so the loss is the cross-entropy of the
    end-of-turn tokens over all supervised tokens. An off-by-one in the alignment would not be."""
    model, tokenizer = smollm_fp32.model, smollm_fp32.tokenizer
    for divergence in ("forward_kl", "reverse_kl", "jsd", "skew_kl", "taid"):
        job = _job("kd", kd_records, model, tokenizer, tmp_path, top_k=5, divergence=divergence)
        trainer = get_objective("kd").trainer(job)
        batch = trainer.data_collator([dataclasses.asdict(e) for e in job.data.examples])
        with torch.no_grad():
            loss = float(trainer.compute_loss(model, batch))
            logits = model(input_ids=batch["input_ids"],
                           attention_mask=batch["attention_mask"]).logits[:, :-1].float()
        targets = batch["labels"][:, 1:]
        supervised = targets != IGNORE_INDEX
        end = supervised & ~batch["teacher_valid"][:, 1:]
        ce = torch.nn.functional.cross_entropy(logits[end], targets[end], reduction="sum")
        # fp16 storage of the teacher's top-k costs ~1e-3 nats per token at most.
        assert loss == pytest.approx(float(ce / supervised.sum()), abs=2e-3), divergence


def test_redi_pairs_a_querys_correct_and_incorrect_samples():
    from distill_dag.training.objectives.redi import pair_samples

    correct = pl.DataFrame({"query_id": ["a", "a", "b", "c"], "request_key": ["1", "2", "3", "4"],
                            "response": ["A1", "A2", "B1", "C1"]})
    incorrect = pl.DataFrame({"query_id": ["a", "a", "a", "b", "d"],
                              "request_key": ["5", "6", "7", "8", "9"],
                              "response": ["x1", "x2", "x3", "  ", "y1"]})
    pairs, reasons = pair_samples(correct, incorrect, per_query=5)
    assert pairs.rows() == [("a", "A1", "x1"), ("a", "A2", "x2")]
    assert reasons == {"queries_with_pairs": 1, "queries_without_incorrect_sample": 2,
                       "queries_without_correct_sample": 1}  # b's incorrect one is empty
    one, _ = pair_samples(correct, incorrect, per_query=1)
    assert one.rows() == [("a", "A1", "x1")]


def _pairs(n: int = 4) -> list[dict]:
    from distill_dag.generation.prompts import chat_messages
    from distill_dag.generation.spec import PromptConfig

    out = []
    for i in range(n):
        a, b = 3 + i, 4 + 2 * i
        prompt = chat_messages(PromptConfig(style="chat"), f"Ana has {a} apples. Ana buys {b} "
                               "more apples. How many apples does Ana have now?")
        out.append({"query_id": f"q{i}",
                    "chosen": [*prompt, {"role": "assistant",
                                         "content": f"{a} + {b} = {a + b}. The answer is "
                                                    f"{a + b}."}],
                    "rejected": [*prompt, {"role": "assistant",
                                           "content": f"{a} - {b} = {a - b}. The answer is "
                                                      f"{a - b}."}]})
    return out


def test_redi_loss_is_the_length_normalized_pair_loss(smollm_fp32, tmp_path):
    from distill_dag.training.data import tokenize_record

    model, tokenizer = smollm_fp32.model, smollm_fp32.tokenizer
    records = _pairs(3)
    job = _job("redi", records, model, tokenizer, tmp_path, alpha=0.8)
    trainer = get_objective("redi").trainer(job)
    batch = trainer.data_collator([dataclasses.asdict(e) for e in job.data.examples])
    with torch.no_grad():
        loss = float(trainer.compute_loss(model, batch))

    def mean_logprob(messages):  # each reply alone, unpadded
        example = tokenize_record(tokenizer, messages, "test")
        ids = torch.tensor([example.input_ids])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        labels = example.labels[1:]
        picked = [logprobs[i, t] for i, t in enumerate(labels) if t != IGNORE_INDEX]
        return float(sum(picked) / len(picked))

    expected = np.mean([-mean_logprob(r["chosen"]) + 0.8 * mean_logprob(r["rejected"])
                        for r in records])
    assert loss == pytest.approx(expected, abs=1e-4)
    with pytest.raises(TrainingDataError, match=r"redi pair 0 .*rejected.*must be the assistant"):
        get_objective("redi").prepare(tokenizer, [dict(records[0], rejected=records[0]["rejected"]
                                                       [:-1])], 256)


@pytest.mark.parametrize("objective,make", [("kd", "kd_records"), ("redi", "pairs")])
def test_each_objective_resumes_after_a_crash(objective, make, request, tmp_path):
    from transformers import TrainerCallback

    records = request.getfixturevalue("kd_records") if make == "kd_records" else _pairs()

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise RuntimeError("simulated crash at step 3")

    cfg = TrainingConfig.from_dict({"objective": objective, "max_steps": 4, "save_steps": 2,
                                    "batch_size": 2, "max_length": 256, "dtype": "fp32",
                                    "learning_rate": 1e-3,
                                    **({"kd": {"top_k": 5}} if objective == "kd" else {})})
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_student(records, SMOLLM, cfg, tmp_path, device="cpu", show_progress=False,
                      callbacks=[Crash()])
    assert read_finished(tmp_path / "model") is None
    result = train_student(records, SMOLLM, cfg, tmp_path, device="cpu", show_progress=False)
    assert result.resumed_from_step == 2 and result.steps_run == 2 and result.global_step == 4
    assert [h["step"] for h in result.loss_history if "loss" in h] == [1, 2, 3, 4]
    assert result.supervised_tokens_trained > 0
    assert read_finished(tmp_path / "model")["objective"] == objective
