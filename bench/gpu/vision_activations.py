"""What a frozen vision tower keeps for a backward nobody needs, at the real Qwen2.5-VL shape, on a CPU.

    .venv/bin/python bench/gpu/vision_activations.py [--shape 7b] [--short-side 1024] [--batch 4]

About 30 s and 11 GB of memory for the 7B shape on 2 cores.

Before the plugin's vision_backprop change, peft's input-grad hook made the patch embeddings require grad,
so autograd saved every vision block's activations for a backward pass (LLaMA-Factory does not checkpoint
blocks without trainable parameters). The bytes autograd saves are fixed by the model code and the shapes,
not by the device or the weights' values (GPU and CPU SDPA both keep q, k, v, output and log-sum-exp), so
this counts them exactly on a CPU: one forward of the vision tower with the published configuration and
random bf16 weights on one image at the recipes' resolution, every saved storage counted once and charged
to the block that saved it. Prints a JSON line and a Markdown table (bench/results/gpu.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/ -> `gpu` package

from gpu.shapes import SHAPES  # noqa: E402

GIB = 2**30


def model_view(short_side: int, max_pixels: int) -> tuple[int, int]:
    """(height, width) the model sees of a 4:3 image with this short side: LLaMA-Factory's resize to
    image_max_pixels, then the Qwen2-VL processor's (the converters' own frame computation)."""
    from qwenvl_roi.converters.frames import model_frame_size

    width, height = model_frame_size(round(short_side * 4 / 3), short_side, image_max_pixels=max_pixels)
    return height, width


def saved_bytes_per_block(shape: str, height: int, width: int) -> dict[str, Any]:
    """Storage bytes autograd saves in one forward with the patch embeddings requiring grad, per block."""
    import torch
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    config = Qwen2_5_VLVisionConfig(**SHAPES[shape]["vision_config"])
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    tower = Qwen2_5_VisionTransformerPretrainedModel._from_config(config, dtype=torch.bfloat16)
    tower.requires_grad_(False).train()

    current: list[str] = ["outside blocks"]
    charged: dict[int, str] = {}  # storage pointer -> where it was first saved
    sizes: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in charged:
            charged[storage.data_ptr()] = current[0]
            sizes[storage.data_ptr()] = storage.nbytes()
        return t

    for i, block in enumerate(tower.blocks):
        block.register_forward_pre_hook(lambda m, a, i=i: current.__setitem__(0, f"block {i}"))
        block.register_forward_hook(lambda m, a, o: current.__setitem__(0, "outside blocks"))
    # What transformers' make_inputs_require_grads hook (added by peft) did to the patch embeddings.
    tower.patch_embed.register_forward_hook(lambda m, a, o: o.requires_grad_(True))

    patches_h, patches_w = height // 14, width // 14
    pixels = torch.randn(patches_h * patches_w, 3 * 2 * 14 * 14, dtype=torch.bfloat16)
    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        tower(pixels, grid_thw=torch.tensor([[1, patches_h, patches_w]]))
    seconds = time.perf_counter() - start

    per_block = [0] * config.depth
    outside = 0
    for ptr, where in charged.items():
        if where.startswith("block "):
            per_block[int(where.split()[1])] += sizes[ptr]
        else:
            outside += sizes[ptr]
    return {
        "depth": config.depth,
        "patches": patches_h * patches_w,
        "per_block_bytes": per_block,
        "outside_blocks_bytes": outside,
        "forward_seconds": round(seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=list(SHAPES), default="7b", help="quick: the CPU check's tiny shape")
    p.add_argument("--short-side", type=int, default=1024, help="image short side in pixels (aspect 4:3)")
    p.add_argument("--image-max-pixels", type=int, default=1048576)
    p.add_argument("--batch", type=int, default=4, help="images per step, to scale the per-image figure")
    p.add_argument("--top-trained", type=int, default=8, help="phase 2's roi_vision_lora_top_blocks")
    ns = p.parse_args(argv)

    height, width = model_view(ns.short_side, ns.image_max_pixels)
    r = saved_bytes_per_block(ns.shape, height, width)
    per_block = r["per_block_bytes"]
    frozen_below = per_block[: r["depth"] - ns.top_trained]
    result = {
        "shape": ns.shape,
        "model_view": [width, height],
        **r,
        "phase1_wasted_bytes_per_image": sum(per_block),
        "phase2_wasted_bytes_per_image": sum(frozen_below),
    }
    print(json.dumps(result))
    print(f"\n{ns.shape} vision tower, {width}x{height} ({r['patches']} patches), bf16, random weights")
    print(f"\n| saved for backward | per image GiB | batch {ns.batch} GiB |\n|---|---|---|")
    rows = [
        ("mean vision block", sum(per_block) / len(per_block)),
        (f"all {r['depth']} blocks (phase 1 before the fix)", sum(per_block)),
        (f"blocks 0-{r['depth'] - ns.top_trained - 1} (phase 2 before the fix)", sum(frozen_below)),
        ("outside the blocks (patch embedding, merger)", r["outside_blocks_bytes"]),
    ]
    for name, value in rows:
        print(f"| {name} | {value / GIB:.3f} | {value * ns.batch / GIB:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
