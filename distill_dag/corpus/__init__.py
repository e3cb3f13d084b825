"""Query corpus: load, generate and curate the queries that teachers answer."""

from distill_dag.corpus.config import (
    ConfigError,
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
    clean_prompt,
    dedup_key,
    make_query_id,
    normalize_text,
)
from distill_dag.corpus.generator import few_shot_exemplars, generate_word_problems
from distill_dag.corpus.loaders import LoadResult, load_file, parse_reference_answer

__all__ = [
    "QUARANTINE_SCHEMA",
    "QUERY_SCHEMA",
    "ConfigError",
    "CorpusConfig",
    "CorpusResult",
    "EmptyCorpusError",
    "FileSource",
    "GeneratorConfig",
    "InboxConfig",
    "LoadResult",
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
