"""The curation steps build_corpus runs, in order, each one object with one job.

A step has a `name` (its key in CorpusResult.seconds and .step_rows), the `counts` it reports
(stats keys, zero when it removes nothing) and `apply(rows, cfg)`, which returns the rows it
keeps and the rows it removes, each with a reason, the quarantine stage and the count it adds
to. build_corpus does the rest for every step alike: timing, rows in and out (the removal_share
check), quarantine records and counts. To add a step, write such a class here (or anywhere)
and put an instance in STEPS where it belongs in the order.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from distill_dag.configbase import ConfigError
from distill_dag.corpus.config import CorpusConfig
from distill_dag.corpus.near_dup import find_near_duplicates
from distill_dag.corpus.quality import (
    broken_characters,
    disallowed_script,
    known_languages,
    known_scripts,
    mixed_script_word,
    ungradeable_answer,
    wrong_language,
)
from distill_dag.corpus.semantic import earlier_duplicates, embed, load_embedder, matches_in
from distill_dag.corpus.text import (
    answer_key,
    clean_prompt,
    dedup_key,
    make_query_id,
    ngrams,
    normalize_text,
    word_tokens,
)


@dataclass(frozen=True)
class Removal:
    """A row a step set aside, and why."""

    row: dict
    field: str | None  # the field at fault (prompt, reference_answer); None: the whole row
    reason: str  # a sentence a person can act on
    stage: str  # the quarantine table's stage: clean, quality, dedup, decontam, near_dedup, ...
    count: str  # the stats key it adds one to: one of the step's `counts`
    # The row it duplicates or leaks (kept, or in the eval set) and how close it was (1.0 for
    # the same text, an estimated Jaccard or a cosine; None for an n-gram match).
    matched: str | None = None
    similarity: float | None = None


@dataclass
class StepResult:
    """What one step did: kept rows (in order), removed rows, and what it noticed besides."""

    kept: list[dict] = field(default_factory=list)
    removed: list[Removal] = field(default_factory=list)
    noted: Counter = field(default_factory=Counter)  # counts of rows kept but flagged
    warnings: list[str] = field(default_factory=list)
    # The embeddings of `kept`, row for row, when the step computed them (the corpus checks
    # search the final table with them instead of encoding it again).
    vectors: np.ndarray | None = None


class CurationStep(Protocol):
    """What build_corpus runs. Rows are dicts of the QUERY_SCHEMA columns (query_id, split and
    split_origin filled in by clean and split) plus "_key", the dedup key, from clean on; a step
    may change the rows it keeps but must not add rows."""

    name: str  # unique; its key in seconds and step_rows ("load" and "tables" are taken)
    counts: tuple[str, ...]  # the stats keys its removals and notes add to

    def apply(self, rows: list[dict], cfg: CorpusConfig) -> StepResult: ...


def _where(row: dict) -> str:
    """file:line of a row, for reasons and warnings ("generator:7" for generated queries)."""
    return f"{row.get('source_file') or row['source']}:{row.get('source_line')}"


def eval_bucket(query_id: str) -> float:
    """Uniform [0, 1) from the query id alone, so a query's split never depends on other rows."""
    digest = hashlib.sha256(f"distill-dag/eval-split/{query_id}".encode()).hexdigest()
    return int(digest[:15], 16) / 16**15


# -- clean: length limits, then the quality rules ---------------------------------------------

Check = Callable[[dict], str | None]


@dataclass(frozen=True)
class QualityRule:
    """One quality filter: the count it adds to, the field it judges, and `prepare(cfg)`: the
    check for this config (a row -> None or a reason), or None when the config turns it off."""

    count: str
    field: str
    prepare: Callable[[CorpusConfig], Check | None]


def _known(key: str, names: list[str], known: frozenset[str], what: str, hint: str) -> list[str]:
    """`names` if every one is known, else a ConfigError naming corpus.<key> and the unknown."""
    unknown = sorted(set(names) - known)
    if unknown:
        raise ConfigError(f"corpus.{key}: unknown {what} {unknown}; {hint}")
    return list(names)


def _on_prompt(check: Callable[..., str | None], *args: object) -> Check:
    return lambda row: check(row["prompt"], *args)


