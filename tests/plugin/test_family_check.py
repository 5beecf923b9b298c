"""A ROI dataset trained on a model of another family, or with a template that trains a think block, stops the
run before training (LLaMA-Factory's own get_train_args and load_model, in a fresh interpreter)."""

from __future__ import annotations

from pathlib import Path

PROBE = Path(__file__).with_name("trainable_probe.py")


def test_family_and_thinking_mismatches_stop_the_run(
    lf, tiny_qwen2_5_vl: Path, tiny_qwen3_5: Path, family_dataset, tmp_path: Path
) -> None:
    def case(recipe: str, model: Path, family: str, out: str, **overrides: object) -> dict:
        args = lf.recipe_case(recipe, model, family_dataset(family), tmp_path / out, **overrides)
        return {k: v for k, v in args.items() if v is not None or k == "resume_from_checkpoint"}

    cases = [
        # Qwen2.5-VL model, dataset converted for Qwen3-VL (relative coordinates)
        case("phase1.yaml", tiny_qwen2_5_vl, "qwen3_vl", "a"),
        # Qwen3.5 recipe with thinking switched on (LLaMA-Factory's and the web UI's default)
        case("qwen3_5/phase1.yaml", tiny_qwen3_5, "qwen3_5", "b", enable_thinking=True),
        # the family's own recipe, model and data: no error
        case("qwen3_5/phase1.yaml", tiny_qwen3_5, "qwen3_5", "c"),
    ]
    results = lf.run_probe(PROBE, cases, tmp_path, env=lf.env(tmp_path))
    assert "DatasetMismatchError" in results[0]["error"]
    assert (
        "dataset 'roi_train' was converted with model_family=qwen3_vl (relative coordinates on 0..1000) but "
        "the model" in results[0]["error"]
    )
    assert "is qwen2_5_vl (model_type 'qwen2_5_vl'" in results[0]["error"]
    assert "Set model_family: qwen2_5_vl" in results[0]["error"]
    assert "template 'qwen3_5' with enable_thinking: true puts an empty think block" in results[1]["error"]
    assert "untick 'Enable thinking'" in results[1]["error"]
    assert "error" not in results[2] and results[2]["trainable"]
