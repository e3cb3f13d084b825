"""Turn loaded rows into the curated query table: clean, dedup, split, decontaminate."""

from __future__ import annotations

import hashlib
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from distill_dag.corpus.config import ConfigError, CorpusConfig
from distill_dag.corpus.generator import generate_word_problems
from distill_dag.corpus.loaders import load_file, quarantine_record
from distill_dag.corpus.semantic import QueryVectors
from distill_dag.errors import DistillError

QUERY_SCHEMA: dict[str, Any] = {
    "query_id": pl.String,
    "prompt": pl.String,
    "reference_answer": pl.String,
    "domain": pl.String,
    "source": pl.String,
    "split": pl.String,
    "difficulty": pl.Int64,
    "source_file": pl.String,
    "source_line": pl.Int64,
    # "explicit" (a file's split column or a source's forced split) or "hash" (eval_fraction):
    # a file that disappears keeps its rows' splits, and only explicit eval rows make the
    # corpus one with an explicit eval set.
    "split_origin": pl.String,
}
QUARANTINE_SCHEMA: dict[str, Any] = {
    "source_file": pl.String,
    "line": pl.Int64,
    "field": pl.String,
    "reason": pl.String,
    "raw": pl.String,
    "stage": pl.String,
    # The row a duplicate or contamination removal matched (kept, or in the eval set) and how
    # close it was (1.0 for the same text, the estimated Jaccard or cosine for near-duplicates,
    # null for an n-gram match); null for rows removed on their own, and for conflicts.
    "matched_query_id": pl.String,
    "similarity": pl.Float64,
}
_WORD = re.compile(r"[^\W_]+")  # Unicode letters and digits; numbers are words too


class EmptyCorpusError(DistillError, ValueError):
    """No training query survived loading and curation."""


@dataclass
class CorpusResult:
    """The curated queries, everything set aside (with reasons), and counts."""

    queries: pl.DataFrame
    quarantine: pl.DataFrame
    stats: dict[str, int]
    warnings: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of each step
    # Rows entering and leaving each filtering step, in order (for removal shares).
    step_rows: dict[str, tuple[int, int]] = field(default_factory=dict)
    # The embeddings of the kept queries (None when the embedding step is off), so the leakage
    # and duplicate checks can search the final table without encoding it again.
    embeddings: QueryVectors | None = None


def normalize_text(s: str) -> str:
    """NFKC, whitespace runs collapsed to one space, stripped."""
    return " ".join(unicodedata.normalize("NFKC", s).split())


def _strip_punct(s: str) -> str:
    start, end = 0, len(s)
    while start < end and (s[start].isspace() or unicodedata.category(s[start]).startswith("P")):
        start += 1
    while end > start and (
        s[end - 1].isspace() or unicodedata.category(s[end - 1]).startswith("P")
    ):
        end -= 1
    return s[start:end]


def dedup_key(s: str) -> str:
    """The identity of a prompt: normalized, casefolded, punctuation stripped at both ends."""
    return _strip_punct(normalize_text(s).casefold())


def make_query_id(prompt: str) -> str:
    """Stable content hash: first 16 hex chars of sha256(dedup_key(prompt))."""
    return hashlib.sha256(dedup_key(prompt).encode("utf-8")).hexdigest()[:16]


def clean_prompt(s: str) -> str:
    """The prompt as stored and sent to teachers: line endings unified, NFC, stripped.

    Deliberately lighter than `normalize_text`: NFKC would turn "x²" into "x2" and collapsing
    whitespace would flatten code and tables, changing what the teacher is asked.
    """
    return unicodedata.normalize("NFC", s.replace("\r\n", "\n").replace("\r", "\n")).strip()


def answer_key(answer: str) -> str:
    """Comparable form of a reference answer, so "1,234" and "1234.0" agree."""
    text = normalize_text(answer).casefold().rstrip(".").strip()
    plain = text.replace(",", "").replace("$", "")
    try:
        return format(Decimal(plain).normalize(), "f")
    except InvalidOperation:
        return text


def eval_bucket(query_id: str) -> float:
    """Uniform [0, 1) from the query id alone, so a query's split never depends on other rows."""
    digest = hashlib.sha256(f"distill-dag/eval-split/{query_id}".encode()).hexdigest()
    return int(digest[:15], 16) / 16**15


def word_tokens(s: str) -> list[str]:
    return _WORD.findall(normalize_text(s).casefold())


def ngrams(tokens: list[str], n: int) -> set[tuple[str, ...]]:
    """Word n-grams; a text shorter than n words is one gram (the whole text)."""
    if len(tokens) < n:
        return {tuple(tokens)} if tokens else set()
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def _where(row: dict) -> str:
    return f"{row.get('source_file') or row['source']}:{row.get('source_line')}"


