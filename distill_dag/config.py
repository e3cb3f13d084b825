"""The project config: one YAML file that declares the corpus, teachers, student and stage knobs.

The file is read when the code location loads (teachers become Dagster partitions), from
``$DISTILL_DAG_CONFIG`` or the packaged embedded default (``distill_dag/configs/default.yaml``).
Every error names the file and the config path of the offending field.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from distill_dag.configbase import ConfigError, check_keys, stable_hash
from distill_dag.corpus.config import CorpusConfig
from distill_dag.evaluation.config import EvalConfig
from distill_dag.filtering import FilterConfig
from distill_dag.generation.config import StudentConfig, TeacherConfig
from distill_dag.orchestration_config import OrchestrationConfig
from distill_dag.provenance.categories import ProvenanceConfig
from distill_dag.selection import RankingRule
from distill_dag.training.config import TrackingConfig, TrainingConfig

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"


RESERVED_TEACHER_PREFIXES = ("eval-", "student-")


@dataclass
class ProjectConfig:
    """Everything a run of the DAG is about; see configs/default.yaml for a commented example."""

    teachers: list[TeacherConfig]  # one Dagster partition each; at least one
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    provenance: ProvenanceConfig = field(default_factory=ProvenanceConfig)
    selection: RankingRule = field(default_factory=RankingRule)
    filtering: FilterConfig = field(default_factory=FilterConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    orchestration: OrchestrationConfig = field(default_factory=OrchestrationConfig)
    source: str = "<dict>"  # where this config was read from (for messages)

    def __post_init__(self) -> None:
        if not self.teachers:
            raise ConfigError(f"{self.source}: teachers: declare at least one teacher")
        names = [t.name for t in self.teachers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"{self.source}: teachers: duplicate teacher name(s) {duplicates}")
        # Generations are stored by name; these prefixes hold eval_report's and the difficulty
        # filter's own generations.
        reserved = [n for n in names if n.startswith(RESERVED_TEACHER_PREFIXES)]
        if reserved:
            raise ConfigError(f"{self.source}: teachers: name(s) {reserved} start with a "
                              f"reserved prefix {RESERVED_TEACHER_PREFIXES}; rename them")

    def teacher(self, name: str) -> TeacherConfig:
        for teacher in self.teachers:
            if teacher.name == name:
                return teacher
        raise KeyError(f"no teacher {name!r} in {self.source}; known: "
                       + ", ".join(t.name for t in self.teachers))

    def fingerprint(self) -> str:
        """A hash of every section: equal exactly when two loads of the config agree."""
        return self.section_hash("corpus", "teachers", "student", "provenance", "selection",
                                 "filtering", "training", "evaluation", "tracking")

    def section_hash(self, *names: str) -> str:
        """A hash of config sections: part of a stage's code_version, so editing them shows it
        as changed in Dagster."""
        return stable_hash({n: _plain(getattr(self, n)) for n in names}, length=8)

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
        so editing one teacher makes only that teacher's partition stale."""
        plain = _plain(self.teacher(name))
        # How fast or where it runs changes no output: batch size, the server's address,
        # concurrency, rate limits, retries, prices.
        plain.pop("batch_size", None)
        if plain.get("endpoint"):
            plain["endpoint"] = {"model": plain["endpoint"]["model"],
                                 "api": plain["endpoint"]["api"],
                                 "logprobs": plain["endpoint"]["logprobs"]}
        if plain.get("vllm"):  # GPUs, memory and speed settings change no output
            plain["vllm"] = self.teacher(name).vllm.output_settings()
        else:  # absent for other backends: existing teachers keep their versions
            plain.pop("vllm", None)
        return stable_hash(plain, length=12)

    def teacher_gpus(self) -> int:
        """GPUs the largest teacher needs in one step: its vLLM tensor_parallel_size (else 1)."""
        return max([t.vllm.tensor_parallel_size for t in self.teachers if t.vllm] or [1])

    def corpus_sources_version(self) -> str:
        """A hash of the corpus files' contents (inbox included): the observed data version of
        the corpus sources, so a new, edited or vanished file makes query_corpus stale."""
        from distill_dag.corpus.loaders import sources_fingerprint

        return stable_hash(sources_fingerprint(self.corpus.all_sources()), length=12)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> ProjectConfig:
        try:
            check_keys(cls, data, "config")
            if "source" in data:
                raise ConfigError("config: 'source' is set by the loader, not the file")
            teachers = data.get("teachers") or []
            if not isinstance(teachers, list):
                raise ConfigError("teachers: expected a list of teachers")
            return cls(
                teachers=[TeacherConfig.from_dict(t, f"teachers[{i}]")
                          for i, t in enumerate(teachers)],
                corpus=CorpusConfig.from_dict(data.get("corpus") or {}, "corpus"),
                student=StudentConfig.from_dict(data.get("student") or {}, "student"),
                provenance=ProvenanceConfig.from_dict(data.get("provenance") or {}, "provenance"),
                selection=RankingRule.from_dict(data.get("selection") or {}, "selection"),
                filtering=FilterConfig.from_dict(data.get("filtering") or {}, "filtering"),
                training=TrainingConfig.from_dict(data.get("training") or {}, "training"),
                evaluation=EvalConfig.from_dict(data.get("evaluation") or {}, "evaluation"),
                tracking=TrackingConfig.from_dict(data.get("tracking") or {}, "tracking"),
                orchestration=OrchestrationConfig.from_dict(data.get("orchestration") or {},
                                                            "orchestration"),
                source=source,
            )
        except (ValueError, TypeError) as exc:
            if str(exc).startswith(source):
                raise
            raise ConfigError(f"{source}: {exc}") from exc


def _plain(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
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
