"""The kd objective: offline logit distillation on the teachers' stored top-k log-probs.

Each training record is a teacher's sample as the student sees it: the student's own zero-shot
prompt, then the very token ids the teacher sampled (teacher and student share a vocabulary, so
no re-tokenization can misalign them), then the end-of-turn tokens of the student's chat
template. At every sampled token the target is the teacher's distribution there (its top k plus
a tail bucket, generation/topk.py), which the student matches under the configured divergence
(training/losses.py): forward KL, reverse KL, skew KL, skew reverse KL, generalized JSD or TAID.
The template's end-of-turn tokens are the student's format, not the teacher's (a few-shot teacher
never saw it): they are learned by cross-entropy, so the student still learns to stop.

Per supervised token the loss is ``(1 - ce_weight) * divergence + ce_weight * cross-entropy`` on
the teacher's tokens and cross-entropy on the end-of-turn tokens, averaged over the batch's
supervised tokens. Top-k log-probs are read from the store (stored at sampling time, or by an
earlier forward pass) and only the missing ones are computed, by one forward pass of a local copy
of the teacher in its own prompt: changing a loss knob retrains from them, never regenerates.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import polars as pl

from distill_dag import tables
from distill_dag.configbase import Config, check_int, check_number, setting
from distill_dag.generation.registry import backend_class
from distill_dag.generation.topk import TopKError, ensure_topk, storage_report, vocabulary_mismatch
from distill_dag.training.data import (
    IGNORE_INDEX,
    TokenizedDataset,
    TokenizedExample,
    TrainingDataError,
    check_record,
)
from distill_dag.training.objectives.base import (
    Objective,
    ObjectiveData,
    ObjectiveInputs,
    TrainerJob,
)
from distill_dag.training.objectives.loss_trainer import build_loss_trainer, causal_batch, pad_rows


@dataclass
class KDSettings(Config):
    """Logit distillation's own knobs (training.kd)."""

    WHERE: ClassVar[str] = "training.kd"

    divergence: str = setting(
        "forward_kl", "What the student minimizes against the teacher's distribution at each "
        "token: forward_kl (KL(p||q), mode-covering), reverse_kl (KL(q||p), mode-seeking), "
        "skew_kl / skew_reverse_kl (DistiLLM, with skew_lambda), jsd (generalized JSD with "
        "beta) or taid (a target moving from the student to the teacher during training).")
    top_k: int = setting(20, "Teacher log-probs per token (>= 1). Stored ones with at least this "
                             "many are reused; the rest are computed by a teacher forward pass.")
    topk_mode: str = setting(
        "tail", '"tail": the top k plus one bucket holding the rest of the teacher\'s mass (the '
        'student is not told that every other token has probability 0); "renormalize": the '
        "top k renormalized to sum to 1 (overstates the teacher's confidence).")
    temperature: float = setting(1.0, "Softens teacher and student alike (> 0); 1 is the raw "
                                      "distribution.")
    ce_weight: float = setting(0.0, "Weight of cross-entropy on the sampled token at the "
                                    "teacher's positions, in [0, 1] (the divergence gets 1 - it).")
    skew_lambda: float = setting(0.1, "skew_kl / skew_reverse_kl: the share of the mixture that "
                                      "is the target itself, in [0, 1).")
    beta: float = setting(0.5, "jsd: 0 is forward KL, 1 reverse KL (TRL's convention).")
    taid_start: float = setting(0.4, "taid: the interpolation's start, rising linearly to "
                                     "taid_end over training, in [0, 1].")
    taid_end: float = setting(1.0, "taid: the interpolation at the end of training, in [0, 1].")
    topk_batch_size: int = setting(8, "Samples per forward pass when top-k are computed.",
                                   output=False)

    def __post_init__(self) -> None:
        # Imported here: losses.py imports torch, which loading a config must not.
        from distill_dag.training.losses import DIVERGENCES, TOPK_MODES

        if self.divergence not in DIVERGENCES:
            raise ValueError(f"divergence must be one of {list(DIVERGENCES)}, "
                             f"got {self.divergence!r}")
        if self.topk_mode not in TOPK_MODES:
            raise ValueError(f"topk_mode must be one of {list(TOPK_MODES)}, "
                             f"got {self.topk_mode!r}")
        check_int("top_k", self.top_k)
        check_number("temperature", self.temperature, 1e-6)
        check_number("ce_weight", self.ce_weight, 0.0, 1.0)
        check_number("skew_lambda", self.skew_lambda, 0.0, 0.999999)
        check_number("beta", self.beta, 0.0, 1.0)
        check_number("taid_start", self.taid_start, 0.0, 1.0)
        check_number("taid_end", self.taid_end, 0.0, 1.0)
        check_int("topk_batch_size", self.topk_batch_size)


