"""Near-duplicate queries: MinHash signatures of word shingles, candidates found through LSH.

Exact dedup (steps.ExactDedup) catches copies; this catches rewordings and light edits ("Tom has
5 apples." vs "Tom has five apples, ..."): two queries are near-duplicates when the Jaccard
similarity of their word n-gram sets, estimated from `num_perm` MinHash values, reaches the
threshold. datasketch's LSH index proposes candidates in time linear in the corpus (never an
all-pairs comparison); each candidate is then checked against the threshold on its signature.

Queries are kept in the order given (first copy wins), and only queries in the same `group`
can be duplicates of each other: for math, two problems that differ in one number have
different answers and are different problems, however similar their words.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from distill_dag.corpus.text import ngrams, word_tokens


@dataclass(frozen=True)
class NearDuplicate:
    index: int  # the query set aside
    of: int  # the earlier query it duplicates (kept)
    similarity: float  # estimated Jaccard similarity of their shingle sets


def shingles(text: str, n: int) -> list[bytes]:
    """The word n-grams of a text as bytes (a text shorter than n words is one shingle)."""
    return [" ".join(gram).encode("utf-8") for gram in ngrams(word_tokens(text), n)]


def find_near_duplicates(
    texts: Sequence[str],
    groups: Sequence[str],
    *,
    threshold: float = 0.8,
    num_perm: int = 128,
    shingle_words: int = 3,
    protected: Sequence[bool] | None = None,
    seed: int = 1,
) -> list[NearDuplicate]:
    """Each text that nearly duplicates an earlier text of its group, with the one it matches.

    `protected` texts are never set aside (e.g. eval queries: training queries that nearly
    duplicate them are removed instead); they still serve as matches for later texts."""
    import numpy as np
    from datasketch import MinHash, MinHashLSH

    # Bands tuned for recall (false negatives weigh 0.95): a pair at the threshold is proposed
    # with probability ~0.95 instead of ~0.4 with the default weights; the extra candidates
    # cost one signature comparison each.
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(0.05, 0.95))
    # The random permutations are drawn once (drawing them per text was 40% of the time).
    template = MinHash(num_perm=num_perm, seed=seed)
    # Signatures of the kept texts, one row each: 32-bit values (the affine32 scheme's range),
    # a quarter of the memory of one MinHash object per text.
    signatures = np.zeros((len(texts), num_perm), dtype=np.uint32)
    found: list[NearDuplicate] = []
    for i, text in enumerate(texts):
        grams = shingles(text, shingle_words)
        if not grams:
            continue
        minhash = MinHash(num_perm=num_perm, seed=seed, permutations=template.permutations,
                          scheme=template.scheme)
        minhash.update_batch(grams)
        signature = minhash.hashvalues.astype(np.uint32)
        best, best_sim = None, threshold
        for j in lsh.query(minhash):
            if groups[j] != groups[i]:
                continue
            sim = float(np.count_nonzero(signatures[j] == signature)) / num_perm
            if sim >= best_sim and (best is None or sim > best_sim or j < best):
                best, best_sim = j, sim
        if best is not None and not (protected is not None and protected[i]):
            found.append(NearDuplicate(i, best, best_sim))
            continue
        signatures[i] = signature
        lsh.insert(i, minhash, check_duplication=False)
    return found
