"""Trajectory diversity: among one query's correct responses, keep the most mutually distant ones.

DED (DESIGN.md) keeps diverse reasoning paths rather than k near-copies of one: two responses
that differ in a word teach the same thing twice. Distances are normalized edit distance
(rapidfuzz's Levenshtein, 0 = identical, 1 = nothing in common) or embedding cosine distance
(the packaged all-MiniLM-L6-v2 by default). Selection is greedy farthest-first: start from the
response the provenance rule ranks best, then repeatedly add the candidate whose nearest kept
response is farthest away, so diversity complements best-of-N instead of replacing it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DIVERSITY_METRICS = ("none", "edit", "embedding")


def edit_distances(texts: Sequence[str]) -> np.ndarray:
    """Pairwise normalized Levenshtein distances, [n, n] in [0, 1]."""
    from rapidfuzz.distance import Levenshtein
    from rapidfuzz.process import cdist

    return cdist(texts, texts, scorer=Levenshtein.normalized_distance, dtype=np.float32)


def embedding_distances(vectors: np.ndarray) -> np.ndarray:
    """Pairwise cosine distances of unit vectors, [n, n] in [0, 2] (clipped at 0)."""
    return np.clip(1.0 - vectors @ vectors.T, 0.0, None)


def farthest_first(distances: np.ndarray, n: int, min_distance: float = 0.0) -> list[int]:
    """Indices of up to n items: item 0 first (the best ranked), then each time the item whose
    nearest chosen item is farthest (ties: the better ranked, i.e. lower index). Items closer
    than `min_distance` to a chosen one are never added, even if fewer than n are chosen."""
    count = distances.shape[0]
    if count == 0 or n <= 0:
        return []
    chosen = [0]
    nearest = distances[0].astype(np.float64).copy()
    nearest[0] = -np.inf
    while len(chosen) < min(n, count):
        best = int(np.argmax(nearest))  # argmax takes the first of equal values
        if nearest[best] == -np.inf or nearest[best] < min_distance:
            break
        chosen.append(best)
        nearest = np.minimum(nearest, distances[best])
        nearest[chosen] = -np.inf
    return chosen
