"""teacher_outputs core: memoized generation with the real SmolLM2 model, crash resume, verify."""

from __future__ import annotations

import polars as pl
import pytest

from distill_dag.generation.config import TeacherConfig
from distill_dag.generation.run import generate_teacher_outputs, verify_outputs
from distill_dag.generation.transformers_backend import TransformersBackend
from distill_dag.store import Store
from tests.conftest import SMOLLM

QUERIES = pl.DataFrame({
    "query_id": ["q1", "q2", "q3"],
    "prompt": ["Tom has 3 cats. Tom gets 4 more cats. How many cats does Tom have now?",
               "Mia has 12 pens. Mia loses 5 pens. How many pens does Mia have now?",
               "Ali has 2 bags. Each bag holds 6 plums. How many plums does Ali have in total?"],
    "reference_answer": ["7", "7", "12"],
})


def _teacher(k: int = 2, system: str = "Solve it. End with: The answer is N.") -> TeacherConfig:
    return TeacherConfig.from_dict(
        {"name": "smol", "model": SMOLLM,
         "prompt": {"style": "chat", "system": system, "few_shot": 2},
         "sampling": {"temperature": 0.8, "max_new_tokens": 16, "num_samples": k},
         "batch_size": 2}, "teacher")


@pytest.fixture(scope="module")
def backend_k2():
    return TransformersBackend(_teacher(2), device="cpu", dtype="auto")


def test_generates_k_samples_per_query_with_logprobs_and_offsets(tmp_path, backend_k2):
    store = Store(tmp_path)
    summary = generate_teacher_outputs(_teacher(2), QUERIES, store, backend=backend_k2,
                                       show_progress=False)
    out = summary.outputs
    assert summary.requests == 6 and summary.generated == 6 and out.height == 6
    assert out["request_key"].n_unique() == 6
    assert sorted(out.group_by("query_id").len()["len"].to_list()) == [2, 2, 2]
    assert summary.tokens_generated == out["completion_tokens"].sum() > 0
    for row in out.iter_rows(named=True):
        assert row["finish_reason"] in ("stop", "length")
        assert len(row["token_logprobs"]) == len(row["token_starts"]) == len(row["token_ids"])
        assert all(lp <= 0 for lp in row["token_logprobs"])
        assert row["token_starts"] == sorted(row["token_starts"])
        assert row["response"] == row["response"].strip()


def test_rerun_generates_nothing_and_raising_k_generates_only_new_indices(tmp_path, backend_k2):
    store = Store(tmp_path)
    first = generate_teacher_outputs(_teacher(2), QUERIES, store, backend=backend_k2,
                                     show_progress=False)
    again = generate_teacher_outputs(_teacher(2), QUERIES, store, backend=backend_k2,
                                     show_progress=False)
    assert again.generated == 0 and again.tokens_generated == 0
    assert again.outputs.sort("request_key")["response"].to_list() == \
        first.outputs.sort("request_key")["response"].to_list()
    more = generate_teacher_outputs(_teacher(3), QUERIES, store, backend=backend_k2,
                                    show_progress=False)
    assert more.requests == 9 and more.generated == 3  # sample index 2 of each query only
    assert set(first.outputs["request_key"]) <= set(more.outputs["request_key"])


def test_a_changed_system_prompt_regenerates(tmp_path, backend_k2):
    store = Store(tmp_path)
    generate_teacher_outputs(_teacher(2), QUERIES.head(1), store, backend=backend_k2,
                             show_progress=False)
    other = _teacher(2, system="Answer briefly.")
    changed = generate_teacher_outputs(other, QUERIES.head(1), store,
                                       backend=TransformersBackend(other, "cpu"),
                                       show_progress=False)
    assert changed.generated == 2


class _CrashAfterFirstBatch:
    """Wraps the real backend; raises after its first batch, like a killed process."""

    def __init__(self, inner):
        self.inner, self.name = inner, inner.name
        self.model_fingerprint = inner.model_fingerprint

    def render(self, query):
        return self.inner.render(query)

    def generate(self, requests, progress=None):
        for i, batch in enumerate(self.inner.generate(requests, progress)):
            if i == 1:
                raise RuntimeError("simulated crash")
            yield batch


def test_crash_keeps_finished_batches_and_resume_generates_only_the_rest(tmp_path, backend_k2):
    store = Store(tmp_path)
    with pytest.raises(RuntimeError, match="simulated crash"):
        generate_teacher_outputs(_teacher(2), QUERIES, store,
                                 backend=_CrashAfterFirstBatch(backend_k2), show_progress=False)
    kept = store.read_chunks("generations", "smol", key="request_key")
    assert kept is not None and kept.height == 2  # the finished batch (batch_size 2) survived
    resumed = generate_teacher_outputs(_teacher(2), QUERIES, store, backend=backend_k2,
                                       show_progress=False)
    assert resumed.generated == 4 and resumed.outputs.height == 6
    assert resumed.outputs["request_key"].n_unique() == 6  # no duplicates


def test_verification_marks_correct_wrong_and_truncated():
    outputs = pl.DataFrame({
        "query_id": ["q1", "q2", "q3"],
        "sample_index": [0, 0, 0],
        "response": ["3 + 4 = 7. The answer is 7.", "The answer is 8.", "6 * 2 = 12. 12 +"],
        "finish_reason": ["stop", "stop", "length"],
    })
    verified = verify_outputs(outputs, QUERIES)
    assert verified["correct"].to_list() == [True, False, False]
    assert verified["verdict"].to_list() == ["correct", "wrong", "truncated"]
    assert verified["extracted_answer"].to_list()[:2] == ["7", "8"]
