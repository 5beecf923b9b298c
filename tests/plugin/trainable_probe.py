"""Child-process probe: parse recipes like `llamafactory-cli train`, load the model, build the optimizer.

Usage: python trainable_probe.py cases.json out.json. Each case is a dict of LLaMA-Factory arguments
(roi_ keys included). For each it records the trainable parameter names and, when LLaMA-Factory's
create_custom_optimizer returns an optimizer, each group's learning rate, weight decay and member names.
A case that raises records {"error": "<type>: <message>", "stage": "parse" | "load"} instead (parse: in
get_train_args, before the tokenizer or the model loads).
Run in a fresh interpreter so the .pth start-up hook (or QWENVL_ROI_PLUGIN=0) decides what is patched.
"""

from __future__ import annotations

import json
import sys

STAGE = ["parse"]  # where the case being probed is: a refusal's stage


def probe(case: dict) -> dict:
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_model, load_tokenizer
    from llamafactory.train import trainer_utils

    STAGE[0] = "parse"
    model_args, data_args, training_args, finetuning_args, _ = get_train_args(dict(case))
    STAGE[0] = "load"
    tokenizer_module = load_tokenizer(model_args)
    model = load_model(tokenizer_module["tokenizer"], model_args, finetuning_args, is_trainable=True)
    names = {id(p): n for n, p in model.named_parameters()}
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    optimizer = trainer_utils.create_custom_optimizer(model, training_args, finetuning_args)
    groups = None
    if optimizer is not None:
        groups = [
            {
                "lr": g["lr"],
                "weight_decay": g["weight_decay"],
                "names": sorted(names[id(p)] for p in g["params"]),
            }
            for g in optimizer.param_groups
        ]
    return {"trainable": trainable, "groups": groups}


def main() -> int:
    with open(sys.argv[1], encoding="utf-8") as fh:
        cases = json.load(fh)
    results = []
    for case in cases:
        try:
            results.append(probe(case))
        except Exception as err:  # reported back: the error tests check the message
            results.append({"error": f"{type(err).__name__}: {err}", "stage": STAGE[0]})
    with open(sys.argv[2], "w", encoding="utf-8") as fh:
        json.dump(results, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
