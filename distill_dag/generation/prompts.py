"""Render a query into the exact text a model sees, from a PromptConfig and the model's tokenizer.

The rendered text (not the template) goes into every request key, so an edit to a system prompt
or an exemplar regenerates exactly the requests it changes.
"""

from __future__ import annotations

import functools
from typing import Any

from distill_dag.configbase import ConfigError
from distill_dag.generation.spec import PromptConfig


@functools.lru_cache(maxsize=64)
def _generated_exemplars(k: int, seed: int, levels: tuple[int, ...]
                         ) -> tuple[tuple[str, str], ...]:
    from distill_dag.corpus.generator import few_shot_exemplars

    return tuple((ex["prompt"], ex["worked_solution"])
                 for ex in few_shot_exemplars(k, seed, levels=levels))


def exemplars_for(cfg: PromptConfig) -> list[tuple[str, str]]:
    """Explicit exemplars first, then generated ones; pairs of (question, worked answer)."""
    pairs = [(ex["prompt"], ex["answer"]) for ex in cfg.exemplars]
    if cfg.few_shot:
        pairs.extend(_generated_exemplars(cfg.few_shot, cfg.few_shot_seed,
                                          tuple(cfg.few_shot_levels)))
    return pairs


def resolve_style(cfg: PromptConfig, has_chat_template: bool) -> str:
    if cfg.style == "auto":
        return "chat" if has_chat_template else "plain"
    if cfg.style == "chat" and not has_chat_template:
        raise ConfigError("prompt style 'chat' needs a tokenizer with a chat template; use 'plain'")
    return cfg.style


def chat_messages(cfg: PromptConfig, query: str) -> list[dict[str, str]]:
    """The conversation for a query: system, exemplar turns, then the question."""
    messages: list[dict[str, str]] = []
    if cfg.system:
        messages.append({"role": "system", "content": cfg.system})
    for question, answer in exemplars_for(cfg):
        messages.append({"role": "user", "content": cfg.instruction.format(prompt=question)})
        messages.append({"role": "assistant", "content": answer})
    messages.append({"role": "user", "content": cfg.instruction.format(prompt=query)})
    return messages


def render_prompt(cfg: PromptConfig, query: str, tokenizer: Any) -> str:
    """The full prompt text, ending where the model's answer begins."""
    style = resolve_style(cfg, getattr(tokenizer, "chat_template", None) is not None)
    if style == "chat":
        return tokenizer.apply_chat_template(
            chat_messages(cfg, query), tokenize=False, add_generation_prompt=True
        )
    parts = [cfg.system.strip() + "\n\n"] if cfg.system else []
    for question, answer in exemplars_for(cfg):
        parts.append(
            f"{cfg.question_prefix}{cfg.instruction.format(prompt=question)}\n"
            f"{cfg.answer_prefix} {answer}\n\n"
        )
    parts.append(f"{cfg.question_prefix}{cfg.instruction.format(prompt=query)}\n{cfg.answer_prefix}")
    return "".join(parts)


def plain_stop_strings(cfg: PromptConfig) -> list[str]:
    """A base model continues with the next made-up question: stop before it."""
    return ["\n\n", "\n" + cfg.question_prefix.strip()]


def teacher_style_and_stops(spec: Any, tokenizer: Any) -> tuple[str, list[str]]:
    """A locally tokenized spec's prompt style, and the strings its completions stop at
    (configured ones, plus the next-question markers of a plain prompt)."""
    try:
        style = resolve_style(spec.prompt, getattr(tokenizer, "chat_template", None) is not None)
    except ConfigError as exc:
        raise ConfigError(f"{spec.label} (model {spec.model}): {exc}") from exc
    stop = list(spec.sampling.stop)
    if style == "plain":
        stop += [s for s in plain_stop_strings(spec.prompt) if s not in stop]
    return style, stop
