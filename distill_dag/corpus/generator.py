"""Seeded arithmetic word problems with exact answers: the project's embedded default corpus."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

# Corpus and exemplar names are disjoint pools, so a few-shot exemplar can never equal a corpus
# query, whatever seeds either side uses.
CORPUS_NAMES = (
    "Ana", "Ben", "Carla", "David", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jamal",
    "Keiko", "Liam", "Maya", "Nikhil", "Olga", "Pablo", "Quinn", "Rosa", "Sami", "Tara",
    "Umar", "Vera", "Wei", "Ximena", "Yusuf", "Zoe", "Amir", "Bianca", "Chen", "Dara",
)  # fmt: skip
EXEMPLAR_NAMES = (
    "Aiden", "Beatriz", "Cyrus", "Delia", "Emeka", "Fiona", "Gustav", "Hana", "Ivo", "Juno",
)  # fmt: skip
FOODS = (
    "apples", "oranges", "cookies", "muffins", "cherries", "grapes", "plums", "bananas",
    "carrots", "cupcakes", "lemons", "pretzels",
)  # fmt: skip
THINGS = (
    "marbles", "stickers", "pencils", "stamps", "coins", "books", "shells", "cards", "crayons",
    "buttons", "balloons", "beads", "feathers", "toy cars", "paper clips", "postcards",
)  # fmt: skip
# Plural -> singular, for "Each bag holds 6 apples".
CONTAINERS = {"bags": "bag", "boxes": "box", "baskets": "basket", "jars": "jar", "packs": "pack"}

# Every add sentence says "more" and no subtract sentence does; tests parse prompts on that.
ADD_TEMPLATES = (
    "{name} buys {n} more {obj}.",
    "{name} finds {n} more {obj}.",
    "{name} gets {n} more {obj} from {other}.",
    "{other} gives {name} {n} more {obj}.",
    "{name} wins {n} more {obj} at a fair.",
)
SUB_TEMPLATES = (
    "{name} gives {n} {obj} to {other}.",
    "{name} loses {n} {obj}.",
    "{name} gives away {n} {obj}.",
    "{name} sells {n} {obj} to {other}.",
)
EAT_TEMPLATE = "{name} eats {n} of the {obj}."
CONNECTIVES = ("Then ", "After that, ", "Later, ", "Next, ")

MIN_NUM, MAX_NUM = 2, 20
# Multiplication keeps factors smaller so totals stay small (at most 9 * 12 = 108).
MAX_CONTAINERS, MAX_PER_CONTAINER = 9, 12
MULTIPLY_START_PROB = 0.25


@dataclass(frozen=True)
class Step:
    """One arithmetic operation of a problem: `left op operand = result`."""

    op: str  # "+", "-" or "*"
    left: int
    operand: int
    result: int

    def render(self) -> str:
        return f"{self.left} {self.op} {self.operand} = {self.result}."


@dataclass(frozen=True)
class Problem:
    """A generated problem with its structured steps (the answer is the last step's result)."""

    prompt: str
    steps: tuple[Step, ...]

    @property
    def answer(self) -> int:
        return self.steps[-1].result

    @property
    def worked_solution(self) -> str:
        return " ".join(s.render() for s in self.steps) + f" The answer is {self.answer}."

    def as_row(self, source: str) -> dict:
        return {
            "prompt": self.prompt,
            "reference_answer": str(self.answer),
            "difficulty": len(self.steps),
            "domain": "arithmetic",
            "source": source,
            "worked_solution": self.worked_solution,
        }


def make_problem(rng: random.Random, level: int, names: Sequence[str] = CORPUS_NAMES) -> Problem:
    """One problem with exactly `level` operations; every intermediate value stays >= 0."""
    if level not in (1, 2, 3):
        raise ValueError(f"level must be 1, 2 or 3, got {level!r}")
    name, other = rng.sample(list(names), 2)
    is_food = rng.random() < 0.5
    obj = rng.choice(FOODS if is_food else THINGS)
    sentences: list[str] = []
    steps: list[Step] = []

    if rng.random() < MULTIPLY_START_PROB:
        # The multiplication is itself the first step.
        plural = rng.choice(list(CONTAINERS))
        count = rng.randint(MIN_NUM, MAX_CONTAINERS)
        each = rng.randint(MIN_NUM, MAX_PER_CONTAINER)
        sentences.append(
            f"{name} has {count} {plural}. Each {CONTAINERS[plural]} holds {each} {obj}."
        )
        value = count * each
        steps.append(Step("*", count, each, value))
    else:
        value = rng.randint(MIN_NUM, MAX_NUM)
        sentences.append(f"{name} has {value} {obj}.")

    while len(steps) < level:
        # Subtracting needs at least MIN_NUM on hand; otherwise add.
        subtract = value >= MIN_NUM and rng.random() < 0.5
        if subtract:
            n = rng.randint(MIN_NUM, min(MAX_NUM, value))
            templates = SUB_TEMPLATES + ((EAT_TEMPLATE,) if is_food else ())
            new_value, op = value - n, "-"
        else:
            n = rng.randint(MIN_NUM, MAX_NUM)
            templates = ADD_TEMPLATES
            new_value, op = value + n, "+"
        sentence = rng.choice(templates).format(name=name, other=other, n=n, obj=obj)
        # Only the first change after a plain "X has N" setup reads well without a connective.
        if steps:
            sentence = rng.choice(CONNECTIVES) + sentence
        sentences.append(sentence)
        steps.append(Step(op, value, n, new_value))
        value = new_value

    tail = "in total" if len(steps) == 1 and steps[0].op == "*" else "now"
    sentences.append(f"How many {obj} does {name} have {tail}?")
    return Problem(prompt=" ".join(sentences), steps=tuple(steps))


def _check_levels(levels: Sequence[int]) -> tuple[int, ...]:
    levels = tuple(levels)
    if not levels or any(level not in (1, 2, 3) for level in levels):
        raise ValueError(f"levels must be a non-empty subset of (1, 2, 3), got {levels!r}")
    return levels


def generate_problems(
    n: int,
    seed: int,
    levels: Sequence[int] = (1, 2),
    *,
    namespace: str = "corpus",
    names: Sequence[str] = CORPUS_NAMES,
) -> list[Problem]:
    """Structured problems; problem i depends only on (namespace, seed, i), never on n."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    levels = _check_levels(levels)
    problems = []
    for i in range(n):
        # A string seed is hashed with SHA-512 by `random`, so this is stable across processes
        # and PYTHONHASHSEED; per-index seeding makes generate(100) a prefix of generate(200).
        rng = random.Random(f"distill-dag/{namespace}/{seed}/{i}")
        problems.append(make_problem(rng, rng.choice(levels), names))
    return problems


def generate_word_problems(n: int, seed: int, levels: Sequence[int] = (1, 2)) -> list[dict]:
    """The embedded corpus: `n` rows with prompt, reference_answer, difficulty, worked_solution."""
    return [p.as_row("generator") for p in generate_problems(n, seed, levels)]


def few_shot_exemplars(k: int, seed: int, levels: Sequence[int] = (1, 2, 3)) -> list[dict]:
    """`k` solved problems for few-shot prompts; never equal to a generated corpus query."""
    problems = generate_problems(k, seed, levels, namespace="exemplar", names=EXEMPLAR_NAMES)
    return [p.as_row("exemplar") for p in problems]