def _setaside(row: dict, field: str | None, reason: str, stage: str,
              matched: str | None = None, similarity: float | None = None) -> dict:
    record = quarantine_record(
        row.get("source_file"), row.get("source_line"), field, reason, row["prompt"]
    )
    record.update(stage=stage, matched_query_id=matched, similarity=similarity)
    return record


def _known(key: str, names: list[str], known: frozenset[str], what: str, hint: str) -> list[str]:
    """`names` if every one is known, else a ConfigError naming corpus.<key> and the unknown."""
    unknown = sorted(set(names) - known)
    if unknown:
        raise ConfigError(f"corpus.{key}", f"unknown {what} {unknown}; {hint}")
    return list(names)


def _quality_checks(cfg: CorpusConfig) -> list[tuple[str, str, Callable[[dict], str | None]]]:
    """(stat name, field, check) for each enabled quality filter, cheapest first."""
    from distill_dag.corpus import quality

    checks: list[tuple[str, str, Callable[[dict], str | None]]] = []
    if cfg.charset_check:
        checks.append(("broken_chars_removed", "prompt",
                       lambda r: quality.broken_characters(r["prompt"])))
    if cfg.mixed_script_check:
        checks.append(("mixed_script_removed", "prompt",
                       lambda r: quality.mixed_script_word(r["prompt"])))
    if cfg.scripts:
        allowed = _known("scripts", cfg.scripts, quality.known_scripts(), "script name(s)",
                         "Unicode script names such as Latin, Greek, Cyrillic, Han, Hangul")
        checks.append(("script_removed", "prompt",
                       lambda r: quality.disallowed_script(r["prompt"], allowed)))
    if cfg.languages:
        languages = _known("languages", cfg.languages, quality.known_languages(),
                           "language code(s)", "ISO 639-1 codes such as en, de, zh")
        checks.append(("language_removed", "prompt",
                       lambda r: quality.wrong_language(r["prompt"], languages)))
    if cfg.answer_check == "verifiable":
        checks.append(("ungradeable_answer_removed", "reference_answer",
                       lambda r: quality.ungradeable_answer(r["reference_answer"])))
    return checks


def _clean(rows: list[dict], cfg: CorpusConfig, out: list[dict], stats: Counter,
           warnings: list[str]) -> list[dict]:
    kept = []
    checks = _quality_checks(cfg)
    for row in rows:
        row = {**row, "prompt": clean_prompt(row["prompt"])}
        norm = normalize_text(row["prompt"])
        if not norm:
            out.append(_setaside(row, "prompt", "empty prompt after normalization", "clean"))
            stats["length_removed"] += 1
            continue
        if len(row["prompt"]) > cfg.max_prompt_chars:
            size, limit = len(row["prompt"]), cfg.max_prompt_chars
            out.append(_setaside(row, "prompt", f"prompt too long: {size} chars > "
                                                f"max_prompt_chars={limit}", "clean"))
            stats["length_removed"] += 1
            continue
        if len(norm) < cfg.min_prompt_chars:
            limit = cfg.min_prompt_chars
            reason = f"prompt too short: {len(norm)} chars < min_prompt_chars={limit}"
            out.append(_setaside(row, "prompt", reason, "clean"))
            stats["length_removed"] += 1
            continue
        for stat, field_name, check in checks:
            reason = check(row)
            if reason is None:
                continue
            if row.get("split") == "eval":
                # A benchmark's own row is kept: dropping it would shrink the eval set and stop
                # it from protecting against contamination. It is reported instead.
                warnings.append(f"eval row {_where(row)} fails a quality filter (kept): {reason}")
                stats["eval_quality_flagged"] += 1
                continue
            out.append(_setaside(row, field_name, reason, "quality"))
            stats[stat] += 1
            break
        else:
            row["query_id"] = make_query_id(row["prompt"])
            row["_key"] = dedup_key(row["prompt"])
            kept.append(row)
    return kept


def _dedup(rows: list[dict], out: list[dict], stats: Counter) -> list[dict]:
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["_key"], []).append(row)
    kept = []
    for group in groups.values():
        qid = group[0]["query_id"]
        if len({answer_key(r["reference_answer"]) for r in group}) > 1:
            listing = ", ".join(f"'{r['reference_answer']}' ({_where(r)})" for r in group[:5])
            more = f" and {len(group) - 5} more" if len(group) > 5 else ""
            for r in group:
                reason = f"conflicting answers for query {qid}: {listing}{more}"
                out.append(_setaside(r, "reference_answer", reason, "dedup"))
            stats["conflicts"] += len(group)
            continue
        # An eval copy wins: keeping the train copy would leak the eval query into training.
        keep = next((r for r in group if r.get("split") == "eval"), group[0])
        kept.append(keep)
        for r in group:
            if r is not keep:
                reason = f"duplicate of query {qid} ({_where(keep)})"
                out.append(_setaside(r, "prompt", reason, "dedup", qid, 1.0))
                stats["duplicates_removed"] += 1
    return kept


