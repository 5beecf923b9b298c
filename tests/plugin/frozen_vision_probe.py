"""Child-process probe for test_frozen_vision.py: gradients before and after the optimizer hook.

Usage: python frozen_vision_probe.py case.json out.json. Loads the model as `llamafactory-cli train` does,
runs one forward/backward on an image prompt, builds the optimizer through LLaMA-Factory's
create_custom_optimizer (where the plugin drops a frozen vision tower's input-grad hooks), runs the same
forward/backward again, and records: input-grad hooks left in the vision tower, whether the vision
tower's output required grad, and the largest gradient difference over the trainable parameters.
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
        case = json.load(fh)
    model_args, _data_args, training_args, finetuning_args, _ = get_train_args(case)
    tokenizer_module = load_tokenizer(model_args)
    processor = tokenizer_module["processor"]
    model = load_model(tokenizer_module["tokenizer"], model_args, finetuning_args, is_trainable=True)
    base = model.get_base_model()
    tower = base.model.visual

    torch.manual_seed(0)
    image = Image.fromarray((torch.rand(56, 56, 3) * 255).to(torch.uint8).numpy())
    text = "<|vision_start|><|image_pad|><|vision_end|>R1: normal"
    inputs = processor(text=[text], images=[image], return_tensors="pt")
    inputs["labels"] = inputs["input_ids"].clone()

    seen: dict[str, bool] = {}
    tower.blocks[-1].register_forward_hook(lambda m, i, o: seen.__setitem__("grad", bool(o.requires_grad)))

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
    before, hooks_before, grad_before = grads(), hooks_left(), seen["grad"]
    trainer_utils.create_custom_optimizer(model, training_args, finetuning_args)
    after, hooks_after, grad_after = grads(), hooks_left(), seen["grad"]
    diff = max((before[n] - after[n]).abs().max().item() for n in before)
    out = {
        "hooks_before": hooks_before,
        "hooks_after": hooks_after,
        "vision_output_grad_before": grad_before,
        "vision_output_grad_after": grad_after,
        "max_grad_diff": diff,
        "trainable_tensors": len(before),
    }
    with open(sys.argv[2], "w", encoding="utf-8") as fh:
        json.dump(out, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