def check_vocabularies(project: Any, student: str, teachers: Sequence[str]) -> None:
    """TopKError naming both models when a teacher's vocabulary is not the student's."""
    from distill_dag.models import load_model, model_access

    student_tokenizer = load_model(
        student, "cpu", **model_access(getattr(project, "student", None))).tokenizer
    for name in teachers:
        teacher = project.teacher(name)
        why = vocabulary_mismatch(load_model(teacher.model, "cpu", **model_access(teacher))
                                  .tokenizer, student_tokenizer)
        if why is not None:
            raise TopKError(
                f"kd: teacher {name!r} ({teacher.model}) and the student ({student}) do not "
                f"share a vocabulary ({why}); logit distillation compares their distributions "
                "token by token. Train with sft, or choose teachers of the student's family")


def with_token_ids(inputs: ObjectiveInputs, samples: pl.DataFrame) -> pl.DataFrame:
    """Samples without token ids (from a server whose token pieces named no id, or older)
    get their reply tokenized by the student's tokenizer, which is the teacher's vocabulary."""
    from distill_dag.models import load_model, model_access

    lengths = samples["token_ids"].list.len().fill_null(0)
    if not bool((lengths == 0).any()):
        return samples
    tokenizer = load_model(inputs.student, "cpu",
                           **model_access(getattr(inputs.project, "student", None))).tokenizer
    ids = [list(row) if n else
           list(tokenizer(messages[-1]["content"], add_special_tokens=False)["input_ids"])
           for row, n, messages in zip(samples["token_ids"].to_list(), lengths.to_list(),
                                       samples["messages"].to_list(), strict=True)]
    return samples.with_columns(pl.Series("token_ids", ids, dtype=pl.List(pl.Int64)))


def teacher_topk_records(inputs: ObjectiveInputs, settings: KDSettings, samples: pl.DataFrame,
                         sampled_by_teacher: bool) -> ObjectiveData:
    """kd records of `samples` (request_key, teacher, messages, query_id, token_ids,
    model_fingerprint): each with the top-k of the teacher in its `teacher` column at every
    token, read from the store or computed by a forward pass. `sampled_by_teacher` False: the
    tokens are another model's (on-policy: the student's), graded by the teacher."""
    queries = inputs.table(tables.QUERIES)
    prompts = dict(zip(queries["query_id"], queries["prompt"], strict=True))
    teachers = sorted(set(samples["teacher"]))
    check_vocabularies(inputs.project, inputs.student, teachers)
    topk, counts = {}, {"from_sampling": 0, "computed": 0, "reused": 0}
    for name in teachers:
        teacher = inputs.project.teacher(name)
        summary = ensure_topk(inputs.store, teacher,
                              samples.filter(pl.col("teacher") == name), prompts,
                              settings.top_k, device=inputs.device, dtype=inputs.dtype,
                              batch_size=settings.topk_batch_size,
                              show_progress=inputs.show_progress,
                              sampled_by_teacher=sampled_by_teacher,
                              same_weights=backend_class(teacher.backend).local_weights)
        topk.update(summary.topk)
        for field in counts:
            counts[field] += getattr(summary, field)
    digest = hashlib.sha256()
    records = []
    for key, messages, ids in zip(samples["request_key"], samples["messages"].to_list(),
                                  samples["token_ids"].to_list(), strict=True):
        t = topk[key]
        digest.update(key.encode() + t.ids.tobytes() + t.logprobs.tobytes())
        records.append({"messages": messages, "request_key": key, "token_ids": list(ids),
                        "topk_ids": t.ids.tolist(),
                        "topk_logprobs": t.logprobs.astype(np.float32).tolist()})
    reports = [storage_report(inputs.store, name) for name in teachers]
    stored_tokens = sum(r["tokens"] for r in reports)
    # What this run found or computed: "_now", so a step that finds its asset up to date
    # reports 0 (assets/stage_asset.py).
    metadata: dict[str, Any] = {f"topk_{k}_now": v for k, v in counts.items()}
    if stored_tokens:
        for kind in ("disk", "raw"):
            metadata[f"topk_{kind}_bytes_per_token"] = round(
                sum(r[f"{kind}_bytes_per_token"] * r["tokens"] for r in reports)
                / stored_tokens, 1)
    return ObjectiveData(records, digest.hexdigest()[:16], metadata)


@dataclass
class KDExample(TokenizedExample):
    """A tokenized record plus the teacher's top-k at the positions of its sampled tokens."""

    teacher_start: int = 0  # index in input_ids of the first sampled token
    topk_ids: list[list[int]] = dataclasses.field(default_factory=list)
    topk_logprobs: list[list[float]] = dataclasses.field(default_factory=list)