def _assign_splits(
    rows: list[dict], cfg: CorpusConfig, out: list[dict], stats: Counter
) -> list[dict]:
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
        return rows
    over = {id(r) for r in evals[cfg.max_eval :]}
    kept = []
    for row in rows:
        if id(row) not in over:
            kept.append(row)
        elif explicit_eval:
            # Rows given as eval data (a benchmark's test set) must never become training data.
            reason = f"held out: eval row beyond max_eval={cfg.max_eval}, kept out of training"
            out.append(_setaside(row, None, reason, "decontam"))
            stats["eval_held_out"] += 1
        else:
            # Hash-picked overflow was never special; it trains like any other query.
            row["split"] = "train"
            row["split_origin"] = "hash"
            kept.append(row)
    return kept


def _decontaminate(rows: list[dict], n: int, out: list[dict], stats: Counter) -> list[dict]:
    index: dict[tuple[str, ...], str] = {}
    eval_keys: dict[str, str] = {}
    for row in rows:
        if row["split"] == "eval":
            eval_keys.setdefault(row["_key"], row["query_id"])
            for gram in ngrams(word_tokens(row["prompt"]), n):
                index.setdefault(gram, row["query_id"])
    kept = []
    for row in rows:
        if row["split"] != "train":
            kept.append(row)
            continue
        reason = matched = None
        if row["_key"] in eval_keys:
            matched = eval_keys[row["_key"]]
            reason = f"eval contamination: same text as eval query {matched}"
        else:
            for gram in sorted(ngrams(word_tokens(row["prompt"]), n)):
                if gram in index:
                    what = f"{n}-gram" if len(gram) == n else "whole text"
                    shared, other = " ".join(gram), index[gram]
                    reason = f"eval contamination: shares {what} '{shared}' with eval query {other}"
                    matched = other
                    break
        if reason is None:
            kept.append(row)
        else:
            # An n-gram match has no similarity score; an identical text is 1.0.
            similarity = 1.0 if row["_key"] in eval_keys else None
            out.append(_setaside(row, "prompt", reason, "decontam", matched, similarity))
            stats["contaminated_removed"] += 1
    return kept


def _near_dedup(rows: list[dict], cfg: CorpusConfig, out: list[dict], stats: Counter
                ) -> list[dict]:
    """Set aside training queries that nearly duplicate an eval query (contamination) or an
    earlier training query with the same answer (MinHash-LSH, see near_dup.py)."""
    if cfg.near_dup_threshold is None:
        return rows
    from distill_dag.corpus.near_dup import find_near_duplicates

    # Eval queries first: they are never removed, and a training query close to one leaks it.
    ordered = [r for r in rows if r["split"] == "eval"] + [r for r in rows if r["split"] != "eval"]
    found = find_near_duplicates(
        [r["prompt"] for r in ordered], [answer_key(r["reference_answer"]) for r in ordered],
        threshold=cfg.near_dup_threshold, num_perm=cfg.near_dup_num_perm,
        shingle_words=cfg.near_dup_shingle_words, protected=[r["split"] == "eval" for r in ordered])
    removed = set()
    for dup in found:
        row, match = ordered[dup.index], ordered[dup.of]
        removed.add(id(row))
        what = (f"query {match['query_id']} ({_where(match)}), estimated Jaccard "
                f"{dup.similarity:.2f}")
        if match["split"] == "eval":
            out.append(_setaside(row, "prompt", f"eval contamination: near-duplicate of eval "
                                                f"{what}", "decontam", match["query_id"],
                                 dup.similarity))
            stats["near_dup_contaminated_removed"] += 1
        else:
            out.append(_setaside(row, "prompt", f"near-duplicate of {what}", "near_dedup",
                                 match["query_id"], dup.similarity))
            stats["near_duplicates_removed"] += 1
    return [r for r in rows if id(r) not in removed]