def _scripts(cfg: CorpusConfig) -> Check | None:
    if not cfg.scripts:
        return None
    allowed = _known("scripts", cfg.scripts, known_scripts(), "script name(s)",
                     "Unicode script names such as Latin, Greek, Cyrillic, Han, Hangul")
    return _on_prompt(disallowed_script, allowed)


def _languages(cfg: CorpusConfig) -> Check | None:
    if not cfg.languages:
        return None
    languages = _known("languages", cfg.languages, known_languages(),
                       "language code(s)", "ISO 639-1 codes such as en, de, zh")
    return _on_prompt(wrong_language, languages)


# Cheapest first: a row stops at the first rule it fails.
QUALITY_RULES: tuple[QualityRule, ...] = (
    QualityRule("broken_chars_removed", "prompt", lambda cfg: _on_prompt(
        broken_characters) if cfg.charset_check else None),
    QualityRule("mixed_script_removed", "prompt", lambda cfg: _on_prompt(
        mixed_script_word) if cfg.mixed_script_check else None),
    QualityRule("script_removed", "prompt", _scripts),
    QualityRule("language_removed", "prompt", _languages),
    QualityRule("ungradeable_answer_removed", "reference_answer", lambda cfg: (
        lambda row: ungradeable_answer(row["reference_answer"]))
        if cfg.answer_check == "verifiable" else None),
)


def _length_problem(prompt: str, norm: str, cfg: CorpusConfig) -> str | None:
    if not norm:
        return "empty prompt after normalization"
    if len(prompt) > cfg.max_prompt_chars:
        return f"prompt too long: {len(prompt)} chars > max_prompt_chars={cfg.max_prompt_chars}"
    if len(norm) < cfg.min_prompt_chars:
        return f"prompt too short: {len(norm)} chars < min_prompt_chars={cfg.min_prompt_chars}"
    return None


class Clean:
    """Prompts cleaned (clean_prompt); too short, too long or failing a quality rule set aside.
    Kept rows get their query_id and dedup key."""

    name = "clean"
    counts = ("length_removed", *(rule.count for rule in QUALITY_RULES), "eval_quality_flagged")

    def apply(self, rows: list[dict], cfg: CorpusConfig) -> StepResult:
        checks = [(rule, check) for rule in QUALITY_RULES if (check := rule.prepare(cfg))]
        out = StepResult()
        for row in rows:
            row = {**row, "prompt": clean_prompt(row["prompt"])}
            problem = _length_problem(row["prompt"], normalize_text(row["prompt"]), cfg)
            if problem is not None:
                out.removed.append(Removal(row, "prompt", problem, "clean", "length_removed"))
                continue
            for rule, check in checks:
                reason = check(row)
                if reason is None:
                    continue
                if row.get("split") == "eval":
                    # A benchmark's own row is kept: dropping it would shrink the eval set and
                    # stop it from protecting against contamination. It is reported instead.
                    out.warnings.append(f"eval row {_where(row)} fails a quality filter (kept): "
                                        f"{reason}")
                    out.noted["eval_quality_flagged"] += 1
                    continue
                out.removed.append(Removal(row, rule.field, reason, "quality", rule.count))
                break
            else:
                row["query_id"] = make_query_id(row["prompt"])
                row["_key"] = dedup_key(row["prompt"])
                out.kept.append(row)
        return out


# -- exact dedup, split, n-gram decontamination -----------------------------------------------

class ExactDedup:
    """Rows with the same dedup key: the first (an eval copy first) is kept; copies whose
    answers disagree are all set aside as conflicts."""

    name = "exact_dedup"
    counts = ("duplicates_removed", "conflicts")

    def apply(self, rows: list[dict], cfg: CorpusConfig) -> StepResult:
        groups: dict[str, list[dict]] = {}
        for row in rows:
            groups.setdefault(row["_key"], []).append(row)
        out = StepResult()
        for group in groups.values():
            qid = group[0]["query_id"]
            if len({answer_key(r["reference_answer"]) for r in group}) > 1:
                listing = ", ".join(f"'{r['reference_answer']}' ({_where(r)})" for r in group[:5])
                more = f" and {len(group) - 5} more" if len(group) > 5 else ""
                reason = f"conflicting answers for query {qid}: {listing}{more}"
                out.removed += [Removal(r, "reference_answer", reason, "dedup", "conflicts")
                                for r in group]
                continue
            # An eval copy wins: keeping the train copy would leak the eval query into training.
            keep = next((r for r in group if r.get("split") == "eval"), group[0])
            out.kept.append(keep)
            out.removed += [Removal(r, "prompt", f"duplicate of query {qid} ({_where(keep)})",
                                    "dedup", "duplicates_removed", qid, 1.0)
                            for r in group if r is not keep]
        return out


