"""Verdict probabilities from teacher-forced logits, over a prefix tree of the allowed verdict words.

Each allowed word (normal word, canonical labels; normal/abnormal for the image line) is a token
sequence. At every branching point of the tree the model's probabilities are renormalised over the
branches, so P(word) sums to 1 over the allowed words even when words span several tokens or share
their first tokens. Every branching point on the teacher-forced (normal) path is read from the single
forward pass; a branching point off that path (labels that share a prefix the normal word does not) needs
the logits after that prefix, which `extra_queries` lists for one more batched pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Query:
    """Logits needed at `position` (predicting the next token) over `children` token ids.

    `prefix` is empty for positions inside the teacher-forced sequence; otherwise the tokens appended to
    the sequence cut at the slot start (an extra pass).
    """

    position: int
    prefix: tuple[int, ...]
    children: tuple[int, ...]


@dataclass
class SlotPlan:
    """What to read for one verdict slot and how to combine it into word probabilities."""

    start: int
    path: tuple[int, ...]
    alternatives: dict[str, tuple[int, ...]]
    queries: list[Query] = field(default_factory=list)


def plan_slot(start: int, path: Sequence[int], alternatives: Mapping[str, Sequence[int]]) -> SlotPlan:
    """List every branching point of the tree of `alternatives` (word -> token ids) that matters."""
    path = tuple(path)
    alts = {w: tuple(t) for w, t in alternatives.items()}
    seqs = list(alts.values())
    if len(set(seqs)) != len(seqs):
        dup = [w for w, s in alts.items() if seqs.count(s) > 1]
        raise ValueError(f"verdict words {dup} have identical token sequences and cannot be told apart")
    if path not in seqs:
        raise ValueError(f"the teacher-forced verdict tokens {path} are not one of the allowed words")
    plan = SlotPlan(start, path, alts)
    prefixes: set[tuple[int, ...]] = set()
    for seq in seqs:
        for d in range(len(seq)):
            prefixes.add(seq[:d])
    for prefix in sorted(prefixes, key=lambda p: (len(p), p)):
        children = tuple(
            sorted({s[len(prefix)] for s in seqs if len(s) > len(prefix) and s[: len(prefix)] == prefix})
        )
        if len(children) < 2:
            continue  # a single branch has conditional probability 1 after renormalisation
        d = len(prefix)
        if path[:d] == prefix:
            plan.queries.append(Query(start + d - 1, (), children))
        else:
            plan.queries.append(Query(start - 1 + d, prefix, children))
    return plan


def word_probabilities(plan: SlotPlan, logits: Mapping[tuple[int, tuple[int, ...]], Sequence[float]]) -> dict:
    """P(word) for every allowed word, given the logits (restricted to children) of every query.

    `logits[(position, prefix)]` holds one logit per child of that query, in `children` order.
    """
    cond: dict[tuple[int, ...], dict[int, float]] = {}
    for q in plan.queries:
        values = list(logits[(q.position, q.prefix)])
        m = max(values)
        exps = [math.exp(v - m) for v in values]
        z = sum(exps)
        prefix = plan.path[: q.position - plan.start + 1] if not q.prefix else q.prefix
        cond[prefix] = {c: e / z for c, e in zip(q.children, exps, strict=True)}
    out = {}
    for word, seq in plan.alternatives.items():
        p = 1.0
        for d in range(len(seq)):
            node = cond.get(seq[:d])
            if node is not None:
                p *= node[seq[d]]
        out[word] = p
    return out