def _semantic(rows: list[dict], cfg: CorpusConfig, out: list[dict], stats: Counter,
              warnings: list[str]) -> tuple[list[dict], np.ndarray | None]:
    """Embedding similarity (semantic.py): training queries that paraphrase an eval query
    (contamination), then training queries that paraphrase an earlier one; same answer only.
    Returns the kept rows and their embeddings (None when the step is off)."""
    if (cfg.embed_decontam_threshold is None and cfg.embed_dedup_threshold is None) or not any(
            r["split"] == "train" for r in rows):
        return rows, None  # nothing to compare (an empty corpus fails later, with its reasons)
    from distill_dag.corpus.semantic import earlier_duplicates, embed, load_embedder, matches_in

    model = load_embedder(cfg.embed_model)
    embedded = embed(model, [r["prompt"] for r in rows], cfg.embed_batch_size)
    stats["embed_truncated"] += embedded.truncated
    if embedded.truncated:
        warnings.append(f"{embedded.truncated} queries are longer than the embedding model's "
                        f"{embedded.max_tokens}-token window: they were compared by their "
                        f"first {embedded.max_tokens} tokens")
    vectors = embedded.vectors
    groups = [answer_key(r["reference_answer"]) for r in rows]
    train = [i for i, r in enumerate(rows) if r["split"] == "train"]
    evals = [i for i, r in enumerate(rows) if r["split"] == "eval"]
    removed: set[int] = set()
    if cfg.embed_decontam_threshold is not None and evals:
        for m in matches_in(vectors[train], [groups[i] for i in train], vectors[evals],
                            [groups[i] for i in evals], cfg.embed_decontam_threshold):
            row, match = rows[train[m.index]], rows[evals[m.of]]
            out.append(_setaside(row, "prompt", f"eval contamination: paraphrase of eval query "
                                 f"{match['query_id']} ({_where(match)}), cosine "
                                 f"{m.similarity:.3f}", "decontam", match["query_id"],
                                 m.similarity))
            removed.add(train[m.index])
            stats["semantic_contaminated_removed"] += 1
    if cfg.embed_dedup_threshold is not None:
        left = [i for i in train if i not in removed]
        for m in earlier_duplicates(vectors[left], [groups[i] for i in left],
                                    cfg.embed_dedup_threshold):
            row, match = rows[left[m.index]], rows[left[m.of]]
            out.append(_setaside(row, "prompt", f"paraphrase of query {match['query_id']} "
                                 f"({_where(match)}), cosine {m.similarity:.3f}",
                                 "semantic_dedup", match["query_id"], m.similarity))
            removed.add(left[m.index])
            stats["semantic_duplicates_removed"] += 1
    kept = [i for i in range(len(rows)) if i not in removed]
    return [rows[i] for i in kept], vectors[kept]


def _reason_pattern(reason: str) -> str:
    # Group reasons that differ only in quoted values, numbers or ids.
    return re.sub(r"[0-9a-f]{16}|\d+", "N", re.sub(r"'[^']*'", "'…'", reason))


def _empty_message(stats: dict[str, int], quarantine: list[dict]) -> str:
    counts = Counter(_reason_pattern(q["reason"]) for q in quarantine)
    examples: dict[str, str] = {}
    for q in quarantine:
        examples.setdefault(_reason_pattern(q["reason"]), q["reason"])
    top = "; ".join(f"{c} x {examples[p]}" for p, c in counts.most_common(5)) or "none"
    return (
        f"no usable training queries: read {stats['rows_read']} rows, "
        f"{stats['rows_quarantined']} quarantined, {stats['eval']} in eval. "
        f"Top quarantine reasons: {top}"
    )


def _carried_rows(previous: pl.DataFrame | None, source_file: str) -> list[dict]:
    """The rows a previous build ingested from `source_file` (matched by path, else by file
    name, so a moved project folder still finds them), ready to curate again."""
    if previous is None or previous.is_empty():
        return []
    rows = previous.filter(pl.col("source_file") == source_file)
    if rows.is_empty():
        name = Path(source_file).name
        rows = previous.filter(pl.col("source_file").str.extract(r"([^/\\]+)$") == name)
    # A carried row keeps the split it had (the split it was trained or evaluated in must not
    # change because its file is gone) and where that split came from (tables written before
    # split_origin existed: treated as hashed).
    return [{**{k: v for k, v in r.items() if k != "query_id"},
             "split_origin": r.get("split_origin") or "hash"} for r in rows.to_dicts()]


