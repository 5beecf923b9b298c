"""Child-process probe: parse training arguments like `llamafactory-cli train` and report the verdict plan.

Usage: python verdicts_probe.py cases.json out.json. Each case is a dict of LLaMA-Factory arguments (roi_
keys included). For each it records the plan the plugin resolved for roi_eval_verdicts (dataset, regions
file, chosen sample ids, defined metrics, metric prefix), null when there is none, or {"error": "<type>:
<message>"} when parsing stops. Run in a fresh interpreter so the .pth start-up hook patches LLaMA-Factory.
"""

from __future__ import annotations

import json
import sys


def probe(case: dict) -> dict:
    from llamafactory.hparams import get_train_args
    from qwenvl_roi.plugin import verdicts

    get_train_args(dict(case))
    plan = verdicts.get_plan()
    if plan is None:
        return {"plan": None}
    return {
        "plan": {
            "dataset": plan.dataset,
            "regions_file": str(plan.regions_file),
            "samples": [s["sample_id"] for s in plan.samples],
            "total": plan.total,
            "defined": list(plan.defined),
            "prefix": plan.prefix,
            "batch_size": plan.batch_size,
        }
    }


def main() -> int:
    with open(sys.argv[1], encoding="utf-8") as fh:
        cases = json.load(fh)
    out = []
    for case in cases:
        try:
            out.append(probe(case))
        except Exception as exc:  # noqa: BLE001 (the message is what the test checks)
            out.append({"error": f"{type(exc).__name__}: {exc}"})
    with open(sys.argv[2], "w", encoding="utf-8") as fh:
        json.dump(out, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
