"""Load a base model plus LoRA adapter, or a merged export, on the best device with a fitting dtype.

CUDA gets bfloat16, CPU float32 (bf16 matmuls on CPU are slow and change scores). An adapter is merged
into the weights after loading, so base+adapter and the merged export run the same code path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qwenvl_roi.errors import InputError


def pick_device_and_dtype(device: str | None = None, dtype: str | None = None) -> tuple[Any, Any]:
    """(device, dtype): explicit choices win; otherwise CUDA+bf16 when available, else CPU+fp32."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dtype is None:
        dt = torch.bfloat16 if dev.type == "cuda" else torch.float32
    else:
        dt = getattr(torch, dtype, None)
        if not isinstance(dt, torch.dtype):
            raise InputError(f"unknown dtype {dtype!r} (use float32, bfloat16 or float16)")
    return dev, dt


def check_model_path(path: str | Path, what: str = "model", marker: str = "config.json") -> str:
    """A local folder must hold `marker`; a hub name (`Qwen/Qwen2.5-VL-7B-Instruct`) is left to the cache."""
    p = Path(path).expanduser()
    text = str(path)
    looks_local = p.is_absolute() or text.startswith((".", "~")) or text.count("/") != 1
    if p.exists() or looks_local:
        if not p.is_dir():
            raise InputError(f"{what} {p}: not a folder")
        if not (p / marker).is_file():
            raise InputError(f"{what} {p}: no {marker} (is this the right folder?)")
        return str(p)
    return text


def load_model(model_path: str | Path, adapter_path: str | Path | None, device: Any, dtype: Any) -> Any:
    """The model in eval mode on `device`; a LoRA adapter (peft) is loaded and merged when given."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(check_model_path(model_path), dtype=dtype)
    if adapter_path is not None:
        from peft import PeftModel

        adapter_dir = check_model_path(adapter_path, "adapter", "adapter_config.json")
        model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    return model.to(device).eval()
