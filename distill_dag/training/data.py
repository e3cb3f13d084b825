"""Chat records -> token ids and labels with the loss on the assistant reply only.

The prompt is rendered with the student's chat template up to the assistant turn
(``add_generation_prompt=True``); the full conversation is rendered too, and the reply is what the
full rendering adds after the prompt (the assistant text plus the template's end-of-turn token,
so the student learns to stop). Tokens are prompt ids + reply ids, exactly what the student sees
at inference: the prompt as a prefix, then its own tokens. Two silent failures of chat SFT are
turned into errors: a template that renders the prompt differently once the reply is appended
(the mask would point at the wrong tokens), and a template that drops the assistant's content
(the model would train on nothing but end-of-turn tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from distill_dag.errors import DistillError

IGNORE_INDEX = -100  # label of tokens that carry no loss (the prompt)
# Bump when the way records become tokens and labels changes: it is part of the checkpoint's run
# key, so a fix here retrains instead of reusing a checkpoint built the old way.
TOKENIZATION_VERSION = "1"


class TrainingDataError(DistillError, ValueError):
    """The dataset cannot be trained on as asked; the message names the record and field."""


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX on prompt tokens, the token id on reply tokens

    @property
    def supervised_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


@dataclass
class TokenizedDataset:
    examples: list[TokenizedExample]
    dropped_too_long: list[int] = field(default_factory=list)  # record indices over max_length
    tokens: int = 0  # all tokens of the kept examples
    supervised_tokens: int = 0  # tokens that carry loss


def _check_messages(messages: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        raise TrainingDataError(f"{where}: field 'messages' must be a non-empty list of turns")
    turns = []
    for i, turn in enumerate(messages):
        if not isinstance(turn, dict) or not isinstance(turn.get("role"), str) \
                or not isinstance(turn.get("content"), str):
            raise TrainingDataError(f"{where}: messages[{i}] must have string 'role' and "
                                    "'content'")
        turns.append({"role": turn["role"], "content": turn["content"]})
    if turns[-1]["role"] != "assistant":
        raise TrainingDataError(f"{where}: the last turn of 'messages' must be the assistant's "
                                f"reply, got role {turns[-1]['role']!r}")
    if not turns[-1]["content"].strip():
        raise TrainingDataError(f"{where}: the assistant reply in 'messages' is empty")
    return turns


def render_split(tokenizer: Any, messages: list[dict[str, str]], where: str) -> tuple[str, str]:
    """(prompt text, reply text) of a conversation under the tokenizer's chat template."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise TrainingDataError(
            f"{where}: the student's tokenizer has no chat template, so chat 'messages' cannot be "
            "rendered; give the student a chat model or a folder with chat_template.jinja")
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False,
                                           add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise TrainingDataError(
            f"{where}: the chat template renders the prompt differently once the assistant turn "
            "is appended, so the loss mask cannot be placed; use a template whose generation "
            "prompt is a prefix of the full conversation")
    reply = full[len(prompt):]
    content = messages[-1]["content"].strip()
    if content not in reply:
        raise TrainingDataError(
            f"{where}: the chat template drops the assistant's content (the rendered assistant "
            f"turn is {reply[:80]!r}); training would teach nothing but the end-of-turn token. "
            "Fix the template (it must render the assistant message's content)")
    return prompt, reply


def check_record(tokenizer: Any, messages: Any, where: str) -> tuple[str, str]:
    """Validate one chat record and split it into (prompt text, reply text); errors name
    `where`. The chat_schema check of filtered_dataset and training share this."""
    return render_split(tokenizer, _check_messages(messages, where), where)


def tokenize_record(tokenizer: Any, messages: Any, where: str) -> TokenizedExample:
    """One chat record as prompt ids + reply ids, the loss on the reply only; errors name
    `where`."""
    prompt, reply = check_record(tokenizer, messages, where)
    prompt_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    reply_ids = list(tokenizer(reply, add_special_tokens=False)["input_ids"])
    if not reply_ids:
        raise TrainingDataError(f"{where}: the assistant turn tokenizes to 0 tokens; the loss "
                                "mask would be empty")
    return TokenizedExample(prompt_ids + reply_ids, [IGNORE_INDEX] * len(prompt_ids) + reply_ids)


def tokenize_records(
    tokenizer: Any,
    messages_column: Sequence[Any],
    max_length: int,
    source: str = "filtered_dataset",
) -> TokenizedDataset:
    """Tokenize chat records; errors name `source`, the record index and the field."""
    if not len(messages_column):
        raise TrainingDataError(f"{source}: the dataset has 0 records; there is nothing to train "
                                "on (loosen the filters, raise k, or add queries)")
    out = TokenizedDataset(examples=[])
    for index, messages in enumerate(messages_column):
        example = tokenize_record(tokenizer, messages, f"{source} record {index}")
        if len(example.input_ids) > max_length:
            out.dropped_too_long.append(index)
            continue
        out.examples.append(example)
        out.tokens += len(example.input_ids)
        out.supervised_tokens += example.supervised_tokens
    if not out.examples:
        raise TrainingDataError(
            f"{source}: all {len(messages_column)} records are longer than training.max_length="
            f"{max_length} tokens; raise max_length")
    if out.supervised_tokens == 0:  # unreachable given the checks above; kept as the invariant
        raise TrainingDataError(f"{source}: the loss mask is empty on every record")
    return out
