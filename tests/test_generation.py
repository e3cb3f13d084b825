"""Memoized generation: the real SmolLM2 model, crash resume, verify; namespaces keep teachers',
eval_report's and the difficulty filter's samples apart (stores from before them included)."""

from __future__ import annotations

import polars as pl
import pytest

from distill_dag.difficulty import NAMESPACE
from distill_dag.generation.config import TeacherConfig
from distill_dag.generation.run import (
    Namespace,
    build_requests,
    generate,
    generate_teacher_outputs,
    teacher_change_notes,
    teacher_namespace,
    verify_outputs,
)
from distill_dag.generation.spec import GenerationSpec, SamplingConfig
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


def test_generation_passes_the_cache_as_transformers_names_it_now(tmp_path, backend_k2,
                                                                    monkeypatch):
    """The shared-prefix cache goes to generate() as `cache` (transformers 5.x warns on every
    call with `past_key_values`) and is read from the output the same way: the log stays clean."""
    import warnings

    from transformers.utils import generic

    logged: list[str] = []
    monkeypatch.setattr(generic.logger, "warning_once", lambda msg, *a, **k: logged.append(msg))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = generate_teacher_outputs(_teacher(2), QUERIES.head(1), Store(tmp_path),
                                           backend=backend_k2, show_progress=False)
    assert summary.generated == 2
    assert backend_k2._common_prefix(list(backend_k2._tokenize(
        build_requests(backend_k2, _teacher(2), QUERIES)).values())) >= 16  # the cache is used
    deprecated = [str(w.message) for w in caught
                  if issubclass(w.category, FutureWarning | DeprecationWarning)]
    assert not [m for m in deprecated + logged if "past_key_values" in m], deprecated + logged


# -- namespaces -----------------------------------------------------------------------------------

class _EchoBackend:
    """No model: answers each prompt with its own text; counts what it generated."""

    name = "echo"
    model_fingerprint = "echo-1"

    def __init__(self) -> None:
        self.generated = 0

    def render(self, query: str) -> str:
        return f"Q: {query}"

    def generate(self, requests, progress=None):
        from distill_dag.generation.backend import GenerationResult

        self.generated += len(requests)
        yield [GenerationResult(r.key, r.query_id, r.sample_index,
                                f"{r.prompt_text} #{r.sample_index}", [], [], [], 3, 4, "stop",
                                0.0) for r in requests]


SPEC = GenerationSpec(model=SMOLLM, sampling=SamplingConfig(temperature=0.5, num_samples=2))


def test_eval_and_difficulty_namespaces_never_share_a_folder_with_a_teacher(tmp_path):
    """A teacher may now be named like eval_report's or the difficulty filter's old folders:
    each namespace memoizes in its own folder."""
    store = Store(tmp_path)
    teacher = TeacherConfig(name="eval-base-greedy", model=SMOLLM, sampling=SPEC.sampling)
    as_teacher = generate_teacher_outputs(teacher, QUERIES, store, backend=_EchoBackend(),
                                          show_progress=False)
    as_eval = generate(SPEC, Namespace("eval", "base-greedy"), QUERIES, store,
                       backend=_EchoBackend(), show_progress=False)
    as_student = generate(SPEC, NAMESPACE, QUERIES, store, backend=_EchoBackend(),
                          show_progress=False)
    assert as_teacher.generated == as_eval.generated == as_student.generated == 6
    assert set(as_eval.outputs["teacher"]) == {"eval-base-greedy"}  # the rows' column as before
    assert set(as_student.outputs["teacher"]) == {"student-difficulty"}
    folders = {p.relative_to(tmp_path).as_posix() for p in tmp_path.glob("*/*") if p.is_dir()}
    assert folders == {"generations/eval-base-greedy", "generations_eval/base-greedy",
                       "generations_student/difficulty"}
    assert teacher_change_notes(store, ["eval-base-greedy"]) == []  # no folder to skip by prefix
    again = generate(SPEC, Namespace("eval", "base-greedy"), QUERIES, store,
                     backend=_EchoBackend(), show_progress=False)
    assert again.generated == 0
    with pytest.raises(ValueError, match="lowercase"):
        Namespace("Eval", "x")


def test_a_store_from_before_namespaces_keeps_its_eval_and_difficulty_samples(tmp_path):
    """Stores written before namespaces hold eval_report's and the difficulty filter's samples
    in generations/eval-* and generations/student-difficulty: the first generation moves them
    to their namespaces, so nothing is generated again, and a teacher named like an old folder
    later starts from scratch instead of taking them over."""
    import shutil

    fresh = Store(tmp_path / "fresh")
    for namespace in (Namespace("eval", "base-greedy"), NAMESPACE):
        generate(SPEC, namespace, QUERIES, fresh, backend=_EchoBackend(), show_progress=False)
    old = Store(tmp_path / "old")  # the same samples, in the layout before namespaces
    for new, legacy in (("generations_eval/base-greedy", "eval-base-greedy"),
                        ("generations_student/difficulty", "student-difficulty")):
        shutil.copytree(fresh.root / new, old.root / "generations" / legacy)
    (old.root / "generations" / "eval-base-greedy" / ".crashed.parquet.tmp").write_bytes(b"x")
    generate(SPEC, teacher_namespace("t"), QUERIES, old, backend=_EchoBackend(),
             show_progress=False)

    backend = _EchoBackend()
    for namespace in (Namespace("eval", "base-greedy"), NAMESPACE):
        summary = generate(SPEC, namespace, QUERIES, old, backend=backend, show_progress=False)
        assert summary.requests == 6 and summary.generated == 0
    assert backend.generated == 0
    assert sorted(p.name for p in (old.root / "generations").iterdir() if p.is_dir()) == ["t"]
    assert teacher_change_notes(old, ["t"]) == []
    named_like_it = TeacherConfig(name="eval-base-greedy", model=SMOLLM, sampling=SPEC.sampling)
    assert generate_teacher_outputs(named_like_it, QUERIES, old, backend=_EchoBackend(),
                                    show_progress=False).generated == 6
    assert generate(SPEC, Namespace("eval", "base-greedy"), QUERIES, old,
                    backend=_EchoBackend(), show_progress=False).generated == 0