class Split:
    """Every row gets its split: the file's, else train (with an explicit eval set) or the hash
    of its id (eval_fraction). Eval rows beyond max_eval are held out or trained on."""

    name = "split"
    counts = ("eval_held_out",)

    def apply(self, rows: list[dict], cfg: CorpusConfig) -> StepResult:
        for row in rows:
            if row.get("split") is not None and row.get("split_origin") is None:
                row["split_origin"] = "explicit"  # set by the file, not carried from a past build
        explicit_eval = any(f.split == "eval" for f in cfg.files) or any(
            r.get("split") == "eval" and r["split_origin"] == "explicit"
            for r in rows if r.get("split") is not None
        )
        for row in rows:
            if row.get("split") is None:
                # With an explicit eval set, unlabelled rows are training rows.
                hashed = not explicit_eval and eval_bucket(row["query_id"]) < cfg.eval_fraction
                row["split"] = "eval" if hashed else "train"
                row["split_origin"] = "hash"
        evals = sorted(
            (r for r in rows if r["split"] == "eval"), key=lambda r: eval_bucket(r["query_id"])
        )
        if cfg.max_eval is None or len(evals) <= cfg.max_eval:
            return StepResult(rows)
        over = {id(r) for r in evals[cfg.max_eval :]}
        out = StepResult()
        for row in rows:
            if id(row) not in over:
                out.kept.append(row)
            elif explicit_eval:
                # Rows given as eval data (a benchmark's test set) must never become training.
                reason = f"held out: eval row beyond max_eval={cfg.max_eval}, kept out of training"
                out.removed.append(Removal(row, None, reason, "decontam", "eval_held_out"))
            else:
                # Hash-picked overflow was never special; it trains like any other query.
                row["split"] = "train"
                row["split_origin"] = "hash"
                out.kept.append(row)
        return out


class NgramDecontam:
    """Training queries equal to an eval query, or sharing a decontam_ngram-word n-gram with
    one, are set aside as contamination."""

    name = "ngram_decontam"
    counts = ("contaminated_removed",)

    def apply(self, rows: list[dict], cfg: CorpusConfig) -> StepResult:
        n = cfg.decontam_ngram
        index: dict[tuple[str, ...], str] = {}
        eval_keys: dict[str, str] = {}
        for row in rows:
            if row["split"] == "eval":
                eval_keys.setdefault(row["_key"], row["query_id"])
                for gram in ngrams(word_tokens(row["prompt"]), n):
                    index.setdefault(gram, row["query_id"])
        out = StepResult()
        for row in rows:
            if row["split"] != "train":
                out.kept.append(row)
                continue
            reason = matched = None
            if row["_key"] in eval_keys:
                matched = eval_keys[row["_key"]]
                reason = f"eval contamination: same text as eval query {matched}"
            else:
                for gram in sorted(ngrams(word_tokens(row["prompt"]), n)):
                    if gram in index:
                        what = f"{n}-gram" if len(gram) == n else "whole text"
                        shared, matched = " ".join(gram), index[gram]
                        reason = (f"eval contamination: shares {what} '{shared}' with eval "
                                  f"query {matched}")
                        break
            if reason is None:
                out.kept.append(row)
            else:
                # An n-gram match has no similarity score; an identical text is 1.0.
                similarity = 1.0 if row["_key"] in eval_keys else None
                out.removed.append(Removal(row, "prompt", reason, "decontam",
                                           "contaminated_removed", matched, similarity))
        return out


# -- near duplicates: MinHash, then embeddings ------------------------------------------------

