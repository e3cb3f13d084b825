"""The project config: one YAML file that declares the corpus, teachers, student and stage knobs.

The file is read when the code location loads (teachers become Dagster partitions), from
``$DISTILL_DAG_CONFIG`` or the packaged embedded default (``distill_dag/configs/default.yaml``).
Every error names the file and the config path of the offending field.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import yaml

from distill_dag.configbase import (
    Config,
    ConfigError,
    build_config,
    check_keys,
    setting,
    stable_hash,
)
from distill_dag.corpus.config import CorpusConfig
from distill_dag.evaluation.config import EvalConfig
from distill_dag.filtering import FilterConfig
from distill_dag.generation.config import StudentConfig, TeacherConfig
from distill_dag.orchestration_config import OrchestrationConfig
from distill_dag.provenance.categories import ProvenanceConfig
from distill_dag.selection import RankingRule
from distill_dag.training.config import TrackingConfig, TrainingConfig
from distill_dag.training.objectives import get_objective

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"



@dataclass
class ProjectConfig(Config):
    """Everything a run of the DAG is about; see configs/default.yaml for a commented example
    and docs/config.md for every setting."""

    RENAMED_KEYS: ClassVar[Mapping[str, str]] = MappingProxyType({"selection": "teacher_ranking"})

    teachers: list[TeacherConfig] = setting(
        doc="The teachers: (model, backend, prompt, sampling) each; one Dagster partition each. "
        "At least one; names are unique.")
    corpus: CorpusConfig = setting(
        factory=CorpusConfig, doc="Where the queries come from and how they are curated and "
        "split.")
    student: StudentConfig = setting(
        factory=StudentConfig, doc="The model distilled into, and its zero-shot prompt.")
    provenance: ProvenanceConfig = setting(
        factory=ProvenanceConfig, doc="How provenance_scores scores and categorizes sentences.")
    teacher_ranking: RankingRule = setting(
        factory=RankingRule, doc="The rule teacher_selection ranks and chooses teachers by "
        "(formerly `selection`).")
    filtering: FilterConfig = setting(
        factory=FilterConfig, doc="Which samples of the chosen teachers become training "
        "records (the best-of-N rule, curation, budget).")
    training: TrainingConfig = setting(
        factory=TrainingConfig, doc="How distilled_checkpoint fine-tunes the student.")
    evaluation: EvalConfig = setting(
        factory=EvalConfig, doc="How eval_report compares the base and distilled student.")
    tracking: TrackingConfig = setting(
        factory=TrackingConfig, doc="Where MLflow runs go.", output=False)
    orchestration: OrchestrationConfig = setting(
        factory=OrchestrationConfig, doc="Retries, run time limits, the backfill schedule, the "
        "executor.", output=False)
    source: str = setting("<dict>", "Where this config was read from (set by the loader, for "
                          "messages; not a key of the file).", output=False)

    def __post_init__(self) -> None:
        if not self.teachers:
            raise ConfigError(f"{self.source}: teachers: declare at least one teacher")
        names = [t.name for t in self.teachers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"{self.source}: teachers: duplicate teacher name(s) {duplicates}")
        try:
            get_objective(self.teacher_ranking.trial.objective)
        except ConfigError as exc:
            raise ConfigError(f"{self.source}: teacher_ranking.trial.{exc}") from None

    def teacher(self, name: str) -> TeacherConfig:
        for teacher in self.teachers:
            if teacher.name == name:
                return teacher
        raise KeyError(f"no teacher {name!r} in {self.source}; known: "
                       + ", ".join(t.name for t in self.teachers))

    def fingerprint(self, length: int = 8) -> str:
        """A hash of every section's whole content (orchestration aside): equal exactly when two
        loads of the config agree, which is what the partitions and code versions of a loaded
        code location were derived from. Not what changes outputs: that is each section's own
        `fingerprint()` / `output_settings()`."""
        names = [f.name for f in dataclasses.fields(self)
                 if f.name not in ("orchestration", "source")]
        return stable_hash(self._sections(names), length=length)

    def section_hash(self, *names: str) -> str:
        """A hash of config sections' whole content: part of a stage's code_version, so editing
        them shows it as changed in Dagster."""
        return stable_hash(self._sections(names), length=8)

    def _sections(self, names: Any) -> dict[str, Any]:
        return {_HASHED_AS.get(n, n): _plain(getattr(self, n)) for n in names}

    def corpus_settings_hash(self) -> str:
        """section_hash('corpus') with file and inbox paths cut to their names: the files'
        contents are observed separately (corpus_sources_version), so moving the project folder
        does not make the corpus stale."""
        plain = _plain(self.corpus)
        for entry in plain.get("files") or []:
            entry["path"] = Path(entry["path"]).name
        if plain.get("inbox"):
            plain["inbox"]["folder"] = Path(plain["inbox"]["folder"]).name
        return stable_hash({"corpus": plain}, length=8)

    def teacher_version(self, name: str) -> str:
        """A hash of one teacher's settings: the observed data version of its config partition,
        so editing one teacher makes only that teacher's partition stale (TeacherConfig.version:
        batch size, placement and speed settings change no output and stay out)."""
        return self.teacher(name).version()

    def teacher_gpus(self) -> int:
        """GPUs the largest teacher needs in one step (its backend's count: vLLM's
        tensor_parallel_size; 1 for the others)."""
        return max(t.gpus() for t in self.teachers)

    def corpus_sources_version(self) -> str:
        """A hash of the corpus files' contents (inbox included): the observed data version of
        the corpus sources, so a new, edited or vanished file makes query_corpus stale."""
        from distill_dag.corpus.loaders import sources_fingerprint

        return stable_hash(sources_fingerprint(self.corpus.all_sources()), length=12)

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> ProjectConfig:
        """Build from the file's mapping: every section by the shared builder (errors name
        their config path, e.g. ``teachers[1].sampling.temperature``), prefixed with `source`."""
        try:
            check_keys(cls, data, "config")
            if "source" in data:
                raise ConfigError("config: 'source' is set by the loader, not the file")
            # An empty section (`corpus:` with nothing under it) takes its defaults.
            data = {k: v for k, v in data.items() if v is not None}
            data.setdefault("teachers", [])
            return build_config(cls, {**data, "source": source}, "")
        except (ValueError, TypeError) as exc:
            if str(exc).startswith(source):
                raise
            raise ConfigError(f"{source}: {exc}") from exc


# Sections and fields hash under their names from before a rename (`RENAMED_KEYS`), so renaming
# a key changes no code version and makes nothing stale.
_HASHED_AS = {new: old for old, new in ProjectConfig.RENAMED_KEYS.items()}


def _is_default(value: Any, field: dataclasses.Field) -> bool:
    if field.default_factory is not dataclasses.MISSING:
        return value == field.default_factory()
    return field.default is not dataclasses.MISSING and value == field.default


def _plain(value: Any) -> Any:
    """dataclasses.asdict, with renamed fields under their old names (see _HASHED_AS) and the
    fields a class added later (its HASHED_WHEN_SET) left out while they keep their default."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        old = {new: old for old, new in getattr(value, "RENAMED_KEYS", {}).items()}
        later = getattr(value, "HASHED_WHEN_SET", ())
        return {old.get(f.name, f.name): _plain(getattr(value, f.name))
                for f in dataclasses.fields(value)
                if not (f.name in later and _is_default(getattr(value, f.name), f))}
    if isinstance(value, list | tuple):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def config_path() -> Path:
    return Path(os.environ.get("DISTILL_DAG_CONFIG") or DEFAULT_CONFIG).expanduser()


def load_project_config(path: str | Path | None = None) -> ProjectConfig:
    """Read and validate a project config file (default: $DISTILL_DAG_CONFIG or the embedded)."""
    path = Path(path).expanduser() if path else config_path()
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist (set DISTILL_DAG_CONFIG)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    # Relative corpus file paths are relative to the config file, not the working directory.
    corpus = data.get("corpus") or {}
    files = corpus.get("files") if isinstance(corpus, dict) else None
    for entry in files if isinstance(files, list) else []:
        if isinstance(entry, dict) and isinstance(entry.get("path"), str):
            file_path = Path(entry["path"]).expanduser()
            if not file_path.is_absolute():
                file_path = (path.parent / file_path).resolve()
            entry["path"] = str(file_path)
    inbox = corpus.get("inbox") if isinstance(corpus, dict) else None
    if isinstance(inbox, dict) and isinstance(inbox.get("folder"), str):
        folder = Path(inbox["folder"]).expanduser()
        inbox["folder"] = str(folder if folder.is_absolute() else (path.parent / folder).resolve())
    return ProjectConfig.from_dict(data, source=str(path))
