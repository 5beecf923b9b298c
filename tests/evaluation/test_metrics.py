"""Metrics against hand-computed cases and scikit-learn; threshold sweep; edge cases; the eval command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, precision_recall_curve, roc_auc_score

from qwenvl_roi.cli import main
from qwenvl_roi.errors import InputError, MetricsError
from qwenvl_roi.evaluation.cli import evaluate
from qwenvl_roi.evaluation.metrics import compute_metrics, sweep_threshold
from qwenvl_roi.evaluation.records import JoinedRegion, join
from qwenvl_roi.inference.config import CONFIG_FILE_NAME, load_inference_config


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _gold(sample_id: str, image: str, regions: list[tuple[str, bool, str | None]]) -> dict:
    return {
        "sample_id": sample_id,
        "image": image,
        "width": 64,
        "height": 64,
        "split": "test",
        "group": "g",
        "source": "abnormal" if any(p for _, p, _ in regions) else "normal",
        "regions": [{"id": i, "box": [0, 0, 8, 8], "label": lab, "positive": p} for i, p, lab in regions],
        "positive_region_ids": [i for i, p, _ in regions if p],
    }


def _pred(sample_id: str, image: str, regions: list[tuple[str, float | None, str | None]]) -> dict:
    """A row as `predict --regions` writes it: scoring mode, or generate mode when a score is None
    (an unparsed line), so eval reads it through the published contract."""
    if any(s is None for _, s, _ in regions):
        return {
            "sample_id": sample_id,
            "image": image,
            "regions": [
                {"id": i, "score": s, "label": lab, "abnormal": None if s is None else s >= 0.5}
                for i, s, lab in regions
            ],
            "image_verdict": None,
            "text": "",
            "unparsed": [],
            "missing": [i for i, s, _ in regions if s is None],
            "extra": [],
        }
    return {
        "sample_id": sample_id,
        "image": image,
        "regions": [
            {"id": i, "score": s, "label": lab or "crack", "abnormal": s >= 0.5, "greedy": "正常"}
            for i, s, lab in regions
        ],
        "image_line_score": max(s for _, s, _ in regions),
        "image_verdict": "正常",
    }


@pytest.fixture
def hand_case(tmp_path: Path) -> tuple[Path, Path]:
    gold = _write_jsonl(
        tmp_path / "regions_test.jsonl",
        [
            _gold("A#0", "/img/A.png", [("R1", True, "crack"), ("R2", False, None)]),
            _gold("B#0", "/img/B.png", [("R1", False, None), ("R2", False, None)]),
            _gold("A#1", "/img/A.png", [("R1", True, "spot")]),
        ],
    )
    pred = _write_jsonl(
        tmp_path / "pred.jsonl",
        [
            _pred("B#0", "/img/B.png", [("R1", 0.6, "spot"), ("R2", 0.1, "crack")]),
            _pred("A#0", "/img/A.png", [("R1", 0.9, "crack"), ("R2", 0.4, "crack")]),
            _pred("A#1", "/img/A.png", [("R1", 0.3, "spot")]),
        ],
    )
    return pred, gold


def test_hand_computed(hand_case: tuple[Path, Path]) -> None:
    pred, gold = hand_case
    m = compute_metrics(join(pred, gold), 0.5, labels=["crack", "spot", "stain"])
    assert (m["roi"]["tp"], m["roi"]["fp"], m["roi"]["fn"], m["roi"]["tn"]) == (1, 1, 1, 2)
    assert m["roi"]["precision"] == 0.5 and m["roi"]["recall"] == 0.5 and m["roi"]["f1"] == 0.5
    assert (m["roi_labeled"]["tp"], m["roi_labeled"]["fp"], m["roi_labeled"]["fn"]) == (1, 1, 1)
    assert m["per_label"]["crack"] == {
        "precision": 1.0,
        "recall": 1.0,
        "f1": 1.0,
        "tp": 1,
        "fp": 0,
        "fn": 0,
        "support": 1,
    }
    assert (
        m["per_label"]["spot"]["tp"] == 0
        and m["per_label"]["spot"]["fp"] == 1
        and m["per_label"]["spot"]["fn"] == 1
    )
    assert m["per_label"]["stain"]["support"] == 0
    # image A: max(0.9, 0.4, 0.3) = 0.9, abnormal; image B: 0.6, normal -> both flagged at 0.5
    img = m["image"]
    assert (img["tp"], img["fp"], img["fn"], img["tn"]) == (1, 1, 0, 0)
    assert img["precision"] == 0.5 and img["recall"] == 1.0 and img["f1"] == pytest.approx(2 / 3)
    assert img["auroc"] == 1.0
    assert m["counts"] == {
        "samples": 3,
        "regions": 5,
        "positive_regions": 2,
        "images": 2,
        "abnormal_images": 1,
        "unparsed_regions": 0,
    }


def test_labeled_wrong_label_is_fp_and_fn(tmp_path: Path) -> None:
    gold = _write_jsonl(tmp_path / "g.jsonl", [_gold("A#0", "/A", [("R1", True, "crack")])])
    pred = _write_jsonl(tmp_path / "p.jsonl", [_pred("A#0", "/A", [("R1", 0.8, "spot")])])
    m = compute_metrics(join(pred, gold), 0.5)
    assert m["roi"]["tp"] == 1
    assert (m["roi_labeled"]["tp"], m["roi_labeled"]["fp"], m["roi_labeled"]["fn"]) == (0, 1, 1)
    assert m["roi_labeled"]["f1"] == 0.0


def _random_regions(rng: np.random.Generator, n: int, n_images: int) -> list[JoinedRegion]:
    labels = ["crack", "spot"]
    out = []
    for i in range(n):
        pos = bool(rng.random() < 0.35)
        out.append(
            JoinedRegion(
                sample_id=f"s{i // 3}",
                image=f"/img/{rng.integers(n_images)}.png",
                region_id=f"R{i % 3 + 1}",
                positive=pos,
                gold_label=labels[rng.integers(2)] if pos else None,
                score=float(np.round(rng.random(), 2)),  # rounding makes ties
                pred_label=labels[rng.integers(2)],
            )
        )
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    regions = _random_regions(rng, 200, 25)
    t = 0.5
    m = compute_metrics(regions, t)
    y = np.array([r.positive for r in regions])
    s = np.array([r.score for r in regions])
    assert m["roi"]["auroc"] == pytest.approx(roc_auc_score(y, s))
    assert m["roi"]["average_precision"] == pytest.approx(average_precision_score(y, s))
    assert m["roi"]["f1"] == pytest.approx(f1_score(y, s >= t))
    images = sorted({r.image for r in regions})
    yi = [any(r.positive for r in regions if r.image == im) for im in images]
    si = [max(r.score for r in regions if r.image == im) for im in images]
    assert m["image"]["auroc"] == pytest.approx(roc_auc_score(yi, si))
    assert m["image"]["f1"] == pytest.approx(f1_score(yi, np.array(si) >= t))
    # localisation: regions of images that have a positive region only
    inside = [r for r in regions if any(q.positive for q in regions if q.image == r.image)]
    yw, sw = [r.positive for r in inside], [r.score for r in inside]
    assert m["roi_within_abnormal"]["auroc"] == pytest.approx(roc_auc_score(yw, sw))
    assert m["roi_within_abnormal"]["average_precision"] == pytest.approx(average_precision_score(yw, sw))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_sweep_is_f1_best(seed: int) -> None:
    rng = np.random.default_rng(seed)
    regions = _random_regions(rng, 150, 20)
    t, info = sweep_threshold(regions)
    y = np.array([r.positive for r in regions])
    s = np.array([r.score for r in regions])
    brute = {float(c): f1_score(y, s >= c) for c in np.unique(s)}
    best = max(brute.values())
    assert info["f1"] == pytest.approx(best)
    assert t == max(c for c, f in brute.items() if f == pytest.approx(best))
    precision, recall, _ = precision_recall_curve(y, s)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0)
    assert info["f1"] == pytest.approx(f1.max())


def test_sweep_ties_are_exact_and_the_highest_threshold_wins() -> None:
    """Equal F1s must tie exactly, so that the documented rule (the highest threshold) decides, not the
    rounding: with 2PR / (P + R), F1 = 1/3 at 0.6 (tp 1, fp 3) came out one ulp below 1/3 at 0.05 (tp 2,
    fp 8), and 0.05 won with 8 false alarms instead of 3 (before). The reference is exact fractions."""
    from fractions import Fraction

    def regions(scores: list[float], positive: list[bool]) -> list[JoinedRegion]:
        return [
            JoinedRegion(f"s{i}", f"/img/{i}.png", "R1", p, "crack" if p else None, sc, "crack")
            for i, (sc, p) in enumerate(zip(scores, positive, strict=True))
        ]

    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05]
    t, info = sweep_threshold(regions(scores, [s in (0.6, 0.05) for s in scores]))
    assert (t, info["precision"], info["recall"]) == (0.6, 0.25, 0.5)
    assert info["f1"] == 1 / 3
    rng = np.random.default_rng(7)
    for _ in range(300):  # small sets with many ties, brute force in exact fractions
        n = int(rng.integers(2, 30))
        y = rng.random(n) < rng.uniform(0.1, 0.6)
        y[rng.integers(n)] = True
        s = np.round(rng.random(n), 1)
        exact = {}
        for c in np.unique(s):
            tp, fp = int((y & (s >= c)).sum()), int((~y & (s >= c)).sum())
            exact[float(c)] = Fraction(2 * tp, 2 * tp + fp + int(y.sum()) - tp)
        best = max(exact.values())
        t, info = sweep_threshold(regions(s.tolist(), y.tolist()))
        assert t == max(c for c, f in exact.items() if f == best)
        assert info["f1"] == float(best) == f1_score(y, s >= t)


def test_a_gold_sample_without_regions_is_said_not_dropped_silently(tmp_path: Path) -> None:
    """The regions contract allows a sample without regions (convert never writes one): its image has no
    region to score, so it is in no metric; eval says so, naming the file, line and sample (before: the
    image count was one short and nothing said why)."""
    gold = _write_jsonl(
        tmp_path / "g.jsonl",
        [
            _gold("A#0", "/A", [("R1", True, "crack"), ("R2", False, None)]),
            _gold("B#0", "/B", []),
            _gold("C#0", "/C", [("R1", False, None)]),
        ],
    )
    pred = _write_jsonl(
        tmp_path / "p.jsonl",
        [
            _pred("A#0", "/A", [("R1", 0.9, "crack"), ("R2", 0.2, "crack")]),
            {**_pred("B#0", "/B", [("R1", 0.99, "crack")]), "regions": []},
            _pred("C#0", "/C", [("R1", 0.4, "crack")]),
        ],
    )
    m = evaluate(str(pred), str(gold), str(tmp_path / "out"), threshold=0.5)
    assert m["counts"]["images"] == 2
    (said,) = [w for w in m["warnings"] if "no regions" in w]
    assert f"{gold}:2 (B#0)" in said and said.startswith("1 gold sample(s)")
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert said in saved["warnings"]


def test_single_class_and_no_positive(tmp_path: Path) -> None:
    gold = _write_jsonl(
        tmp_path / "g.jsonl", [_gold("B#0", "/B", [("R1", False, None), ("R2", False, None)])]
    )
    pred = _write_jsonl(
        tmp_path / "p.jsonl", [_pred("B#0", "/B", [("R1", 0.7, "crack"), ("R2", 0.2, "crack")])]
    )
    m = compute_metrics(join(pred, gold), 0.5)
    assert m["roi"]["auroc"] is None and m["image"]["auroc"] is None
    assert m["roi"]["recall"] == 0.0
    assert any("no positives" in w for w in m["warnings"])
    with pytest.raises(MetricsError, match="no positive regions"):
        sweep_threshold(join(pred, gold))
    out = evaluate(str(pred), str(gold), str(tmp_path / "out"), threshold=0.5)
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["image"]["auroc"] is None
    assert "only one class" in (tmp_path / "out" / "report.md").read_text()
    assert out["roi"]["fp"] == 1


def test_unparsed_regions_count_as_normal(tmp_path: Path) -> None:
    gold = _write_jsonl(
        tmp_path / "g.jsonl", [_gold("A#0", "/A", [("R1", True, "crack"), ("R2", False, None)])]
    )
    pred = _write_jsonl(
        tmp_path / "p.jsonl", [_pred("A#0", "/A", [("R1", None, None), ("R2", 1.0, "crack")])]
    )
    m = compute_metrics(join(pred, gold), 0.5)
    assert m["counts"]["unparsed_regions"] == 1
    assert (m["roi"]["tp"], m["roi"]["fp"], m["roi"]["fn"]) == (0, 1, 1)


def test_bad_inputs_name_file_and_line(tmp_path: Path, hand_case: tuple[Path, Path]) -> None:
    pred, gold = hand_case
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(InputError, match="empty"):
        join(empty, gold)
    with pytest.raises(InputError, match="empty"):
        join(pred, empty)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(pred.read_text() + "{not json\n")
    with pytest.raises(InputError, match=r"bad\.jsonl:4: invalid JSON"):
        join(bad, gold)
    missing = _write_jsonl(
        tmp_path / "missing.jsonl",
        [
            _pred("B#0", "/img/B.png", [("R1", 0.6, "spot"), ("R2", 0.1, "crack")]),
            _pred("A#0", "/img/A.png", [("R1", 0.9, "crack")]),
            _pred("A#1", "/img/A.png", [("R1", 0.3, "spot")]),
        ],
    )
    with pytest.raises(InputError, match=r"missing\.jsonl:2: region 'R2' of sample 'A#0' has no prediction"):
        join(missing, gold)
    out_of_range = _write_jsonl(tmp_path / "oor.jsonl", [_pred("A#0", "/img/A.png", [("R1", 1.5, None)])])
    with pytest.raises(InputError, match=r"oor\.jsonl:1: not a prediction .*regions\.0\.score"):
        join(out_of_range, gold)
    with pytest.raises(InputError, match="has no prediction"):
        join(_write_jsonl(tmp_path / "one.jsonl", [_pred("A#1", "/img/A.png", [("R1", 0.3, "spot")])]), gold)


def test_eval_cli_val_threshold_config_and_determinism(tmp_path: Path, hand_case: tuple[Path, Path]) -> None:
    pred, gold = hand_case
    val_gold = _write_jsonl(
        tmp_path / "regions_val.jsonl",
        [_gold("V#0", "/img/V.png", [("R1", True, "crack"), ("R2", False, None), ("R3", True, "spot")])],
    )
    val_pred = _write_jsonl(
        tmp_path / "val_pred.jsonl",
        [_pred("V#0", "/img/V.png", [("R1", 0.8, "crack"), ("R2", 0.7, "spot"), ("R3", 0.35, "spot")])],
    )
    model_dir = tmp_path / "adapter"
    model_dir.mkdir()
    argv = [
        "eval",
        "--predictions",
        str(pred),
        "--gold",
        str(gold),
        "--val-predictions",
        str(val_pred),
        "--val-gold",
        str(val_gold),
        "--model-dir",
        str(model_dir),
        "--out",
    ]
    assert main([*argv, str(tmp_path / "o1")]) == 0
    assert main([*argv, str(tmp_path / "o2")]) == 0
    m = json.loads((tmp_path / "o1" / "metrics.json").read_text())
    # val F1 by threshold: 0.8 -> 2/3, 0.7 -> 0.5, 0.35 -> 0.8 => 0.35 chosen, applied unchanged to test
    assert m["threshold"] == 0.35 and m["threshold_source"] == "val" and m["val"]["f1"] == pytest.approx(0.8)
    assert m["roi"]["tp"] == 1 and m["roi"]["fp"] == 2 and m["roi"]["fn"] == 1
    for name in (
        "metrics.json",
        "report.md",
        "roc.png",
        "pr.png",
        "confusion.png",
        "gallery/index.html",
        CONFIG_FILE_NAME,
    ):
        b1 = (tmp_path / "o1" / name).read_bytes()
        assert b1 == (tmp_path / "o2" / name).read_bytes(), name
    assert (tmp_path / "o1" / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![ROC](roc.png)" in (tmp_path / "o1" / "report.md").read_text()
    assert load_inference_config(model_dir).threshold == 0.35
    assert load_inference_config(tmp_path / "o1").threshold_source == "val"


def test_eval_cli_errors_are_clear(
    tmp_path: Path, hand_case: tuple[Path, Path], capsys: pytest.CaptureFixture
) -> None:
    pred, gold = hand_case
    rc = main(
        [
            "eval",
            "--predictions",
            str(pred),
            "--gold",
            str(gold),
            "--threshold",
            "0.5",
            "--val-gold",
            str(gold),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 2 and "not both" in capsys.readouterr().err
    rc = main(
        [
            "eval",
            "--predictions",
            str(tmp_path / "nope.jsonl"),
            "--gold",
            str(gold),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 2 and "nope.jsonl: file not found" in capsys.readouterr().err


def test_image_line_auroc_when_predicted(tmp_path: Path) -> None:
    gold = _write_jsonl(
        tmp_path / "g.jsonl",
        [
            _gold("A#0", "/A", [("R1", True, "crack")]),
            _gold("A#1", "/A", [("R1", False, None)]),
            _gold("B#0", "/B", [("R1", False, None)]),
            _gold("C#0", "/C", [("R1", True, "spot")]),
        ],
    )
    rows = [
        _pred("A#0", "/A", [("R1", 0.2, "crack")]) | {"image_line_score": 0.3},
        _pred("A#1", "/A", [("R1", 0.1, "crack")]) | {"image_line_score": 0.9},
        _pred("B#0", "/B", [("R1", 0.7, "crack")]) | {"image_line_score": 0.5},
        _pred("C#0", "/C", [("R1", 0.6, "spot")]) | {"image_line_score": 0.4},
    ]
    m = compute_metrics(join(_write_jsonl(tmp_path / "p.jsonl", rows), gold), 0.5)
    # image-line scores per image (max over samples): A 0.9, B 0.5, C 0.4; gold A, C abnormal
    assert m["image_line"]["auroc"] == pytest.approx(roc_auc_score([1, 0, 1], [0.9, 0.5, 0.4]))
    assert m["image"]["auroc"] == pytest.approx(roc_auc_score([1, 0, 1], [0.2, 0.7, 0.6]))
    without = [{k: v for k, v in r.items() if k != "image_line_score"} for r in rows]
    no_line = compute_metrics(join(_write_jsonl(tmp_path / "q.jsonl", without), gold), 0.5)
    assert "image_line" not in no_line


def test_a_region_scored_twice_in_one_prediction_is_its_lines_error(tmp_path: Path) -> None:
    """Two scores for one region: the last one would win silently and move the metrics."""
    gold = _write_jsonl(
        tmp_path / "g.jsonl", [_gold("A#0", "/A", [("R1", True, "crack"), ("R2", False, None)])]
    )
    row = _pred("A#0", "/A", [("R1", 0.9, "crack"), ("R2", 0.1, "crack")])
    row["regions"].append(dict(row["regions"][1], score=0.0))
    pred = _write_jsonl(tmp_path / "p.jsonl", [row])
    with pytest.raises(InputError, match=r"p\.jsonl:1: .*region ids repeat"):
        join(pred, gold)
