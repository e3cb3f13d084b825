"""Query corpus: load, generate and curate the queries that teachers answer."""

from distill_dag.configbase import ConfigError  # re-exported: corpus config errors are these
from distill_dag.corpus.config import (
    CorpusConfig,
    FileSource,
    GeneratorConfig,
    InboxConfig,
)
from distill_dag.corpus.curate import (
    QUARANTINE_SCHEMA,
    QUERY_SCHEMA,
    CorpusResult,
    EmptyCorpusError,
    build_corpus,
)
from distill_dag.corpus.generator import few_shot_exemplars, generate_word_problems
from distill_dag.corpus.loaders import (
    CorpusSourceError,
    LoadResult,
    load_file,
    parse_reference_answer,
)
from distill_dag.corpus.steps import STEPS, CurationStep, Removal, StepResult
from distill_dag.corpus.text import clean_prompt, dedup_key, make_query_id, normalize_text

__all__ = [
    "QUARANTINE_SCHEMA",
    "QUERY_SCHEMA",
    "STEPS",
    "ConfigError",
    "CorpusConfig",
    "CorpusResult",
    "CorpusSourceError",
    "CurationStep",
    "EmptyCorpusError",
    "FileSource",
    "GeneratorConfig",
    "InboxConfig",
    "LoadResult",
    "Removal",
    "StepResult",
    "build_corpus",
    "clean_prompt",
    "dedup_key",
    "few_shot_exemplars",
    "generate_word_problems",
    "load_file",
    "make_query_id",
    "normalize_text",
    "parse_reference_answer",
]