def _load_sources(cfg: CorpusConfig, previous: pl.DataFrame | None, rows: list[dict],
                  setaside: list[dict], stats: Counter, warnings: list[str]) -> None:
    """Read every source. A file that disappeared after it was ingested keeps its queries."""
    for source in cfg.all_sources():
        if not Path(source.path).is_file():
            carried = _carried_rows(previous, str(Path(source.path)))
            if not carried:
                load_file(source)  # raises FileNotFoundError naming the file
            warnings.append(f"corpus file {source.path} is gone; its {len(carried)} queries "
                            "ingested earlier are kept")
            rows.extend(carried)
            stats["rows_carried"] += len(carried)
            continue
        loaded = load_file(source)
        stats["rows_read"] += loaded.rows_read
        rows.extend(loaded.rows)
        setaside.extend({**q, "stage": "load"} for q in loaded.quarantine)
    if cfg.inbox is None or previous is None or previous.is_empty():
        return
    # Inbox files are listed from the folder, so a removed one is simply not listed.
    listed = {Path(s.path).name for s in cfg.inbox.sources()}
    folder = Path(cfg.inbox.folder)
    ingested = previous.filter(pl.col("source_file").is_not_null())["source_file"].unique()
    for name in sorted(ingested):
        # Matched by folder name too, so a moved project folder still finds its inbox rows.
        if Path(name).parent.name == folder.name and Path(name).name not in listed:
            carried = _carried_rows(previous, name)
            warnings.append(f"inbox file {name} is gone; its {len(carried)} queries ingested "
                            "earlier are kept")
            rows.extend(carried)
            stats["rows_carried"] += len(carried)


def build_corpus(cfg: CorpusConfig, previous: pl.DataFrame | None = None) -> CorpusResult:
    """Load every source and curate. Raises EmptyCorpusError when no training query remains.

    `previous` is the last query table: queries of a file that has since disappeared are taken
    from it (with a warning) rather than lost."""
    rows: list[dict] = []
    setaside: list[dict] = []
    stats: Counter = Counter()
    warnings: list[str] = []
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    step_rows: dict[str, tuple[int, int]] = {}

    def lap(step: str, before: int | None = None) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[step] = now - clock
        clock = now
        if before is not None:
            step_rows[step] = (before, len(rows))

    gen = cfg.effective_generator()
    if gen is not None:
        for i, row in enumerate(generate_word_problems(gen.n, gen.seed, gen.levels), 1):
            rows.append({**row, "source_file": None, "source_line": i})
        stats["rows_read"] += gen.n
    _load_sources(cfg, previous, rows, setaside, stats, warnings)
    lap("load")
    before = len(rows)
    rows = _clean(rows, cfg, setaside, stats, warnings)
    lap("clean", before)
    before = len(rows)
    rows = _dedup(rows, setaside, stats)
    lap("exact_dedup", before)
    before = len(rows)
    rows = _assign_splits(rows, cfg, setaside, stats)
    lap("split", before)
    before = len(rows)
    rows = _decontaminate(rows, cfg.decontam_ngram, setaside, stats)
    lap("ngram_decontam", before)
    before = len(rows)
    rows = _near_dedup(rows, cfg, setaside, stats)
    lap("near_dedup", before)
    before = len(rows)
    rows, vectors = _semantic(rows, cfg, setaside, stats, warnings)
    lap("embedding_dedup_decontam", before)

    queries = pl.DataFrame(
        [{col: r.get(col) for col in QUERY_SCHEMA} for r in rows], schema=QUERY_SCHEMA
    ).sort(["split", "query_id"])
    quarantine = pl.DataFrame(
        [{col: q.get(col) for col in QUARANTINE_SCHEMA} for q in setaside], schema=QUARANTINE_SCHEMA
    )
    result_stats = {
        key: int(stats[key])
        for key in (
            "rows_read",
            "length_removed",
            "broken_chars_removed",
            "mixed_script_removed",
            "script_removed",
            "language_removed",
            "ungradeable_answer_removed",
            "eval_quality_flagged",
            "duplicates_removed",
            "conflicts",
            "contaminated_removed",
            "near_duplicates_removed",
            "near_dup_contaminated_removed",
            "semantic_contaminated_removed",
            "semantic_duplicates_removed",
            "embed_truncated",
            "eval_held_out",
            "rows_carried",
        )
    }
    result_stats["rows_quarantined"] = quarantine.height
    result_stats["train"] = queries.filter(pl.col("split") == "train").height
    result_stats["eval"] = queries.filter(pl.col("split") == "eval").height
    if result_stats["train"] == 0:
        raise EmptyCorpusError(_empty_message(result_stats, setaside))
    lap("tables")
    embeddings = None if vectors is None else QueryVectors([r["query_id"] for r in rows], vectors)
    return CorpusResult(queries=queries, quarantine=quarantine, stats=result_stats,
                        warnings=warnings, seconds=seconds, step_rows=step_rows,
                        embeddings=embeddings)
