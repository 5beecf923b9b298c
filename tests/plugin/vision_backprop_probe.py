"""Child-process probe for test_vision_backprop.py: the vision tower's backward before and after the plugin.

Usage: python vision_backprop_probe.py in.json out.json, where in.json is {"args": <train args>,
"hf_reentrant_gc": bool}. Loads the model as `llamafactory-cli train` does (with "hf_reentrant_gc", LLaMA-
Factory's checkpointing is off and transformers' own re-entrant checkpointing is switched on instead, as the
HF Trainer does for `gradient_checkpointing: true`), runs one forward/backward on an image prompt, builds
the optimizer through LLaMA-Factory's create_custom_optimizer (where the plugin trims the vision tower's
input-grad hooks), runs the same forward/backward again, and records: input-grad hooks left in the vision
tower, which vision blocks autograd recorded, the largest gradient difference over the trainable
parameters and the gradient size of the trained vision parameters.
"""

from __future__ import annotations

import json
import sys


def main() -> int:
    import torch
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_model, load_tokenizer
    from llamafactory.train import trainer_utils
    from PIL import Image

    with open(sys.argv[1], encoding="utf-8") as fh:
        payload = json.load(fh)
    model_args, _data_args, training_args, finetuning_args, _ = get_train_args(payload["args"])
    tokenizer_module = load_tokenizer(model_args)
    processor = tokenizer_module["processor"]
    model = load_model(tokenizer_module["tokenizer"], model_args, finetuning_args, is_trainable=True)
    if payload.get("hf_reentrant_gc"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    tower = model.get_base_model().model.visual

    torch.manual_seed(0)
    image = Image.fromarray((torch.rand(56, 56, 3) * 255).to(torch.uint8).numpy())
    text = "<|vision_start|><|image_pad|><|vision_end|>R1: normal"
    inputs = processor(text=[text], images=[image], return_tensors="pt")
    inputs["labels"] = inputs["input_ids"].clone()

    recorded: dict[int, bool] = {}
    for i, block in enumerate(tower.blocks):
        block.register_forward_hook(lambda m, a, o, i=i: recorded.__setitem__(i, bool(o.requires_grad)))

    def grads() -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        model(**inputs).loss.backward()
        return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def hooks_left() -> int:
        return sum(
            getattr(h, "__name__", "").startswith("make_inputs_require_grad")
            for m in tower.modules()
            for h in m._forward_hooks.values()
        )

    model.train()
    before, hooks_before, recorded_before = grads(), hooks_left(), dict(recorded)
    trainer_utils.create_custom_optimizer(model, training_args, finetuning_args)
    after, hooks_after, recorded_after = grads(), hooks_left(), dict(recorded)
    vision = [n for n in after if ".visual.blocks." in n]
    deepstack = [n for n in after if ".visual.deepstack_merger_list." in n]
    out = {
        "hooks_before": hooks_before,
        "hooks_after": hooks_after,
        "recorded_blocks_before": sorted(i for i, r in recorded_before.items() if r),
        "recorded_blocks_after": sorted(i for i, r in recorded_after.items() if r),
        "max_grad_diff": max((before[n] - after[n]).abs().max().item() for n in before),
        "trainable_tensors": len(before),
        "vision_trained_tensors": len(vision),
        "vision_grad_abs_sum": sum(after[n].abs().sum().item() for n in vision),
        "deepstack_trained_tensors": len(deepstack),
        "deepstack_grads_nonzero": sum(bool(after[n].abs().sum().item() > 0) for n in deepstack),
    }
    with open(sys.argv[2], "w", encoding="utf-8") as fh:
        json.dump(out, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
