"""The on_policy objective: the student samples, the teacher grades every token it sampled.

Offline distillation trains on the teacher's own samples, a fixed dataset the student would never
produce; "On Teacher Hacking in Language Model Distillation" shows that such data leads to teacher
hacking and that online generation mitigates it (GKD: on-policy distillation beats SFT at equal
compute). Here each round:

1. the current student samples ``samples_per_query`` completions for every training query of
   filtered_dataset, in its own zero-shot prompt (memoized like every generation, under
   ``store/generations_onpolicy/<student fingerprint>``: a crash resumes, a rerun samples nothing);
2. the teacher's top-k at each of those tokens comes from one forward pass of a local copy of the
   teacher over ITS OWN prompt (a few-shot teacher grades the student's tokens in its few-shot
   context) plus the student's token ids; stored like every top-k, reused on reruns;
3. the student trains on them with a mode-seeking divergence (reverse KL, or generalized JSD),
   through kd's trainer and masks.

``rounds`` > 1 repeats this from the checkpoint each round ends with, so later rounds sample from
the student as it learns: closer to fully online distillation, one memoized step at a time.

Why not TRL's trainers: TRL 1.16's DistillationTrainer and experimental GKDTrainer generate from
the student inside the training step and give the teacher the student's own prompt. Our
teachers are (model, prompt) pairs whose context differs from the student's, and samples made
inside a training step are lost with a crash instead of memoized in the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import polars as pl

from distill_dag import tables
from distill_dag.configbase import Config, ConfigError, check_int, check_number, setting
from distill_dag.errors import DistillError
from distill_dag.training.objectives.base import ObjectiveData, ObjectiveInputs
from distill_dag.training.objectives.kd import KD, KDSettings, teacher_topk_records

DIVERGENCES = ("reverse_kl", "jsd")


class OnPolicyError(DistillError, ValueError):
    """On-policy distillation cannot run as configured (no teacher to grade, no samples)."""


@dataclass
class OnPolicySettings(KDSettings):
    """On-policy distillation's knobs (training.on_policy); kd's loss knobs apply too."""

    WHERE: ClassVar[str] = "training.on_policy"

    divergence: str = setting("reverse_kl", "reverse_kl (mode-seeking, GKD's on-policy default) "
                                            "or jsd (generalized JSD with beta).")
    teacher: str | None = setting(
        None, "The teacher that grades the student's tokens (a teacher's name; it must share "
        "the student's vocabulary). None: the best-ranked chosen teacher of teacher_selection.")
    rounds: int = setting(1, "Sample-then-train rounds (>= 1); each round samples from the "
                             "checkpoint the previous one ended with and trains the full "
                             "schedule (training.epochs / max_steps) on those samples.")
    samples_per_query: int = setting(2, "Student completions per training query per round.")
    sample_temperature: float = setting(1.0, "The student's sampling temperature, in (0, 2].")
    max_new_tokens: int = setting(64, "Cap on each student completion's length.")
    seed: int = setting(0, "Seeds the student's sampling (with each request's key).")
    sample_batch_size: int = setting(16, "Prompts per generate() call.", output=False)

    def __post_init__(self) -> None:
        if self.divergence not in DIVERGENCES:
            raise ConfigError(f"divergence must be one of {list(DIVERGENCES)} for on-policy "
                              f"distillation, got {self.divergence!r}")
        super().__post_init__()
        if self.teacher is not None and (not isinstance(self.teacher, str) or not self.teacher):
            raise ConfigError(f"teacher must be a teacher's name or null, got {self.teacher!r}")
        check_int("rounds", self.rounds)
        check_int("samples_per_query", self.samples_per_query)
        check_number("sample_temperature", self.sample_temperature, 1e-3, 2.0)
        check_int("max_new_tokens", self.max_new_tokens)
        check_int("sample_batch_size", self.sample_batch_size)


def grading_teacher(inputs: ObjectiveInputs, settings: OnPolicySettings) -> str:
    """The configured teacher, else the best-ranked chosen one."""
    names = [t.name for t in inputs.project.teachers]
    if settings.teacher is not None:
        if settings.teacher not in names:
            raise OnPolicyError(f"on_policy: teacher {settings.teacher!r} is not in the config; "
                                f"known teachers: {', '.join(names)}")
        return settings.teacher
    if not inputs.has_table(tables.TEACHER_METRICS):
        raise OnPolicyError("on_policy: teacher_selection has not been materialized; "
                            "materialize it, or set training.on_policy.teacher")
    ranked = inputs.table(tables.TEACHER_METRICS).filter(pl.col("chosen")).sort("rank")
    if not ranked.height:
        raise OnPolicyError("on_policy: teacher_selection chose no teacher; set "
                            "training.on_policy.teacher")
    return str(ranked["teacher"][0])


def student_samples(inputs: ObjectiveInputs, settings: OnPolicySettings, queries: pl.DataFrame
                    ) -> tuple[pl.DataFrame, int]:
    """The current student's samples of `queries` (memoized per student model), and how many
    were generated now."""
    from distill_dag.generation.run import Namespace, generate
    from distill_dag.generation.spec import GenerationSpec, SamplingConfig
    from distill_dag.models import model_access, resolve_model

    access = model_access(inputs.project.student)  # the current student is the student's
    spec = GenerationSpec(
        model=inputs.student, prompt=inputs.project.student.prompt,
        batch_size=settings.sample_batch_size,
        sampling=SamplingConfig(temperature=settings.sample_temperature,
                                max_new_tokens=settings.max_new_tokens,
                                num_samples=settings.samples_per_query, seed=settings.seed),
        **access)
    namespace = Namespace("onpolicy", resolve_model(
        inputs.student, allow_pickle_weights=access["allow_pickle_weights"]).fingerprint[:32])
    summary = generate(spec, namespace, queries, inputs.store, device=inputs.device,
                       dtype=inputs.dtype, show_progress=inputs.show_progress)
    return summary.outputs, summary.generated


class OnPolicy(KD):
    """Reverse KL (or JSD) to the teacher on the student's own samples, round by round."""

    name = "on_policy"
    reads = (tables.FILTERED_DATASET, tables.TEACHER_METRICS, tables.QUERIES)
    Settings = OnPolicySettings

    def rounds(self, settings: Config | None) -> int:
        assert isinstance(settings, OnPolicySettings)
        return settings.rounds

    def records(self, inputs: ObjectiveInputs, settings: Config | None) -> ObjectiveData:
        from distill_dag.generation.prompts import chat_messages

        assert isinstance(settings, OnPolicySettings)
        teacher = grading_teacher(inputs, settings)
        train_ids = inputs.table(tables.FILTERED_DATASET)["query_id"].unique().sort()
        queries = inputs.table(tables.QUERIES).filter(pl.col("query_id").is_in(train_ids.implode()))
        samples, generated = student_samples(inputs, settings, queries)
        usable = samples.filter(pl.col("response").str.strip_chars().str.len_chars() > 0,
                                pl.col("token_ids").list.len() > 0)
        if not usable.height:
            raise OnPolicyError(f"on_policy: the student's {samples.height} samples are all "
                                "empty; raise max_new_tokens or check the student's prompt")
        prompts = dict(zip(queries["query_id"], queries["prompt"], strict=True))
        student_prompt = inputs.project.student.prompt
        messages = [[*chat_messages(student_prompt, prompts[q]),
                     {"role": "assistant", "content": r}]
                    for q, r in zip(usable["query_id"], usable["response"], strict=True)]
        usable = usable.select(
            "request_key", "query_id", "token_ids", "model_fingerprint").with_columns(
            pl.lit(teacher).alias("teacher"),
            pl.Series("messages", messages,
                      dtype=pl.List(pl.Struct({"role": pl.Utf8, "content": pl.Utf8}))))
        data = teacher_topk_records(inputs, settings, usable, sampled_by_teacher=False)
        data.metadata.update({
            f"on_policy_round_{inputs.round}_samples": usable.height,
            f"on_policy_round_{inputs.round}_generated_now": generated,
            f"on_policy_round_{inputs.round}_empty_samples": samples.height - usable.height,
            "on_policy_teacher": teacher})
        inputs.log.info(f"on_policy round {inputs.round + 1}: {usable.height} student samples "
                        f"({generated} generated now), graded by teacher {teacher!r}")
        return data
