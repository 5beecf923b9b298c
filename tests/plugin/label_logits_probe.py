"""Child-process probe for test_label_logits.py: loss, gradients and logits before and after the plugin's
optimizer hook (where it starts computing the language-model head only at scored positions).

Usage: python label_logits_probe.py in.json out.json, where in.json holds the train arguments. Loads the
model as `llamafactory-cli train` does, builds a padded batch of two image prompts whose answers (the only
labelled tokens) differ in length, and records for the stock forward and for the hooked one: the loss (also
with the HF Trainer's ``num_items_in_batch``), the gradients of the trainable parameters and the number of
logit rows the training forward returned; plus the rows an eval-mode forward returns after the hook.
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
        args = json.load(fh)
    model_args, _data_args, training_args, finetuning_args, _ = get_train_args(args)
    tokenizer_module = load_tokenizer(model_args)
    processor, tokenizer = tokenizer_module["processor"], tokenizer_module["tokenizer"]
    model = load_model(tokenizer, model_args, finetuning_args, is_trainable=True)

    torch.manual_seed(0)
    images = [Image.fromarray((torch.rand(56, 56, 3) * 255).to(torch.uint8).numpy()) for _ in range(2)]
    texts = [
        "<|vision_start|><|image_pad|><|vision_end|>regions R1 R2 R3 answer: R1: normal",
        "<|vision_start|><|image_pad|><|vision_end|>R1 answer: R1: crack R2: normal R3: seepage",
    ]
    tokenizer.padding_side = "right"
    batch = processor(text=texts, images=images, padding=True, return_tensors="pt")
    labels = torch.full_like(batch["input_ids"], -100)
    for row, answer_tokens in enumerate((4, 9)):
        real = int(batch["attention_mask"][row].sum())
        labels[row, real - answer_tokens : real] = batch["input_ids"][row, real - answer_tokens : real]
    batch["labels"] = labels
    scored = int((labels[:, 1:] != -100).any(dim=0).sum())

    def run(**extra: object) -> tuple[float, dict[str, torch.Tensor], int]:
        model.zero_grad(set_to_none=True)
        out = model(**batch, **extra)
        out.loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        return out.loss.item(), grads, out.logits.shape[1]

    model.train()
    nib = torch.tensor(int((labels != -100).sum()) - 0)
    loss_before, grads_before, rows_before = run()
    loss_nib_before, _, _ = run(num_items_in_batch=nib)
    trainer_utils.create_custom_optimizer(model, training_args, finetuning_args)
    loss_after, grads_after, rows_after = run()
    loss_nib_after, _, _ = run(num_items_in_batch=nib)
    model.eval()
    with torch.no_grad():
        eval_rows = model(**batch).logits.shape[1]
    out = {
        "seq_len": batch["input_ids"].shape[1],
        "scored_positions": scored,
        "rows_before": rows_before,
        "rows_after": rows_after,
        "eval_rows_after": eval_rows,
        "loss_before": loss_before,
        "loss_after": loss_after,
        "loss_nib_before": loss_nib_before,
        "loss_nib_after": loss_nib_after,
        "max_grad_diff": max((grads_before[n] - grads_after[n]).abs().max().item() for n in grads_before),
        "max_grad": max(g.abs().max().item() for g in grads_before.values()),
        "trainable_tensors": len(grads_before),
    }
    with open(sys.argv[2], "w", encoding="utf-8") as fh:
        json.dump(out, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