class KD(Objective):
    """Match the teacher's per-token distribution (stored top-k) under a chosen divergence."""

    name = "kd"
    reads = (tables.FILTERED_DATASET, tables.TEACHER_OUTPUTS, tables.QUERIES)
    Settings = KDSettings

    def records(self, inputs: ObjectiveInputs, settings: Config | None) -> ObjectiveData:
        assert isinstance(settings, KDSettings)
        data = inputs.table(tables.FILTERED_DATASET)
        samples = inputs.store.query(
            f'SELECT request_key, query_id, token_ids, model_fingerprint FROM '
            f'"{tables.TEACHER_OUTPUTS}" WHERE request_key IN (SELECT request_key FROM '
            f'"{tables.FILTERED_DATASET}")')
        samples = data.select("request_key", "teacher", "messages").join(
            samples, on="request_key", how="left")
        return teacher_topk_records(inputs, settings, with_token_ids(inputs, samples),
                                    sampled_by_teacher=True)

    def prepare(self, tokenizer: Any, records: Sequence[Any], max_length: int
                ) -> TokenizedDataset:
        if not records:
            raise TrainingDataError("kd: 0 records; there is nothing to train on")
        out = TokenizedDataset(examples=[])
        for index, record in enumerate(records):
            where = f"kd record {index} (sample {record.get('request_key')})"
            prompt, reply = check_record(tokenizer, record.get("messages"), where)
            content = record["messages"][-1]["content"].strip()
            sampled = list(record.get("token_ids") or [])
            if not sampled:
                raise TrainingDataError(f"{where}: field 'token_ids' is empty; the loss mask "
                                        "would be empty")
            if len(record["topk_ids"]) != len(sampled):
                raise TrainingDataError(f"{where}: {len(record['topk_ids'])} top-k rows for "
                                        f"{len(sampled)} sampled tokens")
            decoded = tokenizer.decode(sampled, skip_special_tokens=True).strip()
            if not decoded.startswith(content):
                raise TrainingDataError(f"{where}: the sampled token ids decode to "
                                        f"{decoded[:60]!r}, not the reply {content[:60]!r}")
            prompt_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
            # What the template adds after the reply's content: its end-of-turn tokens.
            end = reply[reply.index(content) + len(content):]
            end_ids = list(tokenizer(end, add_special_tokens=False)["input_ids"]) if end else []
            input_ids = prompt_ids + sampled + end_ids
            if len(input_ids) > max_length:
                out.dropped_too_long.append(index)
                continue
            out.examples.append(KDExample(
                input_ids, [IGNORE_INDEX] * len(prompt_ids) + sampled + end_ids,
                teacher_start=len(prompt_ids), topk_ids=record["topk_ids"],
                topk_logprobs=record["topk_logprobs"]))
            out.tokens += len(input_ids)
            out.supervised_tokens += len(sampled) + len(end_ids)
        if not out.examples:
            raise TrainingDataError(f"kd: all {len(records)} records are longer than "
                                    f"training.max_length={max_length} tokens; raise it")
        return out

    def trainer(self, job: TrainerJob) -> Any:
        import torch

        from distill_dag.training.losses import distillation_loss, taid_t

        settings = job.settings
        assert isinstance(settings, KDSettings)
        pad = job.tokenizer.pad_token_id
        examples = [dataclasses.asdict(e) for e in job.data.examples]
        k = settings.top_k

        def collate(batch: list[dict]) -> dict:
            out = causal_batch(batch, pad)
            width = out["input_ids"].shape[1]
            # Teacher rows at the positions of the sampled tokens; elsewhere none (valid False).
            ids, logprobs, valid = [], [], []
            for e in batch:
                n, start = len(e["topk_ids"]), e["teacher_start"]
                ids.append([[0] * k] * start + e["topk_ids"])
                logprobs.append([[0.0] * k] * start + e["topk_logprobs"])
                valid.append([False] * start + [True] * n)
            out["teacher_ids"] = pad_rows(ids, 0, width, torch.long)
            out["teacher_logprobs"] = pad_rows(logprobs, 0.0, width, torch.float32)
            out["teacher_valid"] = pad_rows(valid, False, width, torch.bool)
            return out

        def loss(trainer: Any, model: Any, batch: dict) -> Any:
            logits = model(input_ids=batch["input_ids"],
                           attention_mask=batch["attention_mask"]).logits[:, :-1]
            targets = batch["labels"][:, 1:]
            supervised = targets != IGNORE_INDEX
            if not bool(supervised.any()):
                raise ValueError("kd: a batch without supervised tokens reached the loss")
            logits, targets = logits[supervised].float(), targets[supervised]
            from_teacher = batch["teacher_valid"][:, 1:][supervised]
            ce = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
            total = ce[~from_teacher].sum() + settings.ce_weight * ce[from_teacher].sum()
            if bool(from_teacher.any()):
                progress = trainer.state.global_step / max(trainer.state.max_steps, 1)
                divergence = distillation_loss(
                    logits[from_teacher], batch["teacher_ids"][:, 1:][supervised][from_teacher],
                    batch["teacher_logprobs"][:, 1:][supervised][from_teacher],
                    divergence=settings.divergence, temperature=settings.temperature,
                    topk_mode=settings.topk_mode, skew_lambda=settings.skew_lambda,
                    beta=settings.beta,
                    taid_t=taid_t(progress, settings.taid_start, settings.taid_end)
                    if settings.divergence == "taid" else None)
                total = total + (1 - settings.ce_weight) * divergence * from_teacher.sum()
            return total / supervised.sum()

        return build_loss_trainer(job, examples, collate, loss)
