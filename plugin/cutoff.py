"""Stop before the first step when a ROI sample does not fit in ``cutoff_len``, instead of training on a cut.

LLaMA-Factory truncates a too-long sample silently (``infer_seqlen``): it cuts the prompt, here in the middle
of the ``<regions>`` list, and still trains on the full answer, which then names regions the model never
saw; or it cuts the answer; or a cut through the image tokens fails much later. Inference never truncates,
so training and inference would disagree. For runs on datasets the converters built (``roi_meta`` in
dataset_info.json) the SFT processor measures every sample's full length (prompt with its image tokens +
answer), and the run stops naming ``cutoff_len``, the longest sample and how many do not fit.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from . import compat, dataset_match

LENGTH_COLUMN = "_qwenvl_roi_full_length"


class CutoffError(ValueError):
    """A ROI sample is longer than cutoff_len."""


def _advice(cutoff: int, longest: int) -> str:
    return (
        f"LLaMA-Factory would cut it and train on something else. Set cutoff_len to at least {longest} "
        "(the recipes' value fits 1024x1024 images with 8 regions), or lower image_max_pixels (re-convert "
        "with the same value) or max_boxes_per_image."
    )


class _FullLength:
    """Mixin for LLaMA-Factory's supervised processors: encode without truncation and record the length."""

    def _encode_data_example(self, *args: Any, **kwargs: Any) -> tuple[list[int], list[int]]:
        cutoff = self.data_args.cutoff_len
        self.data_args.cutoff_len = sys.maxsize  # nothing is cut: the full sample is measured
        try:
            input_ids, labels = super()._encode_data_example(*args, **kwargs)
        finally:
            self.data_args.cutoff_len = cutoff
        self._lengths.append(len(input_ids))
        if self._fail_fast and len(input_ids) > cutoff:
            images = kwargs.get("images") or []
            raise CutoffError(
                f"cutoff_len {cutoff} is shorter than a sample of {len(input_ids)} tokens (prompt with the "
                f"image's tokens + answer; image {images[0] if images else '-'}). "
                + _advice(cutoff, len(input_ids))
            )
        return input_ids, labels

    def preprocess_dataset(self, examples: dict[str, list[Any]]) -> dict[str, list[Any]]:
        self._lengths = []
        model_inputs = super().preprocess_dataset(examples)
        if not self._fail_fast:
            model_inputs[LENGTH_COLUMN] = list(self._lengths)
        return model_inputs


_MEASURED = {
    "MeasuredSupervisedDatasetProcessor": "SupervisedDatasetProcessor",
    "MeasuredPackedSupervisedDatasetProcessor": "PackedSupervisedDatasetProcessor",
}


@functools.cache
def _measured(name: str) -> type:
    """The measuring subclass of one LLaMA-Factory processor (built on first use: no import-time cost)."""
    base = compat.get("llamafactory.data.processor", _MEASURED[name])
    # packed rows hold several samples, so the length column cannot follow them: fail on the first one
    attrs = {"__module__": __name__, "__qualname__": name, "_fail_fast": "Packed" in name}
    return dataclass(type(name, (_FullLength, base), attrs))


def __getattr__(name: str) -> Any:
    """Module attributes for the measuring classes, so dataset worker processes can unpickle them."""
    if name in _MEASURED:
        return _measured(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _measuring_class(processor: Any) -> type | None:
    for name, base in _MEASURED.items():
        if type(processor).__name__ == base and type(processor).__module__.startswith("llamafactory."):
            return _measured(name)
    return None


def patch_loader(module: ModuleType) -> None:
    """Measure ROI samples in the SFT processor; refuse the run when one is longer than cutoff_len."""
    original_processor = compat.get(module, "_get_dataset_processor")
    original_preprocess = compat.get(module, "_get_preprocessed_dataset")

    @functools.wraps(original_processor)
    def _get_dataset_processor(data_args: Any, stage: str, *args: Any, **kwargs: Any) -> Any:
        processor = original_processor(data_args, stage, *args, **kwargs)
        measured = _measuring_class(processor)
        if measured is None or data_args.streaming or not dataset_match.run_datasets(data_args)[1]:
            return processor
        return measured(
            template=processor.template,
            tokenizer=processor.tokenizer,
            processor=processor.processor,
            data_args=processor.data_args,
        )

    @functools.wraps(original_preprocess)
    def _get_preprocessed_dataset(dataset: Any, data_args: Any, *args: Any, **kwargs: Any) -> Any:
        result = original_preprocess(dataset, data_args, *args, **kwargs)
        if result is None or LENGTH_COLUMN not in (getattr(result, "column_names", None) or []):
            return result
        lengths = result[LENGTH_COLUMN]
        cutoff = data_args.cutoff_len
        over = [i for i, n in enumerate(lengths) if n > cutoff]
        if over:
            longest = max(over, key=lambda i: lengths[i])
            images = result[longest]["images"] or ["-"]
            names = ", ".join(dataset_match.run_datasets(data_args)[1])
            split = "eval" if kwargs.get("is_eval") else "train"
            raise CutoffError(
                f"cutoff_len {cutoff} is too short for {len(over)} of {len(lengths)} {split} samples of "
                f"{names}: the longest is {lengths[longest]} tokens (prompt with the image's tokens + "
                f"answer), sample {longest} with image {images[0]}. " + _advice(cutoff, lengths[longest])
            )
        return result.remove_columns(LENGTH_COLUMN)

    compat.replace(module, "_get_dataset_processor", _get_dataset_processor)
    compat.replace(module, "_get_preprocessed_dataset", _get_preprocessed_dataset)
