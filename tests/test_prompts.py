"""Rendering queries into model input: plain and chat styles, exemplars, stop strings.

No real tokenizer is loaded: `FakeChatTokenizer` is a stand-in with the two members
`render_prompt` uses (`chat_template` and `apply_chat_template`), which records what it got.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from distill_dag.corpus import generate_word_problems
from distill_dag.generation.config import ConfigError, PromptConfig
from distill_dag.generation.prompts import (
    chat_messages,
    exemplars_for,
    plain_stop_strings,
    render_prompt,
    resolve_style,
)


class FakeChatTokenizer:
    """Stand-in for a Hugging Face tokenizer: renders `<|role|>content<|end|>` turns."""

    def __init__(self, chat_template: str | None = "{fake template}") -> None:
        self.chat_template = chat_template
        self.calls: list[dict[str, Any]] = []

    def apply_chat_template(
        self, messages: list[dict[str, str]], tokenize: bool = True,
        add_generation_prompt: bool = False,
    ) -> str:  # fmt: skip
        if self.chat_template is None:
            raise ValueError("no chat template")
        self.calls.append({"messages": messages, "tokenize": tokenize,
                           "add_generation_prompt": add_generation_prompt})  # fmt: skip
        text = "".join(f"<|{m['role']}|>{m['content']}<|end|>" for m in messages)
        return text + ("<|assistant|>" if add_generation_prompt else "")


EXPLICIT = [
    {"prompt": "Ana has 2 pens. She buys 3 more pens. How many pens?", "answer": "2 + 3 = 5."},
    {"prompt": "Ben has 9 cards. He loses 4 cards. How many cards?", "answer": "9 - 4 = 5."},
]


def test_plain_style_layout() -> None:
    cfg = PromptConfig(style="plain", system="  Solve each problem.  ", exemplars=EXPLICIT)
    text = render_prompt(cfg, "Zoe has 1 kite. How many kites?", tokenizer=FakeChatTokenizer())
    assert text == (
        "Solve each problem.\n\n"
        f"Question: {EXPLICIT[0]['prompt']}\nAnswer: 2 + 3 = 5.\n\n"
        f"Question: {EXPLICIT[1]['prompt']}\nAnswer: 9 - 4 = 5.\n\n"
        "Question: Zoe has 1 kite. How many kites?\nAnswer:"
    )


def test_plain_style_with_generated_exemplars_and_no_system() -> None:
    cfg = PromptConfig(style="plain", few_shot=3)
    text = render_prompt(cfg, "Q?", tokenizer=None)
    assert text.startswith("Question: ")
    assert text.count("Question: ") == 4
    assert text.count("\nAnswer: ") == 3  # the exemplars' answers ...
    assert text.endswith("Question: Q?\nAnswer:")  # ... and the open one
    for question, answer in exemplars_for(cfg):
        assert f"Question: {question}\nAnswer: {answer}\n\n" in text


def test_plain_style_custom_prefixes() -> None:
    cfg = PromptConfig(style="plain", question_prefix="Q: ", answer_prefix="A:",
                       exemplars=EXPLICIT[:1])  # fmt: skip
    text = render_prompt(cfg, "x?", tokenizer=None)
    assert text == f"Q: {EXPLICIT[0]['prompt']}\nA: 2 + 3 = 5.\n\nQ: x?\nA:"


def test_chat_style_passes_system_exemplar_turns_and_question() -> None:
    tok = FakeChatTokenizer()
    cfg = PromptConfig(style="chat", system="Be brief.", exemplars=EXPLICIT)
    text = render_prompt(cfg, "Final?", tok)
    assert len(tok.calls) == 1
    call = tok.calls[0]
    assert call["tokenize"] is False and call["add_generation_prompt"] is True
    assert call["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": EXPLICIT[0]["prompt"]},
        {"role": "assistant", "content": EXPLICIT[0]["answer"]},
        {"role": "user", "content": EXPLICIT[1]["prompt"]},
        {"role": "assistant", "content": EXPLICIT[1]["answer"]},
        {"role": "user", "content": "Final?"},
    ]
    assert text.endswith("<|user|>Final?<|end|><|assistant|>")
    assert "Question:" not in text


def test_chat_style_without_system_and_with_generated_exemplars() -> None:
    cfg = PromptConfig(style="chat", few_shot=2)
    messages = chat_messages(cfg, "Q?")
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert [(m["content"]) for m in messages[:4]] == [
        part for pair in exemplars_for(cfg) for part in pair
    ]


def test_auto_picks_chat_iff_the_tokenizer_has_a_template() -> None:
    cfg = PromptConfig(style="auto", system="S.")
    with_template = FakeChatTokenizer()
    assert render_prompt(cfg, "Q?", with_template).startswith("<|system|>S.<|end|>")
    assert len(with_template.calls) == 1
    without = FakeChatTokenizer(chat_template=None)
    assert render_prompt(cfg, "Q?", without) == "S.\n\nQuestion: Q?\nAnswer:"
    assert without.calls == []
    assert resolve_style(cfg, True) == "chat"
    assert resolve_style(cfg, False) == "plain"


def test_chat_without_template_is_a_config_error() -> None:
    cfg = PromptConfig(style="chat")
    with pytest.raises(ConfigError, match="chat template"):
        render_prompt(cfg, "Q?", FakeChatTokenizer(chat_template=None))
    with pytest.raises(ConfigError):
        render_prompt(cfg, "Q?", tokenizer=None)


def test_plain_is_kept_even_with_a_template() -> None:
    tok = FakeChatTokenizer()
    assert render_prompt(PromptConfig(style="plain"), "Q?", tok) == "Question: Q?\nAnswer:"
    assert tok.calls == []


def test_exemplars_explicit_first_then_generated_never_corpus_queries() -> None:
    cfg = PromptConfig(few_shot=6, exemplars=EXPLICIT)
    pairs = exemplars_for(cfg)
    assert len(pairs) == 8
    assert pairs[:2] == [(ex["prompt"], ex["answer"]) for ex in EXPLICIT]
    corpus = {row["prompt"] for row in generate_word_problems(n=500, seed=0)}
    generated = pairs[2:]
    assert len({q for q, _ in generated}) == 6
    assert not {q for q, _ in generated} & corpus
    for question, answer in generated:
        assert question.endswith("?")
        assert re.search(r"The answer is \d+\.$", answer), answer
    assert exemplars_for(PromptConfig(exemplars=EXPLICIT)) == pairs[:2]  # few_shot 0: none


def test_exemplars_are_seeded() -> None:
    a = exemplars_for(PromptConfig(few_shot=4, few_shot_seed=1))
    assert a == exemplars_for(PromptConfig(few_shot=4, few_shot_seed=1))
    assert a != exemplars_for(PromptConfig(few_shot=4, few_shot_seed=2))
    # More exemplars extend the list rather than reshuffling it.
    assert exemplars_for(PromptConfig(few_shot=6, few_shot_seed=1))[:4] == a


def test_one_step_levels_give_one_step_exemplars() -> None:
    pairs = exemplars_for(PromptConfig(few_shot=8, few_shot_levels=[1]))
    assert len(pairs) == 8
    assert all(answer.count("=") == 1 for _, answer in pairs)
    multi = exemplars_for(PromptConfig(few_shot=8, few_shot_levels=[3]))
    assert all(answer.count("=") == 3 for _, answer in multi)


def test_instruction_template_applies_to_exemplars_and_query() -> None:
    cfg = PromptConfig(instruction="Solve: {prompt}\nShow steps.", exemplars=EXPLICIT[:1])
    plain = render_prompt(dataclasses.replace(cfg, style="plain"), "Q?", None)
    assert plain == (
        f"Question: Solve: {EXPLICIT[0]['prompt']}\nShow steps.\nAnswer: 2 + 3 = 5.\n\n"
        "Question: Solve: Q?\nShow steps.\nAnswer:"
    )
    users = [m["content"] for m in chat_messages(cfg, "Q?") if m["role"] == "user"]
    assert users == [f"Solve: {EXPLICIT[0]['prompt']}\nShow steps.", "Solve: Q?\nShow steps."]
    # Only the template's own placeholder is substituted, never braces in a query.
    assert chat_messages(cfg, "Is {x} = {prompt}?")[-1]["content"] == (
        "Solve: Is {x} = {prompt}?\nShow steps."
    )


def test_plain_stop_strings() -> None:
    assert plain_stop_strings(PromptConfig()) == ["\n\n", "\nQuestion:"]
    assert plain_stop_strings(PromptConfig(question_prefix="Q: ")) == ["\n\n", "\nQ:"]


def test_stop_strings_cut_a_made_up_next_question() -> None:
    cfg = PromptConfig(style="plain")
    continuation = " 2 + 3 = 5. The answer is 5.\nQuestion: Bo has 4 hats."
    cut = min(continuation.find(s) for s in plain_stop_strings(cfg) if s in continuation)
    assert continuation[:cut] == " 2 + 3 = 5. The answer is 5."


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"style": "markdown"}, "style"),
        ({"instruction": "no placeholder"}, "instruction"),
        ({"few_shot_levels": [4]}, "few_shot_levels"),
        ({"few_shot_levels": []}, "few_shot_levels"),
        ({"few_shot": -1}, "few_shot"),
        ({"exemplars": [{"prompt": "q"}]}, "exemplars"),
    ],
)
def test_prompt_config_validation(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        PromptConfig(**kwargs)
