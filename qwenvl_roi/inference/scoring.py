"""Verdict probabilities as a greedy constrained decoder sees them, line by line.

Line k's allowed words (image line: normal / abnormal word; region line: normal word / canonical labels)
form a prefix tree of token paths (encode.py). A word's probability is the product, along its path, of the
next-token probabilities renormalised over the branches at every token where allowed words branch. The
earlier lines are the words the model itself writes: at each branch, the child with the highest logit
(ties: the lowest token id, as argmax does), i.e. what greedy decoding writes when it stays in format.

`score_sample` runs this as a generator that asks for model passes (`backend.Request`: a token sequence and,
at some positions, the values of the candidate token ids) and receives them, so that a scoring backend
(backend.py; "hf": backends/hf.py) can batch the requests of many samples. It is exact and cheap: one
teacher-forced pass with every line "normal" serves every line up to the first one whose greedy word is not
"normal"; from there one continuation re-uses the cached prefix (image included) and runs only the answer
tokens.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from qwenvl_roi.errors import EncodingError
from qwenvl_roi.inference.backend import Request, Values
from qwenvl_roi.inference.encode import Answer, PromptEncoder

Prefix = tuple[int, ...]


class WordTree:
    """The allowed words of one kind of line as a prefix tree of token paths."""

    def __init__(self, paths: Mapping[str, Sequence[int]]) -> None:
        self.paths: dict[str, Prefix] = {w: tuple(p) for w, p in paths.items()}
        seqs = list(self.paths.values())
        for word, seq in self.paths.items():
            clash = [w for w, s in self.paths.items() if w != word and s[: len(seq)] == seq]
            if clash:
                raise EncodingError(
                    f"verdict words {word!r} and {clash[0]!r} tokenise so that one is a prefix of the other "
                    "and cannot be told apart"
                )
        self.branches: dict[Prefix, tuple[int, ...]] = {}
        for seq in seqs:
            for d in range(len(seq)):
                node = seq[:d]
                kids = tuple(sorted({s[d] for s in seqs if len(s) > d and s[:d] == node}))
                if len(kids) > 1:
                    self.branches[node] = kids

    def tokens(self) -> set[int]:
        """Every token id on some path."""
        return {t for p in self.paths.values() for t in p}

    def _conditional(self, logits: Mapping[Prefix, Sequence[float]]) -> dict[Prefix, list[float]]:
        out = {}
        for node, kids in self.branches.items():
            values = list(logits[node])
            m = max(values)
            exps = [math.exp(v - m) for v in values]
            z = sum(exps)
            out[node] = [e / z for e in exps]
            assert len(values) == len(kids)
        return out

    def probabilities(self, logits: Mapping[Prefix, Sequence[float]]) -> dict[str, float]:
        """P(word) for every word; `logits[node]` holds one logit per child of that branch node."""
        cond = self._conditional(logits)
        out = {}
        for word, seq in self.paths.items():
            p = 1.0
            for d in range(len(seq)):
                kids = self.branches.get(seq[:d])
                if kids is not None:
                    p *= cond[seq[:d]][kids.index(seq[d])]
            out[word] = p
        return out

    def greedy(self, logits: Mapping[Prefix, Sequence[float]]) -> str:
        """The word greedy decoding writes: at every branch the child with the highest logit."""
        node: Prefix = ()
        words = {seq: w for w, seq in self.paths.items()}
        while node not in words:
            kids = self.branches.get(node)
            if kids is None:  # one way on
                node = next(s[: len(node) + 1] for s in self.paths.values() if s[: len(node)] == node)
                continue
            values = list(logits[node])
            node = (*node, kids[values.index(max(values))])
        return words[node]


@dataclass
class LineScore:
    """What scoring found for one answer line."""

    probs: dict[str, float]
    greedy: str


@dataclass
class SampleScore:
    """All lines of one sample, image line first; `passes` counts the model passes it needed."""

    lines: list[LineScore] = field(default_factory=list)
    passes: int = 0


class LineTrees:
    """The word trees of every kind of line (image or region line, last line or not), built once."""

    def __init__(self, encoder: PromptEncoder) -> None:
        self.encoder = encoder
        self._trees: dict[tuple[bool, bool], WordTree] = {}

    def for_sample(self, n_lines: int) -> list[WordTree]:
        """Trees of lines 0..n_lines-1 (line 0 is the image line)."""
        trees = []
        for k in range(n_lines):
            key = (k == 0, k == n_lines - 1)
            if key not in self._trees:
                self._trees[key] = WordTree(self.encoder.word_paths(k, last=k == n_lines - 1))
            trees.append(self._trees[key])
        return trees

    def tokens(self) -> list[int]:
        """Sorted ids of every token on any allowed path (the logit columns scoring reads)."""
        kinds = [(True, False), (False, False), (False, True)]
        for image, last in kinds:
            if (image, last) not in self._trees:
                self._trees[(image, last)] = WordTree(self.encoder.word_paths(0 if image else 1, last))
        return sorted({t for tree in self._trees.values() for t in tree.tokens()})


def _on_path_positions(
    answer: Answer, trees: Sequence[WordTree], prompt_len: int, first: int
) -> tuple[tuple[int, tuple[int, ...]], ...]:
    """(position in the full sequence, the branch's children) of the on-path branches of lines >= first."""
    want = []
    for k in range(first, len(trees)):
        start, path = prompt_len + answer.starts[k], answer.paths[k]
        for node, kids in trees[k].branches.items():
            if path[: len(node)] == node:
                want.append((start - 1 + len(node), kids))
    return tuple(want)


def score_sample(
    trees_of: LineTrees, sample: Mapping[str, Any], prompt_ids: Sequence[int]
) -> Generator[list[Request], list[Values], SampleScore]:
    """Score every line of `sample`; yields lists of Requests, receives one {position: {token id: value}}
    per request (a backend's `score`), returns the SampleScore."""
    encoder = trees_of.encoder
    meta = encoder.meta
    normal = meta.normal_word
    n_regions = len(sample["regions"])
    trees = trees_of.for_sample(n_regions + 1)
    image_abnormal, verdicts = False, [normal] * n_regions
    answer = encoder.answer(sample, image_abnormal, verdicts)
    prompt = tuple(prompt_ids)
    p0 = len(prompt)
    result = SampleScore()
    want = _on_path_positions(answer, trees, p0, 0)
    (rows,) = yield [Request((*prompt, *answer.ids), want, cut=0, commit=True)]
    result.passes += 1
    current = dict(rows)
    for k, tree in enumerate(trees):
        start, path = p0 + answer.starts[k], answer.paths[k]
        if path != tree.paths[normal]:
            raise EncodingError(
                f"sample {sample.get('sample_id')}: line {k} tokenises as {path} in context but "
                f"{tree.paths[normal]} alone"
            )
        logits: dict[Prefix, list[float]] = {}
        missing = []
        for node, kids in tree.branches.items():
            if path[: len(node)] == node:
                row = current[start - 1 + len(node)]
                logits[node] = [row[c] for c in kids]
            else:
                missing.append(node)
        if missing:
            before = (*prompt, *answer.ids[: answer.starts[k]])  # the committed sequence up to this line
            got = yield [
                Request((*before, *node), ((start - 1 + len(node), tree.branches[node]),), cut=start)
                for node in missing
            ]
            result.passes += len(missing)
            for node, rows in zip(missing, got, strict=True):
                row = rows[start - 1 + len(node)]
                logits[node] = [row[c] for c in tree.branches[node]]
        line = LineScore(tree.probabilities(logits), tree.greedy(logits))
        result.lines.append(line)
        if line.greedy == normal or k == len(trees) - 1:
            continue  # the pass so far stays exact for the lines after this one (if any)
        if k == 0:
            image_abnormal = True
        else:
            verdicts[k - 1] = line.greedy
        new = encoder.answer(sample, image_abnormal, verdicts)
        cut = answer.starts[k]
        if new.ids[:cut] != answer.ids[:cut] or new.paths[k] != tree.paths[line.greedy]:
            raise EncodingError(
                f"sample {sample.get('sample_id')}: writing {line.greedy!r} on line {k} changes how the "
                "answer before it tokenises"
            )
        answer = new
        want = _on_path_positions(answer, trees, p0, k + 1)
        (rows,) = yield [Request((*prompt, *answer.ids), want, cut=start, commit=True)]
        result.passes += 1
        current.update(rows)
    return result


def prediction_record(
    sample: Mapping[str, Any], score: SampleScore, meta: Any, threshold: float
) -> dict[str, Any]:
    """The predictions-file row of one sample (an interface: its contract is qwenvl_roi/schemas/predictions.py
    ``RegionsPrediction``, documented in docs/schemas/ and docs/evaluation.md)."""
    normal = meta.normal_word
    regions = []
    for region, line in zip(sample["regions"], score.lines[1:], strict=True):
        p = line.probs
        value = min(1.0, max(0.0, 1.0 - p[normal]))
        label = max(meta.labels, key=lambda lab, p=p: (p[lab], -meta.labels.index(lab)))
        regions.append(
            {
                "id": region["id"],
                "score": value,
                "label": label,
                "abnormal": value >= threshold,
                "greedy": line.greedy,
            }
        )
    out: dict[str, Any] = {"image": sample["image"], "regions": regions}
    if "sample_id" in sample:
        out = {"sample_id": sample["sample_id"], **out}
    out["image_line_score"] = score.lines[0].probs[meta.abnormal_word]
    out["image_verdict"] = score.lines[0].greedy
    return out
