"""Read JSONL / Parquet / CSV query files and Hugging Face datasets folders into schema rows,
quarantining bad input row by row."""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from distill_dag.corpus.config import (
    DATASET_DICT_FILE,
    DATASET_FILES,
    FileSource,
    datasets_folder_kind,
)
from distill_dag.errors import DistillError

RAW_LIMIT = 500
# Split column values people use for held-out data; all map to our "eval".
SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "eval": "eval", "test": "eval", "validation": "eval", "valid": "eval", "dev": "eval",
}  # fmt: skip
_DIGIT_COMMA = re.compile(r"(?<=\d),(?=\d)")


class CorpusSourceError(DistillError, ValueError):
    """A corpus source that cannot be read as configured: a folder that is not a datasets
    folder, or a mapped column the dataset does not have (the message names both)."""


@dataclass
class LoadResult:
    """Rows that passed validation, quarantine records for those that did not."""

    rows: list[dict] = field(default_factory=list)
    quarantine: list[dict] = field(default_factory=list)
    rows_read: int = 0  # data records seen (blank lines and the CSV header excluded)


def quarantine_record(
    source_file: str | None, line: int | None, field_name: str | None, reason: str, raw: Any
) -> dict:
    """The one shape of a quarantine record, shared with curation."""
    text = raw if isinstance(raw, str) or raw is None else str(raw)
    return {
        "source_file": source_file,
        "line": line,
        "field": field_name,
        "reason": reason,
        "raw": None if text is None else text[:RAW_LIMIT],
    }


def _preview(value: Any, limit: int = 60) -> str:
    text = str(value).replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def parse_reference_answer(value: Any, answer_format: str) -> tuple[str | None, str | None]:
    """(answer, None) or (None, reason). gsm8k: the text after the last '####', commas dropped."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None, f"non-text answer: {_kind(value)} {_preview(value)}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return None, f"unparseable answer '{value}' (not a finite number)"
        # An integral float is a column-type artifact (e.g. a CSV read by pandas), not "42.0".
        text = str(int(value)) if value.is_integer() else repr(value)
    else:
        text = str(value)
    if answer_format == "gsm8k":
        if not isinstance(value, str) or "####" not in value:
            return None, f"unparseable answer '{_preview(text)}' (answer_format=gsm8k: no '####')"
        text = _DIGIT_COMMA.sub("", text.rsplit("####", 1)[1])
    answer = text.strip()
    if answer.endswith("."):
        answer = answer[:-1].rstrip()
    if not answer:
        why = "nothing after '####'" if answer_format == "gsm8k" else "empty"
        return None, f"unparseable answer '{_preview(text)}' (answer_format={answer_format}: {why})"
    return answer, None


class _RowChecker:
    """Validates one record against a FileSource's field mapping; appends a row or a record.

    `source_file`: where the rows come from when not the source's path (a DatasetDict's split
    folder). `default_split`: the split of rows the source gives none (neither a forced split
    nor a mapped split column): a DatasetDict's split name."""

    def __init__(self, source: FileSource, result: LoadResult, source_file: Path | None = None,
                 default_split: str | None = None) -> None:
        self.source = source
        self.result = result
        self.path = Path(source.path)
        self.file = source_file or self.path
        self.default_split = default_split
        self.seen_ids: dict[str, int | None] = {}

    def quarantine(self, line: int | None, field_name: str | None, reason: str, raw: Any) -> None:
        self.result.quarantine.append(
            quarantine_record(str(self.file), line, field_name, reason, raw)
        )

    def _optional_text(self, record: Mapping, key: str) -> tuple[str | None, str | None]:
        """(value, None) for an optional mapped field; blank and null count as absent."""
        col = self.source.fields[key]
        value = record.get(col) if col else None
        if value is None or (isinstance(value, str) and not value.strip()):
            return None, None
        if isinstance(value, int) and not isinstance(value, bool) and key == "id":
            return str(value), None
        if not isinstance(value, str):
            return None, f"non-text {key}: field '{col}' is {_kind(value)} ({_preview(value)})"
        return value.strip(), None

    def check(self, record: Mapping, line: int | None, raw: Any) -> None:
        fields = self.source.fields
        pcol, acol = fields["prompt"], fields["reference_answer"]
        prompt = record.get(pcol)
        if pcol not in record:
            return self.quarantine(line, pcol, f"missing field '{pcol}' (mapped to prompt)", raw)
        if prompt is None:
            return self.quarantine(line, pcol, f"null prompt in field '{pcol}'", raw)
        if not isinstance(prompt, str):
            reason = f"non-text prompt: field '{pcol}' is {_kind(prompt)} ({_preview(prompt)})"
            return self.quarantine(line, pcol, reason, raw)
        if not prompt.strip():
            return self.quarantine(line, pcol, "empty prompt", raw)

        if acol not in record or record[acol] is None:
            what = "missing field" if acol not in record else "null value in field"
            return self.quarantine(line, acol, f"{what} '{acol}' (mapped to reference_answer)", raw)
        answer, error = parse_reference_answer(record[acol], self.source.answer_format)
        if error:
            return self.quarantine(line, acol, error, raw)

        values: dict[str, str | None] = {}
        for key in ("id", "domain", "split"):
            values[key], error = self._optional_text(record, key)
            if error:
                return self.quarantine(line, fields[key], error, raw)
        split = self.source.split
        if split is None and values["split"] is not None:
            split = SPLIT_ALIASES.get(values["split"].lower())
            if split is None:
                reason = (
                    f"unknown split '{values['split']}' (expected one of {sorted(SPLIT_ALIASES)})"
                )
                return self.quarantine(line, fields["split"], reason, raw)
        if split is None and fields["split"] is None:
            split = self.default_split
        difficulty = self._difficulty(record)
        if isinstance(difficulty, str):
            return self.quarantine(line, fields["difficulty"], difficulty, raw)

        source_id = values["id"]
        if source_id is not None:
            # Only accepted rows register their id, so a bad first copy can't poison a good one.
            if source_id in self.seen_ids:
                first = self.seen_ids[source_id]
                reason = f"duplicate id '{source_id}' (first seen at line {first})"
                return self.quarantine(line, fields["id"], reason, raw)
            self.seen_ids[source_id] = line

        row: dict[str, Any] = {
            "prompt": prompt,
            "reference_answer": answer,
            "domain": values["domain"] or self.source.domain,
            "source": self.path.name,
            "source_file": str(self.file),
            "source_line": line,
        }
        if source_id is not None:
            row["source_id"] = source_id
        if split is not None:
            row["split"] = split
        if difficulty is not None:
            row["difficulty"] = difficulty
        self.result.rows.append(row)

    def _difficulty(self, record: Mapping) -> int | str | None:
        """An int, None when absent, or a reason string when present but not an integer."""
        col = self.source.fields["difficulty"]
        value = record.get(col) if col else None
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
            return int(value)
        return f"difficulty '{_preview(value)}' in field '{col}' is not an integer"


