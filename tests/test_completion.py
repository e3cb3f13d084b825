"""finish_completion: how one row of generate() output becomes the stored completion."""

from __future__ import annotations

import pytest

from distill_dag.generation.transformers_backend import finish_completion
from distill_dag.models import load_model
from tests.conftest import SMOLLM


@pytest.fixture(scope="module")
def tok():
    return load_model(SMOLLM, "cpu", "fp32").tokenizer  # tokenizer only: weights load lazily


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_eos_ends_the_completion_and_counts_as_generated(tok):
    ids = _ids(tok, "The answer is 7.")
    row = [*ids, tok.eos_token_id, tok.pad_token_id, tok.pad_token_id]
    done = finish_completion(tok, row, [-0.5] * len(row), {tok.eos_token_id}, [])
    assert (done.text, done.finish_reason, done.generated) == ("The answer is 7.", "stop",
                                                                len(ids) + 1)
    assert done.token_ids == ids and len(done.token_logprobs) == len(ids)


def test_max_new_tokens_is_finish_reason_length(tok):
    ids = _ids(tok, "3 + 4 = 7. 7 +")
    done = finish_completion(tok, ids, [-0.1] * len(ids), {tok.eos_token_id}, [])
    assert done.finish_reason == "length" and done.generated == len(ids)


def test_stop_string_with_pad_equal_to_eos(tok):
    """SmolLM2's pad is its eos: after a stop string generate() pads the row with eos, which
    must not count as generated, and the text ends before the stop string."""
    assert tok.pad_token_id == tok.eos_token_id
    generated = _ids(tok, " 3 + 4 = 7.\n\nQuestion:")
    row = generated + [tok.pad_token_id] * 4
    logprobs = [-float(i) / 10 for i in range(len(row))]
    done = finish_completion(tok, row, logprobs, {tok.eos_token_id}, ["\n\n"])
    assert done.text == "3 + 4 = 7." and done.lead == " " and done.finish_reason == "stop"
    # counted: the kept tokens and the stop string's; not counted: "Question:" and the padding
    question = len(_ids(tok, "Question:"))
    assert len(done.token_ids) < done.generated <= len(generated) - question
    # offsets are in the stripped text, and each kept token's log-prob is its own
    assert done.token_starts == sorted(done.token_starts) and done.token_starts[0] == 0
    assert done.token_logprobs == logprobs[: len(done.token_ids)]
    rebuilt = tok.decode(done.token_ids)
    assert rebuilt.strip() == done.text
