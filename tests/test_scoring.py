"""Provenance scoring arithmetic on the real SmolLM2 model (fp32, so comparisons are tight)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distill_dag.generation.backend import GenerationRequest
from distill_dag.generation.config import TeacherConfig
from distill_dag.generation.transformers_backend import TransformersBackend
from distill_dag.provenance.scoring import score_responses
from distill_dag.provenance.sentences import (
    assign_tokens_to_sentences,
    sentence_logprob_means,
    split_sentences,
)
from tests.conftest import SMOLLM

PROMPT = "<|im_start|>user\nAna has 10 apples. She buys 7 more. How many?<|im_end|>\n" \
         "<|im_start|>assistant\n"
RESPONSE = "10 + 7 = 17. The answer is 17."


def _manual_logprobs(loaded, prompt: str, response: str) -> list[float]:
    """The definition: one unpadded forward pass, log-softmax, the response tokens' entries."""
    tok = loaded.tokenizer
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    r_ids = tok(response, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p_ids + r_ids])
    with torch.inference_mode():
        logp = torch.log_softmax(loaded.model(input_ids=ids).logits[0].float(), dim=-1)
    return [logp[len(p_ids) + i - 1, t].item() for i, t in enumerate(r_ids)]


def test_scores_equal_the_definition(smollm_fp32):
    [scores] = score_responses(smollm_fp32, [PROMPT], [RESPONSE])
    expected = _manual_logprobs(smollm_fp32, PROMPT, RESPONSE)
    assert len(scores.logprobs) == len(expected)
    np.testing.assert_allclose(scores.logprobs, expected, atol=1e-4)
    assert all(lp <= 0 for lp in scores.logprobs)
    # offsets cover the response text
    assert scores.starts[0] == 0 and scores.ends[-1] == len(RESPONSE)


def test_left_padded_batch_scores_like_each_row_alone(smollm_fp32):
    prompts = [PROMPT, "Hi", PROMPT + "Think step by step. " * 5]
    responses = [RESPONSE, "The answer is 3.", "First, 2 * 3 = 6. Then 6 + 1 = 7."]
    batched = score_responses(smollm_fp32, prompts, responses, batch_size=3)
    for p, r, b in zip(prompts, responses, batched, strict=True):
        [alone] = score_responses(smollm_fp32, [p], [r], batch_size=1)
        np.testing.assert_allclose(b.logprobs, alone.logprobs, atol=1e-4)


def test_sentence_probability_is_the_geometric_mean_of_its_tokens(smollm_fp32):
    [scores] = score_responses(smollm_fp32, [PROMPT], [RESPONSE])
    sentences = split_sentences(RESPONSE)
    assert [s.text for s in sentences] == ["10 + 7 = 17.", "The answer is 17."]
    owner = assign_tokens_to_sentences(scores.starts, scores.ends, RESPONSE, sentences)
    means = sentence_logprob_means(scores.logprobs, owner, len(sentences))
    for index, sentence in enumerate(sentences):
        tokens = [lp for lp, o in zip(scores.logprobs, owner, strict=True) if o == index]
        assert tokens, f"sentence {sentence.text!r} got no tokens"
        product = math.prod(math.exp(lp) for lp in tokens)
        assert math.exp(means[index]) == pytest.approx(product ** (1 / len(tokens)), rel=1e-6)


def test_context_longer_than_max_length_is_cut_from_the_left(smollm_fp32):
    [scores] = score_responses(smollm_fp32, [PROMPT * 10], [RESPONSE], max_length=40)
    [full] = score_responses(smollm_fp32, [PROMPT], [RESPONSE])
    assert scores.truncated and not full.truncated
    assert len(scores.logprobs) == len(full.logprobs)  # every response token is still scored


def test_generation_time_logprobs_match_a_forward_pass(smollm_fp32):
    """The recorder logs raw (temperature-1) log-probs while sampling; provenance uses them in
    place of a teacher forward pass, so they must be the same numbers."""
    teacher = TeacherConfig.from_dict(
        {"name": "t", "model": SMOLLM, "prompt": {"style": "chat", "few_shot": 2},
         "sampling": {"temperature": 0.7, "max_new_tokens": 20, "num_samples": 1},
         "batch_size": 4}, "teacher")
    backend = TransformersBackend(teacher, device="cpu", dtype="fp32")
    questions = ["Tom has 3 cats. Tom gets 4 more cats. How many cats does Tom have now?",
                 "Mia has 12 pens. Mia loses 5 pens. How many pens does Mia have now?"]
    requests = [GenerationRequest(f"k{i}", str(i), 0, backend.render(q))
                for i, q in enumerate(questions)]
    results = {r.key: r for batch in backend.generate(requests) for r in batch}
    assert set(results) == {r.key for r in requests}
    for request in requests:
        result = results[request.key]
        assert result.token_logprobs and len(result.token_logprobs) == len(result.token_starts)
        [rescored] = score_responses(smollm_fp32, [request.prompt_text], [result.text])
        ids = smollm_fp32.tokenizer(result.text, add_special_tokens=False)["input_ids"]
        assert ids == result.token_ids  # same tokens, so the log-probs must agree
        np.testing.assert_allclose(result.token_logprobs, rescored.logprobs, atol=2e-3)


def test_plain_style_rescoring_matches_generation_at_sentence_level(tmp_path, smollm_fp32):
    """A plain prompt ends with "Answer:" and the teacher generates " 3 + 4 ...": the stored
    response drops that space, so rescoring must put it back into the teacher's context."""
    import polars as pl

    from distill_dag.generation.config import PromptConfig, StudentConfig
    from distill_dag.generation.run import generate_teacher_outputs, verify_outputs
    from distill_dag.provenance.categories import ProvenanceConfig
    from distill_dag.provenance.run import score_provenance
    from distill_dag.store import Store

    teacher = TeacherConfig.from_dict(
        {"name": "plain", "model": SMOLLM, "prompt": {"style": "plain", "few_shot": 2},
         "sampling": {"temperature": 0.7, "max_new_tokens": 24, "num_samples": 1},
         "batch_size": 4}, "teacher")
    queries = pl.DataFrame({
        "query_id": ["a", "b"], "reference_answer": ["7", "7"],
        "prompt": ["Tom has 3 cats. Tom gets 4 more cats. How many cats does Tom have now?",
                   "Mia has 12 pens. Mia loses 5 pens. How many pens does Mia have now?"]})
    store = Store(tmp_path)
    backend = TransformersBackend(teacher, device="cpu", dtype="fp32")
    outputs = verify_outputs(generate_teacher_outputs(teacher, queries, store, backend=backend,
                                                      show_progress=False).outputs, queries)
    assert set(outputs["response_lead"]) == {" "}  # the space after "Answer:" was stripped
    student = StudentConfig(model=SMOLLM, prompt=PromptConfig(style="chat"))
    by_source = {}
    for source in ("generation", "rescore"):
        summary = score_provenance(outputs, queries, teacher, student,
                                   ProvenanceConfig(teacher_logprobs=source), store,
                                   smollm_fp32, smollm_fp32, show_progress=False)
        assert set(summary.samples["teacher_logprob_source"]) == {source}
        by_source[source] = summary.sentences.sort("request_key", "sentence_index")
    np.testing.assert_allclose(by_source["generation"]["lp_teacher"].to_numpy(),
                               by_source["rescore"]["lp_teacher"].to_numpy(), atol=2e-3)
