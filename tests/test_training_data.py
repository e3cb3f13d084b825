"""Loss masking of chat records: the loss covers the assistant reply only, and the silent
failures (empty mask, a template that drops the reply or re-renders the prompt) are errors."""

from __future__ import annotations

import pytest

from distill_dag.training.data import IGNORE_INDEX, TrainingDataError, tokenize_records


def _record(answer: str = "10 + 7 = 17. The answer is 17.") -> list[dict[str, str]]:
    return [{"role": "system", "content": "Solve it."},
            {"role": "user", "content": "Ana has 10 apples. Ana buys 7 more apples. How many?"},
            {"role": "assistant", "content": answer}]


@pytest.fixture(scope="module")
def tokenizer(smollm_fp32):
    return smollm_fp32.tokenizer


def test_labels_cover_exactly_the_reply_and_its_end_of_turn(tokenizer):
    out = tokenize_records(tokenizer, [_record()], max_length=256)
    (example,) = out.examples
    prompt = tokenizer.apply_chat_template(_record()[:-1], tokenize=False,
                                           add_generation_prompt=True)
    n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert example.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    reply_ids = example.input_ids[n_prompt:]
    assert example.labels[n_prompt:] == reply_ids
    reply = tokenizer.decode(reply_ids)
    assert reply.startswith("10 + 7 = 17. The answer is 17.")
    assert "<|im_end|>" in reply  # the student learns to stop
    assert out.supervised_tokens == len(reply_ids) == example.supervised_tokens
    assert out.tokens == len(example.input_ids)


def test_input_is_prompt_then_reply_like_inference(tokenizer):
    """The model trains on the same token boundary it generates from."""
    (example,) = tokenize_records(tokenizer, [_record()], max_length=256).examples
    prompt = tokenizer.apply_chat_template(_record()[:-1], tokenize=False,
                                           add_generation_prompt=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert example.input_ids[: len(prompt_ids)] == prompt_ids


def test_zero_records_is_a_clear_error(tokenizer):
    with pytest.raises(TrainingDataError, match="0 records"):
        tokenize_records(tokenizer, [], max_length=256)


def test_empty_assistant_reply_names_the_record(tokenizer):
    with pytest.raises(TrainingDataError, match="record 1: the assistant reply"):
        tokenize_records(tokenizer, [_record(), _record("  ")], max_length=256)


def test_last_turn_must_be_the_assistant(tokenizer):
    with pytest.raises(TrainingDataError, match="record 0: the last turn"):
        tokenize_records(tokenizer, [_record()[:-1]], max_length=256)


def test_malformed_turn_names_the_field(tokenizer):
    bad = _record()
    bad[1] = {"role": "user"}
    with pytest.raises(TrainingDataError, match=r"record 0: messages\[1\]"):
        tokenize_records(tokenizer, [bad], max_length=256)


class _TemplateTokenizer:
    """The real tokenizer with a different chat template (tokenizers copy cheaply)."""

    def __init__(self, tokenizer, template: str) -> None:
        self._tok, self.chat_template = tokenizer, template

    def apply_chat_template(self, messages, **kwargs):
        return self._tok.apply_chat_template(messages, chat_template=self.chat_template, **kwargs)

    def __call__(self, *args, **kwargs):
        return self._tok(*args, **kwargs)


def test_template_that_drops_the_assistant_content_is_an_error(tokenizer):
    dropping = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
                "{% if m['role'] != 'assistant' %}{{ m['content'] }}{% endif %}<|im_end|>\n"
                "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with pytest.raises(TrainingDataError, match="drops the assistant's content"):
        tokenize_records(_TemplateTokenizer(tokenizer, dropping), [_record()], max_length=256)


def test_template_whose_prompt_is_not_a_prefix_is_an_error(tokenizer):
    # Renders a different header when the reply is present: the mask would be misplaced.
    shifting = ("{% for m in messages %}{% if m['role'] == 'assistant' %}BOT: {% else %}"
                "{{ m['role'] }}: {% endif %}{{ m['content'] }}\n{% endfor %}"
                "{% if add_generation_prompt %}assistant: {% endif %}")
    with pytest.raises(TrainingDataError, match="prompt differently"):
        tokenize_records(_TemplateTokenizer(tokenizer, shifting), [_record()], max_length=256)


def test_no_chat_template_is_an_error(tokenizer):
    with pytest.raises(TrainingDataError, match="no chat template"):
        tokenize_records(_TemplateTokenizer(tokenizer, None), [_record()], max_length=256)


def test_too_long_records_are_dropped_and_reported_not_cut(tokenizer):
    long = _record("1 + 1 = 2. " * 60 + "The answer is 2.")
    out = tokenize_records(tokenizer, [_record(), long], max_length=96)
    assert out.dropped_too_long == [1]
    assert len(out.examples) == 1
    with pytest.raises(TrainingDataError, match=r"longer than training\.max_length"):
        tokenize_records(tokenizer, [long], max_length=96)
