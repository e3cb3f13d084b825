"""Observed inputs: the corpus files and each teacher's settings, as observable source assets.

Their data versions are content hashes, so Dagster marks exactly the affected work stale: a new
inbox file makes query_corpus stale; editing one teacher makes only its partition stale. The
stale command, the inbox sensor and the backfill schedule record observations before they look
at staleness; in the web UI, "Observe sources" does the same.
"""

import warnings

import dagster as dg

from distill_dag.stages import CORPUS_FILES, TEACHER_CONFIG


def build(teachers: dg.PartitionsDefinition) -> list:
    with warnings.catch_warnings():  # observable source assets are marked beta in Dagster 1.13
        warnings.simplefilter("ignore", dg.BetaWarning)
        return _build(teachers)


def _build(teachers: dg.PartitionsDefinition) -> list:
    @dg.observable_source_asset(
        name=CORPUS_FILES,
        group_name="inputs",
        required_resource_keys={"project"},
        description="The corpus files (config `corpus.files` and the inbox folder). Data version: "
                    "a hash of every file's bytes.",
    )
    def corpus_files(context) -> dg.ObserveResult:
        cfg = context.resources.project.load()
        sources = cfg.corpus.all_sources()
        return dg.ObserveResult(
            data_version=dg.DataVersion(cfg.corpus_sources_version()),
            metadata={"files": len(sources),
                      "paths": dg.MetadataValue.md("\n".join(f"- {s.path}" for s in sources)
                                                   or "none (generator only)")})

    @dg.observable_source_asset(
        name=TEACHER_CONFIG,
        group_name="inputs",
        partitions_def=teachers,
        required_resource_keys={"project"},
        description="Each teacher's settings in the project config (model, backend, prompt, "
                    "sampling). Data version: a hash of them, per teacher partition.",
    )
    def teacher_config(context) -> dg.DataVersionsByPartition:
        cfg = context.resources.project.load()
        return dg.DataVersionsByPartition(
            {t.name: dg.DataVersion(cfg.teacher_version(t.name)) for t in cfg.teachers})

    return [corpus_files, teacher_config]