class NearDedup:
    """Training queries that nearly duplicate an eval query (contamination) or an earlier
    training query with the same answer (MinHash-LSH, see near_dup.py); off when
    near_dup_threshold is null."""

    name = "near_dedup"
    counts = ("near_duplicates_removed", "near_dup_contaminated_removed")

    def apply(self, rows: list[dict], cfg: CorpusConfig) -> StepResult:
        if cfg.near_dup_threshold is None:
            return StepResult(rows)
        # Eval queries first: they are never removed, and a training query close to one leaks it.
        ordered = ([r for r in rows if r["split"] == "eval"]
                   + [r for r in rows if r["split"] != "eval"])
        found = find_near_duplicates(
            [r["prompt"] for r in ordered], [answer_key(r["reference_answer"]) for r in ordered],
            threshold=cfg.near_dup_threshold, num_perm=cfg.near_dup_num_perm,
            shingle_words=cfg.near_dup_shingle_words,
            protected=[r["split"] == "eval" for r in ordered])
        out = StepResult()
        removed = set()
        for dup in found:
            row, match = ordered[dup.index], ordered[dup.of]
            removed.add(id(row))
            what = (f"query {match['query_id']} ({_where(match)}), estimated Jaccard "
                    f"{dup.similarity:.2f}")
            if match["split"] == "eval":
                out.removed.append(Removal(
                    row, "prompt", f"eval contamination: near-duplicate of eval {what}",
                    "decontam", "near_dup_contaminated_removed", match["query_id"],
                    dup.similarity))
            else:
                out.removed.append(Removal(row, "prompt", f"near-duplicate of {what}",
                                           "near_dedup", "near_duplicates_removed",
                                           match["query_id"], dup.similarity))
        out.kept = [r for r in rows if id(r) not in removed]
        return out


class EmbeddingDedupDecontam:
    """Embedding similarity (semantic.py): training queries that paraphrase an eval query
    (contamination), then training queries that paraphrase an earlier one; same answer only.
    Keeps the embeddings of the rows it keeps."""

    name = "embedding_dedup_decontam"
    counts = ("semantic_contaminated_removed", "semantic_duplicates_removed", "embed_truncated")

    def apply(self, rows: list[dict], cfg: CorpusConfig) -> StepResult:
        if (cfg.embed_decontam_threshold is None and cfg.embed_dedup_threshold is None) or not any(
                r["split"] == "train" for r in rows):
            return StepResult(rows)  # nothing to compare (an empty corpus fails later)
        out = StepResult()
        model = load_embedder(cfg.embed_model)
        embedded = embed(model, [r["prompt"] for r in rows], cfg.embed_batch_size)
        out.noted["embed_truncated"] += embedded.truncated
        if embedded.truncated:
            out.warnings.append(
                f"{embedded.truncated} queries are longer than the embedding model's "
                f"{embedded.max_tokens}-token window: they were compared by their first "
                f"{embedded.max_tokens} tokens")
        vectors = embedded.vectors
        groups = [answer_key(r["reference_answer"]) for r in rows]
        train = [i for i, r in enumerate(rows) if r["split"] == "train"]
        evals = [i for i, r in enumerate(rows) if r["split"] == "eval"]
        removed: set[int] = set()
        if cfg.embed_decontam_threshold is not None and evals:
            for m in matches_in(vectors[train], [groups[i] for i in train], vectors[evals],
                                [groups[i] for i in evals], cfg.embed_decontam_threshold):
                row, match = rows[train[m.index]], rows[evals[m.of]]
                out.removed.append(Removal(
                    row, "prompt", f"eval contamination: paraphrase of eval query "
                    f"{match['query_id']} ({_where(match)}), cosine {m.similarity:.3f}",
                    "decontam", "semantic_contaminated_removed", match["query_id"],
                    m.similarity))
                removed.add(train[m.index])
        if cfg.embed_dedup_threshold is not None:
            left = [i for i in train if i not in removed]
            for m in earlier_duplicates(vectors[left], [groups[i] for i in left],
                                        cfg.embed_dedup_threshold):
                row, match = rows[left[m.index]], rows[left[m.of]]
                out.removed.append(Removal(
                    row, "prompt", f"paraphrase of query {match['query_id']} "
                    f"({_where(match)}), cosine {m.similarity:.3f}", "semantic_dedup",
                    "semantic_duplicates_removed", match["query_id"], m.similarity))
                removed.add(left[m.index])
        kept = [i for i in range(len(rows)) if i not in removed]
        out.kept, out.vectors = [rows[i] for i in kept], vectors[kept]
        return out


# The order matters: ids and dedup keys exist after clean, splits after split, and the
# near-duplicate steps only compare what exact dedup and the n-gram check left.
STEPS: tuple[CurationStep, ...] = (Clean(), ExactDedup(), Split(), NgramDecontam(), NearDedup(),
                                   EmbeddingDedupDecontam())
