"""Every table in the store, named once: the stage list and the stage modules refer to these.

A table belongs to the one stage that writes it (see distill_dag/stages/__init__.py). Tables
written per teacher partition carry a `teacher` column and are replaced partition by partition.
"""

from __future__ import annotations

QUERIES = "queries"  # query_corpus: the curated queries with their split
QUARANTINE = "quarantine"  # query_corpus: rows removed, with file, line, field and reason
TEACHER_OUTPUTS = "teacher_outputs"  # teacher_outputs: verified samples, per teacher
PROVENANCE_SENTENCES = "provenance_sentences"  # provenance_scores: one row per sentence
PROVENANCE_SAMPLES = "provenance_samples"  # provenance_scores: one row per sample
TEACHER_METRICS = "teacher_metrics"  # teacher_selection: the ranked teachers
FILTERED_DATASET = "filtered_dataset"  # filtered_dataset: chat records to train on
NEGATIVES = "negatives"  # filtered_dataset: incorrect samples of the chosen teachers
STUDENT_DIFFICULTY = "student_difficulty"  # filtered_dataset: the base student's pass rates
DISTILLED_CHECKPOINT = "distilled_checkpoint"  # distilled_checkpoint: the registered folder
EVAL_ANSWERS = "eval_answers"  # eval_report: base and distilled answers on held-out queries
EVAL_SENTENCES = "eval_sentences"  # eval_report: test-time provenance of distilled answers
