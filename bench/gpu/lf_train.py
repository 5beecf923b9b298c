"""`llamafactory-cli train CONFIG.yaml key=value ...` with a measuring callback; one benchmark run.

Why: `llamafactory-cli train` on one device calls `llamafactory.train.tuner.run_exp()` in-process; this
script makes the same call with the same argv, adding one TrainerCallback that times the optimizer steps
after warm-up, counts the text / vision tokens of every micro-batch (a forward pre-hook on the model),
reads peak CUDA memory and counts model FLOPs from the live model (gpu/flops.py). Everything else is stock
LLaMA-Factory (and the qwenvl-roi plugin when --plugin is given).

Usage: python bench/gpu/lf_train.py --metrics OUT.json --warmup W [--plugin] [--exit-after-train]
       CONFIG.yaml [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/ -> `gpu` package

from gpu.flops import build_plan, microbatch_flops  # noqa: E402
from qwenvl_roi import fileio  # noqa: E402


def _write_json(path: Path, obj: Any) -> None:
    fileio.write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def activate_plugin() -> str:
    """Run the import line(s) of qwenvl_roi_plugin.pth, as site.py does for a site-packages folder.

    On the GPU machine the wheels sit on PYTHONPATH, where .pth files are not processed, so the plugin
    runs are switched on here explicitly; the stock run leaves it off.
    """
    for entry in sys.path:
        pth = Path(entry or ".") / "qwenvl_roi_plugin.pth"
        if pth.is_file():
            for line in pth.read_text().splitlines():
                if line.startswith(("import ", "import\t")):
                    exec(line)  # noqa: S102 - exactly what site.addpackage does with such a line
            return str(pth)
    raise SystemExit("--plugin given but qwenvl_roi_plugin.pth is on no sys.path entry (install the wheel)")


def plugin_active() -> bool:
    """Whether the qwenvl-roi plugin patched any LLaMA-Factory module in this process."""
    act = sys.modules.get("qwenvl_roi.plugin.activation")
    if act is None:
        return False
    attr = getattr(act, "_APPLIED_ATTR", "__qwenvl_roi_patched__")
    return any(getattr(sys.modules.get(name), attr, False) for name in getattr(act, "PATCHES", {}))


def make_callback(
    metrics_path: Path, warmup: int, exit_after_train: bool, profile: Path | None = None
) -> Any:
    """The measuring TrainerCallback (built here so transformers is imported only when training)."""
    import torch
    from transformers import TrainerCallback

    cuda = torch.cuda.is_available()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    class BenchCallback(TrainerCallback):
        """Times steps warmup+1.. and records tokens, memory and FLOPs per micro-batch."""

        def __init__(self) -> None:
            self.done_steps = 0
            self.step_end: dict[int, float] = {}
            self.micro: list[dict[str, Any]] = []
            self.plan = None
            self.image_token_id: int | None = None
            self.mem_after_load: int | None = None
            self.t_train_begin = 0.0
            self.info: dict[str, Any] = {}
            self.losses: list[float] = []
            self.vision_backprop: bool | None = None
            self.waiting_since: float | None = None
            self.data_wait: dict[int, float] = {}
            self.profiler: Any = None

        def _hook(self, module: Any, args: tuple, kwargs: dict) -> None:
            if self.waiting_since is not None:
                # CPU time between the end of a step and the next forward: mostly waiting for the batch
                self.data_wait[self.done_steps + 1] = time.perf_counter() - self.waiting_since
                self.waiting_since = None
            ids = kwargs.get("input_ids", args[0] if args else None)
            mask = kwargs.get("attention_mask")
            grid = kwargs.get("image_grid_thw")
            labels = kwargs.get("labels")
            if ids is None:
                return
            if mask is None:
                mask = torch.ones_like(ids)
            seq_lens = [int(v) for v in mask.sum(dim=-1).tolist()]
            vision = (
                int(((ids == self.image_token_id) & mask.bool()).sum())
                if self.image_token_id is not None
                else 0
            )
            grids = [tuple(int(v) for v in g) for g in grid.tolist()] if grid is not None else []
            self.micro.append(
                {
                    "step": self.done_steps,
                    "samples": int(ids.shape[0]),
                    "padded_tokens": int(ids.numel()),
                    "seq_lens": seq_lens,
                    "vision_tokens": vision,
                    "text_tokens": sum(seq_lens) - vision,
                    "patches": sum(t * h * w for t, h, w in grids),
                    "grids": grids,
                    "label_tokens": int((labels != -100).sum()) if labels is not None else None,
                    "scored_tokens": int((labels[:, 1:] != -100).sum()) if labels is not None else None,
                }
            )

        def _vision_hook(self, module: Any, args: tuple, output: Any) -> None:
            # Whether autograd records the vision tower (and so runs its backward), needed or not.
            out = output[0] if isinstance(output, tuple) else output
            self.vision_backprop = bool(getattr(out, "requires_grad", False))

        def on_train_begin(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
            self.t_train_begin = time.perf_counter()
            self.plan = build_plan(model)
            cfg = model.config
            self.image_token_id = getattr(cfg, "image_token_id", None)
            model.register_forward_pre_hook(self._hook, with_kwargs=True)
            if cuda:
                sync()
                self.mem_after_load = torch.cuda.memory_allocated()
            from llamafactory.extras.misc import count_parameters

            n_train, n_all = count_parameters(model)  # LLaMA-Factory's count (4-bit weights unpacked)
            vis = next((m for n, m in model.named_modules() if n.endswith("visual.blocks.0")), None)
            if vis is not None:
                vis.register_forward_hook(self._vision_hook)
            self.info = {
                "params_total": n_all,
                "params_trainable": n_train,
                "gradient_checkpointing": bool(getattr(model, "is_gradient_checkpointing", False)),
                "attn_implementation": getattr(getattr(model, "config", None), "_attn_implementation", None),
                "per_device_train_batch_size": args.per_device_train_batch_size,
                "gradient_accumulation_steps": args.gradient_accumulation_steps,
                "bf16": bool(args.bf16),
            }

        def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001
            if profile is not None and state.global_step == warmup and self.profiler is None:
                self.profiler = torch.profiler.profile(
                    activities=[torch.profiler.ProfilerActivity.CPU]
                    + ([torch.profiler.ProfilerActivity.CUDA] if cuda else []),
                    record_shapes=False,
                )
                self.profiler.__enter__()

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            sync()
            self.done_steps = state.global_step
            self.step_end[state.global_step] = time.perf_counter()
            if self.profiler is not None and state.global_step == warmup + 1:
                self.profiler.__exit__(None, None, None)
                key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
                table = self.profiler.key_averages().table(
                    sort_by=key, row_limit=40, max_name_column_width=70
                )
                profile.parent.mkdir(parents=True, exist_ok=True)
                profile.write_text(
                    f"one optimizer step after warm-up (step {warmup + 1}), sorted by {key}\n{table}\n"
                )
                self.step_end[state.global_step] = time.perf_counter()
            self.waiting_since = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

        def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
            sync()
            last = state.global_step
            first = warmup + (1 if profile is not None else 0)  # the profiled step is not timed
            if last <= first:
                raise SystemExit(f"only {last} steps ran; need more than the {first} untimed steps")
            window = [m for m in self.micro if first <= m["step"] < last]
            seconds = self.step_end[last] - self.step_end[first]
            flops = [
                microbatch_flops(self.plan, m["seq_lens"], m["grids"], m["scored_tokens"]) for m in window
            ]
            step_times = [
                round(self.step_end[s] - self.step_end.get(s - 1, self.t_train_begin), 4)
                for s in sorted(self.step_end)
            ]
            timed = sorted(step_times[first:])
            median = (timed[(len(timed) - 1) // 2] + timed[len(timed) // 2]) / 2
            out = {
                **self.info,
                "warmup_steps": first,
                "measured_steps": last - first,
                "measured_seconds": seconds,
                "step_seconds": step_times,
                "median_step_seconds": median,
                "profiled_step": warmup + 1 if profile is not None else None,
                "data_wait_seconds": [round(self.data_wait.get(i, 0.0), 4) for i in range(2, last + 1)],
                "vision_backprop": self.vision_backprop,
                "samples": sum(m["samples"] for m in window),
                "text_tokens": sum(m["text_tokens"] for m in window),
                "vision_tokens": sum(m["vision_tokens"] for m in window),
                "patches": sum(m["patches"] for m in window),
                "padded_tokens": sum(m["padded_tokens"] for m in window),
                "label_tokens": sum(m["label_tokens"] or 0 for m in window),
                "model_flops": sum(f["total"] for f in flops),
                "model_flops_forward": sum(f["forward"] for f in flops),
                "losses": self.losses,
                "device": torch.cuda.get_device_name(0) if cuda else "cpu",
                "mem_after_load_bytes": self.mem_after_load,
                "peak_allocated_bytes": torch.cuda.max_memory_allocated() if cuda else None,
                "peak_reserved_bytes": torch.cuda.max_memory_reserved() if cuda else None,
                "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "plugin_active": plugin_active(),
            }
            _write_json(metrics_path, out)
            if exit_after_train:
                # Skip the final adapter/model save: it is not part of what is measured and costs GPU time.
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(0)

    return BenchCallback()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", type=Path, required=True, help="where to write the run's metrics JSON")
    parser.add_argument("--warmup", type=int, default=2, help="optimizer steps excluded from the timing")
    parser.add_argument("--plugin", action="store_true", help="activate the qwenvl-roi plugin (.pth line)")
    parser.add_argument("--exit-after-train", action="store_true", help="skip the final save")
    parser.add_argument(
        "--profile", type=Path, help="write a torch.profiler table of the first timed step here"
    )
    parser.add_argument("config", help="LLaMA-Factory YAML")
    parser.add_argument(
        "overrides", nargs="*", help="key=value, merged into the YAML as llamafactory-cli does"
    )
    ns = parser.parse_args(argv)
    if ns.plugin and "qwenvl_roi.plugin.activation" not in sys.modules:
        activate_plugin()  # not processed at start-up (wheels on PYTHONPATH)
    from llamafactory.train.tuner import run_exp

    sys.argv = [sys.argv[0], ns.config, *ns.overrides]  # read_args() parses argv like llamafactory-cli train
    run_exp(callbacks=[make_callback(ns.metrics, ns.warmup, ns.exit_after_train, ns.profile)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