def _encoding_label(encoding: str) -> str:
    name = codecs.lookup(encoding).name
    return "UTF-8" if name == "utf-8" else name


def _byte_lines(path: Path, encoding: str) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, bytes without line ending), BOM stripped from line 1."""
    data = path.read_bytes()
    if codecs.lookup(encoding).name == "utf-8" and data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    yield from enumerate(data.splitlines(), 1)


def _load_jsonl(source: FileSource, checker: _RowChecker, result: LoadResult) -> None:
    label = _encoding_label(source.encoding)
    for lineno, bline in _byte_lines(checker.path, source.encoding):
        if not bline.strip():
            continue
        result.rows_read += 1
        try:
            text = bline.decode(source.encoding)
        except UnicodeDecodeError as e:
            raw = bline.decode(source.encoding, "backslashreplace")
            checker.quarantine(lineno, None, f"invalid {label} bytes at byte offset {e.start}", raw)
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            checker.quarantine(lineno, None, f"malformed JSON: {e.msg} at column {e.colno}", text)
            continue
        if not isinstance(record, dict):
            reason = f"expected a JSON object, got {_kind(record)}"
            checker.quarantine(lineno, None, reason, text)
            continue
        checker.check(record, lineno, text)


class _LineFeed:
    """Feeds decoded lines to csv.reader while remembering where each record started."""

    def __init__(self, lines: list[tuple[int, str]]) -> None:
        self.lines = lines
        self.first: int | None = None
        self.texts: list[str] = []

    def mark(self) -> None:
        self.first, self.texts = None, []

    def __iter__(self) -> Iterator[str]:
        for lineno, text in self.lines:
            if self.first is None:
                self.first = lineno
            self.texts.append(text)
            yield text + "\n"


def _load_csv(source: FileSource, checker: _RowChecker, result: LoadResult) -> None:
    label = _encoding_label(source.encoding)
    good: list[tuple[int, str]] = []
    for lineno, bline in _byte_lines(checker.path, source.encoding):
        try:
            good.append((lineno, bline.decode(source.encoding)))
        except UnicodeDecodeError as e:
            raw = bline.decode(source.encoding, "backslashreplace")
            reason = f"invalid {label} bytes at byte offset {e.start}"
            if lineno == 1:
                # Without a header no column can be mapped; one record for the whole file.
                checker.quarantine(lineno, None, f"unreadable CSV header: {reason}", raw)
                return
            result.rows_read += 1
            checker.quarantine(lineno, None, reason, raw)
    feed = _LineFeed(good)
    reader = csv.reader(feed)
    try:
        header = [h.strip() for h in next(reader)]
    except (StopIteration, csv.Error):
        return
    while True:
        feed.mark()
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            result.rows_read += 1
            checker.quarantine(feed.first, None, f"malformed CSV: {e}", "".join(feed.texts))
            continue
        if not any(c.strip() for c in cells):
            continue
        result.rows_read += 1
        raw = "\n".join(feed.texts)
        if len(cells) != len(header):
            reason = f"expected {len(header)} columns (as in the header), got {len(cells)}"
            checker.quarantine(feed.first, None, reason, raw)
            continue
        checker.check(dict(zip(header, cells, strict=True)), feed.first, raw)


def _load_parquet(source: FileSource, checker: _RowChecker, result: LoadResult) -> None:
    try:
        frame = pl.read_parquet(checker.path)
    except (OSError, pl.exceptions.PolarsError) as e:
        checker.quarantine(None, None, f"unreadable Parquet file: {_preview(e, 300)}", None)
        return
    for index, record in enumerate(frame.iter_rows(named=True)):
        result.rows_read += 1
        raw = json.dumps(record, ensure_ascii=False, default=str)
        checker.check(record, index + 1, raw)


_LOADERS = {"jsonl": _load_jsonl, "csv": _load_csv, "parquet": _load_parquet}
_READ_BATCH = 1000


def _missing_columns(source: FileSource, where: Path, columns: list[str]) -> None:
    """A datasets folder has a schema: a mapped column it lacks is a mapping mistake, an error
    naming the folder, the column and the field, not one quarantined row per row."""
    for key, column in source.fields.items():
        if column is not None and column not in columns:
            raise CorpusSourceError(
                f"corpus datasets folder {where}: no column '{column}' (mapped to {key} by "
                f"fields); its columns: {', '.join(columns)}")


def _load_datasets(source: FileSource) -> LoadResult:
    """Every row of a saved Dataset, or of each split of a saved DatasetDict (in its order).

    A DatasetDict's rows come from `<folder>/<split>` (their source_file; line: the 1-based
    row in that split), and a split named train/test/validation/eval/... (SPLIT_ALIASES) puts
    its rows in our train or eval split when the source has no `split` setting or column."""
    folder = Path(source.path)
    if not folder.exists():
        raise FileNotFoundError(f"corpus datasets folder not found: {folder}")
    kind = datasets_folder_kind(folder)
    if kind is None:
        what = ("is a file" if not folder.is_dir() else f"has neither {DATASET_DICT_FILE} (a "
                f"DatasetDict) nor {' and '.join(DATASET_FILES)} (a Dataset)")
        raise CorpusSourceError(f"corpus datasets folder {folder} is not a Hugging Face "
                                f"datasets folder (what save_to_disk writes): it {what}")
    import datasets

    result = LoadResult()
    try:
        loaded = datasets.load_from_disk(str(folder))
    except (OSError, ValueError, KeyError, TypeError) as e:
        reason = f"unreadable datasets folder: {_preview(e, 300)}"
        _RowChecker(source, result).quarantine(None, None, reason, None)
        return result
    if isinstance(loaded, datasets.DatasetDict):
        parts = [(folder / name, SPLIT_ALIASES.get(name.lower()), data)
                 for name, data in loaded.items()]
    else:
        parts = [(folder, None, loaded)]
    for where, _, data in parts:
        _missing_columns(source, where, list(data.column_names))
    for where, split, data in parts:
        # Ids must be unique within a split; splits often number their rows from 0 each.
        checker = _RowChecker(source, result, where, split)
        line = 0
        for batch in data.with_format("arrow").iter(batch_size=_READ_BATCH):
            for record in batch.to_pylist():
                line += 1
                result.rows_read += 1
                raw = json.dumps(record, ensure_ascii=False, default=str)
                checker.check(record, line, raw)
    return result


def load_file(source: FileSource) -> LoadResult:
    """Load one file or datasets folder. Raises FileNotFoundError if it is absent, and
    CorpusSourceError for a folder that is not a datasets folder or lacks a mapped column; bad
    rows never raise."""
    if source.resolved_format == "datasets":
        return _load_datasets(source)
    path = Path(source.path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "not found"
        raise FileNotFoundError(f"corpus file {what}: {path}")
    result = LoadResult()
    _LOADERS[source.resolved_format](source, _RowChecker(source, result), result)
    return result


# (path, size, mtime_ns) -> sha256: sensors fingerprint the sources every tick; rehash only
# what changed on disk.
_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes, or "missing" when it is not there."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        return "missing"
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def folder_digest(path: str | Path) -> str:
    """sha256 of a datasets folder's content: the relative path and digest of each of its
    .arrow and .json files (the cache-*.arrow files `map` leaves beside the data excluded);
    a path that is not a folder: file_digest ("missing" when absent)."""
    path = Path(path)
    if not path.is_dir():
        return file_digest(path)
    parts = sorted((p.relative_to(path).as_posix(), file_digest(p)) for p in path.rglob("*")
                   if p.suffix in (".arrow", ".json") and not p.name.startswith("cache-")
                   and p.is_file())
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def source_digest(source: FileSource) -> str:
    """The content digest of a source: a file's bytes, or a datasets folder's files."""
    if source.resolved_format == "datasets":
        return folder_digest(source.path)
    return file_digest(source.path)


def source_present(source: FileSource) -> bool:
    """Whether a source is there to read: a file, or a folder for a datasets source."""
    path = Path(source.path)
    return path.is_dir() if source.resolved_format == "datasets" else path.is_file()


def sources_fingerprint(sources: list[FileSource]) -> list[tuple[str, str]]:
    """(file name, content digest or "missing") of each source, in order. Names, not paths:
    moving the project folder changes no content."""
    return [(Path(s.path).name, source_digest(s)) for s in sources]
