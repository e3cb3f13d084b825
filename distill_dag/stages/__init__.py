"""The stages of the DAG, declared once: STAGES is the single source of their names, the tables
they read and write, their partitioning, GPU needs, config sections and checks. The Dagster
assets, the run order (`distill-dag materialize`), the stale engine and the tests derive from it.

Add a stage: write its module here (a `run(ctx) -> StageOutput` function) and add one entry.
"""

from __future__ import annotations

from distill_dag import tables as t
from distill_dag import verify
from distill_dag.stage import CheckSpec, Stage
from distill_dag.stages import (
    distilled_checkpoint,
    eval_report,
    filtered_dataset,
    provenance_scores,
    query_corpus,
    teacher_outputs,
    teacher_selection,
)

# Observed inputs: their data versions are content hashes of the corpus files and of each
# teacher's settings, so Dagster marks exactly the affected work stale.
CORPUS_FILES = "corpus_files"
TEACHER_CONFIG = "teacher_config"

STAGES: list[Stage] = [
    Stage(
        name="query_corpus", run=query_corpus.run, observes=(CORPUS_FILES,),
        writes=(t.QUERIES, t.QUARANTINE), settings=lambda p: p.corpus_settings_hash(),
        kinds=("duckdb", "polars"),
        description="Queries from the generator and/or files and datasets folders: "
                    "normalized, stable query_id, "
                    "quality-filtered (length, charset, scripts, language, gradeable answer), "
                    "exact- and near-deduplicated (MinHash, embeddings), eval split held out "
                    "and decontaminated (n-grams, MinHash, embeddings). Removed rows go to the "
                    "`quarantine` table with file, line, field, reason and the row they "
                    "matched.",
        checks=(
            CheckSpec("no_eval_leakage", "No training query equals an eval query, shares a "
                      "decontam_ngram-word n-gram with one, or (when the embedding step runs) "
                      "paraphrases one with the same answer at cosine >= "
                      "embed_decontam_threshold.", blocking=True),
            CheckSpec("duplicate_rate", "At most max_duplicate_rate of the training queries "
                      "have a duplicate among the others (normalized text; an embedding "
                      "paraphrase with the same answer, estimated on a sample, when that step "
                      "runs)."),
            CheckSpec("removal_share", "No curation step removed more than warn_removed_share "
                      "of the rows it was given."),
            CheckSpec("has_train_and_eval", "Both splits are non-empty."),
        ),
    ),
    Stage(
        # teacher_config (same partition) carries this teacher's settings as a data version,
        # so editing one teacher makes only its partition stale; the code version covers the
        # code and the verifier, whose bump re-verifies stored samples without regenerating.
        name="teacher_outputs", run=teacher_outputs.run, partitioned=True,
        reads=(t.QUERIES,), writes=(t.TEACHER_OUTPUTS,), observes=(TEACHER_CONFIG,),
        # Read when the assets are built (not at import): a verifier bump shows as a change.
        settings=lambda p: f"verifier{verify.VERIFIER_VERSION}", gpus=lambda p: p.teacher_gpus(),
        kinds=("pytorch", "duckdb"),
        description="Samples from one teacher (partition): text, token counts, finish reason, "
                    "latency and per-token log-probs, verified with math-verify. Every request "
                    "is stored under a hash of what determines it as soon as its batch "
                    "completes: reruns and crash resumes never generate it again.",
        checks=(CheckSpec("all_samples_present", "Every training query has k samples."),
                CheckSpec("some_correct", "The teacher solves at least one training query.")),
    ),
    Stage(
        name="provenance_scores", run=provenance_scores.run, partitioned=True,
        reads=(t.QUERIES, t.TEACHER_OUTPUTS),
        writes=(t.PROVENANCE_SENTENCES, t.PROVENANCE_SAMPLES),
        config_sections=("student", "provenance"), gpus=lambda p: p.teacher_gpus(),
        kinds=("pytorch", "duckdb"),
        description="Sentence provenance (arXiv 2512.20908): split each response into "
                    "sentences, score each under the teacher (its own few-shot context) and the "
                    "original student (zero-shot), p = exp(mean token log-prob); Teacher if "
                    "pT - pS > beta, Student if < -beta, else Common.",
        checks=(CheckSpec("all_sentences_scored",
                          "Every sentence has a teacher and a student score."),),
    ),
    Stage(
        # Reads teacher_outputs too: verdicts (a verifier bump) reach the ranking through it.
        name="teacher_selection", run=teacher_selection.run,
        reads=(t.PROVENANCE_SAMPLES, t.PROVENANCE_SENTENCES, t.TEACHER_OUTPUTS, t.QUERIES),
        writes=(t.TEACHER_METRICS,), settings=teacher_selection.settings,
        # Trial distillation trains and scores a student per teacher.
        gpus=lambda p: 1 if p.teacher_ranking.trial.enabled else 0, kinds=("duckdb",),
        description="Per teacher on the common queries: pass rate, yield, length mean/std, "
                    "student perplexity of correct outputs, mean pT - pS, Teacher-sentence "
                    "fraction, tokens, seconds and money per correct sample; optionally a trial "
                    "distillation score (a short fine-tune per teacher, greedy pass@1 on a dev "
                    "slice of the training split) with each proxy's Kendall tau against it. "
                    "Ranked by the configured lexicographic rule; the table, the rule and the "
                    "reasons are in the metadata.",
    ),
    Stage(
        name="filtered_dataset", run=filtered_dataset.run,
        reads=(t.TEACHER_METRICS, t.QUERIES, t.TEACHER_OUTPUTS, t.PROVENANCE_SAMPLES),
        writes=(t.FILTERED_DATASET, t.NEGATIVES, t.STUDENT_DIFFICULTY),
        config_sections=("filtering", "student"), kinds=("duckdb", "parquet"),
        # The difficulty band runs the student: then this step needs a GPU slot like eval.
        gpus=lambda p: 1 if p.filtering.difficulty.enabled else 0,
        description="Correct samples of the chosen teacher(s): optionally only queries in the "
                    "base student's pass-rate band and concise traces; best-of-N per query by "
                    "Teacher-sentence count (optionally filled with the most diverse), length "
                    "bounds and a budget; chat `messages` records (JSONL + Parquet, and a "
                    "Hugging Face datasets folder with a dataset card) in the student's "
                    "zero-shot format. Incorrect samples go to the `negatives` table.",
        checks=(
            CheckSpec("not_empty", "At least one training record.", blocking=True),
            CheckSpec("no_eval_queries", "No record comes from an eval query.", blocking=True),
            CheckSpec("removal_share", "The difficulty band and the concise filter each "
                      "removed at most filtering.warn_removed_share of what they were given."),
            CheckSpec("chat_schema", "Every record ends with a user turn and a non-empty "
                      "assistant turn, and the student's chat template renders both (in that "
                      "order).", blocking=True),
        ),
    ),
    Stage(
        name="distilled_checkpoint", run=distilled_checkpoint.run,
        reads=(t.FILTERED_DATASET,), writes=(t.DISTILLED_CHECKPOINT,),
        config_sections=("training", "student"), gpus=lambda p: p.training.num_processes,
        kinds=("pytorch", "mlflow"),
        description="The student trained on filtered_dataset by training.objective (sft: TRL "
                    "SFTTrainer, loss on the assistant tokens only; kd, on_policy, redi: "
                    "docs/training.md); LoRA merged or full; resumable; optionally watched by "
                    "the held-out monitor. Written as a Hugging Face folder with a model card "
                    "under the artifact directory: weights never pass through an IO manager. "
                    "Logged to MLflow as a registered model.",
        checks=(
            CheckSpec("hf_folder", "The checkpoint folder has weights (safetensors), config, "
                      "tokenizer and chat template.", blocking=True),
            CheckSpec("loss_decreased", "The training loss at the end is below the loss at the "
                      "start (warns otherwise)."),
            CheckSpec("teacher_hacking", "With the held-out monitor on (training.monitor): warns "
                      "when the distance to the teacher on held-out queries rose at "
                      "training.monitor.patience consecutive evaluations while the proxy (the "
                      "same distance on training data) fell; passes with a note when it is off."),
        ),
    ),
    Stage(
        name="eval_report", run=eval_report.run,
        reads=(t.DISTILLED_CHECKPOINT, t.TEACHER_METRICS, t.QUERIES, t.TEACHER_OUTPUTS,
               t.FILTERED_DATASET),
        writes=(t.EVAL_ANSWERS, t.EVAL_SENTENCES),
        config_sections=("evaluation", "student", "provenance"), gpus=lambda p: 1,
        kinds=("pytorch", "mlflow"),
        description="Base vs distilled student on the held-out queries, same prompt and token "
                    "budget: greedy pass@1, pass@k and mean@k (unbiased, n samples), answer-"
                    "extraction failures, output length, a paired bootstrap interval of the "
                    "gain, and the test-time provenance (Teacher / Student / Shared / Boosted) "
                    "of the distilled student's own answers. Markdown + PNG report, MLflow run.",
        checks=(CheckSpec("distilled_beats_base", "The distilled student's greedy pass@1 gain "
                          "over the base student has a bootstrap interval above 0 (warns "
                          "otherwise)."),),
    ),
]


def stage(name: str, stages: list[Stage] | None = None) -> Stage:
    """The declared stage called `name`."""
    for s in stages or STAGES:
        if s.name == name:
            return s
    raise KeyError(f"no stage {name!r}; stages: {', '.join(s.name for s in stages or STAGES)}")
