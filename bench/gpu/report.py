"""Derived figures (rates, MFU, ratios to the stock baseline) and the Markdown table of a benchmark.

Why: one place defines what each column means, so results.json, results.md and bench/results/gpu.md agree.
"""

from __future__ import annotations

from typing import Any

from qwenvl_roi.families import family

GIB = 1024**3


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a is not None and b else None


def summarise(results: list[dict[str, Any]], peak_tflops: float | None) -> list[dict[str, Any]]:
    """Add rates per second of the timed window, MFU against `peak_tflops` and the cost ratio of each run
    to the stock phase-1 run (seconds per sample, run / stock; phase-1 LoRA is the like-for-like one)."""
    rows = []
    for r in results:
        row = dict(r)
        if r.get("status") == "ok":
            s = r["measured_seconds"]
            tflops = r["model_flops"] / s / 1e12
            per_step = r["samples"] / r["measured_steps"]
            waits = sorted(r.get("data_wait_seconds") or [0.0])
            row["median_data_wait_s"] = (waits[(len(waits) - 1) // 2] + waits[len(waits) // 2]) / 2
            row.update(
                samples_per_s=r["samples"] / s,
                samples_per_s_median=per_step / r["median_step_seconds"]
                if r.get("median_step_seconds")
                else None,
                text_tokens_per_s=r["text_tokens"] / s,
                vision_tokens_per_s=r["vision_tokens"] / s,
                patches_per_s=r["patches"] / s,
                model_tflops_per_s=tflops,
                mfu=tflops / peak_tflops if peak_tflops else None,
                peak_allocated_gib=r["peak_allocated_bytes"] / GIB if r.get("peak_allocated_bytes") else None,
                peak_reserved_gib=r["peak_reserved_bytes"] / GIB if r.get("peak_reserved_bytes") else None,
            )
        rows.append(row)
    stock = next((r for r in rows if r["run"] == "stock_p1_lora" and r.get("status") == "ok"), None)
    for row in rows:
        if stock is not None and row.get("status") == "ok" and row is not stock:
            row["cost_ratio_vs_stock"] = _ratio(stock["samples_per_s"], row["samples_per_s"])
            row["cost_ratio_vs_stock_median"] = _ratio(
                stock.get("samples_per_s_median"), row.get("samples_per_s_median")
            )
            row["peak_reserved_ratio_vs_stock"] = _ratio(
                row.get("peak_reserved_gib"), stock.get("peak_reserved_gib")
            )
    return rows


def _fmt(v: Any, spec: str) -> str:
    if v is None:
        return "-"
    return format(v, spec)


def markdown_table(report: dict[str, Any]) -> str:
    """The human-readable result: machine, settings, one row per run, and the definitions."""
    m, st, inp = report["machine"], report["settings"], report["inputs"]
    lines = [
        f"# GPU phases benchmark: {family(inp['model'].get('family', 'qwen2_5_vl')).display_name} "
        f"{st['shape']} shape (random weights)",
        "",
        f"- device: {m['device']}; dense bf16 peak used for MFU: "
        f"{_fmt(m['peak_bf16_tflops'], '.1f')} TFLOP/s",
        f"- host: {m['nproc']} CPUs, {m['cpu']}; python {m['python']}, torch {m['torch']}, "
        f"transformers {m['transformers']}, peft {m['peft']}, llamafactory {m['llamafactory']}, "
        f"bitsandbytes {m['bitsandbytes']}",
        f"- model: {inp['model']['params'] / 1e6:,.1f} M parameters ({inp['model']['dtype']}), built in "
        f"{inp['model']['total_s']} s",
        f"- data: {inp['image_size'][0]}x{inp['image_size'][1]} images (model sees "
        f"{inp['model_view_size'][0]}x{inp['model_view_size'][1]}), {inp['n_regions']} candidate regions, "
        f"prompts in '{inp['prompt_language']}'",
        f"- timing: {st['warmup']} warm-up optimizer steps, then {st['steps']} timed steps; "
        f"batch {st['batch']} x accumulation {st['accum']} unless a run overrides it; "
        f"total {report['total_s']} s",
        "",
        "| run | status | batch x accum | samples/s | median step s | data wait s | text tok/s "
        "| vision tok/s | model TFLOP/s | MFU | peak alloc GiB | peak reserved GiB | trainable M "
        "| cost vs stock (mean / median) | vision backprop | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        ok = r.get("status") == "ok"
        bxa = f"{r['per_device_train_batch_size']}x{r['gradient_accumulation_steps']}" if ok else "-"
        lines.append(
            "| "
            + " | ".join(
                [
                    r["run"],
                    r["status"],
                    bxa,
                    _fmt(r.get("samples_per_s"), ".3f"),
                    _fmt(r.get("median_step_seconds"), ".2f"),
                    _fmt(r.get("median_data_wait_s"), ".3f"),
                    _fmt(r.get("text_tokens_per_s"), ".0f"),
                    _fmt(r.get("vision_tokens_per_s"), ".0f"),
                    _fmt(
                        r.get("model_tflops_per_s"), ".1f" if ok and r["model_tflops_per_s"] >= 1 else ".4f"
                    ),
                    _fmt(r.get("mfu") * 100 if r.get("mfu") is not None else None, ".1f")
                    + ("%" if r.get("mfu") else ""),
                    _fmt(r.get("peak_allocated_gib"), ".2f"),
                    _fmt(r.get("peak_reserved_gib"), ".2f"),
                    _fmt(r["params_trainable"] / 1e6 if ok else None, ".2f"),
                    _fmt(r.get("cost_ratio_vs_stock"), ".3f")
                    + " / "
                    + _fmt(r.get("cost_ratio_vs_stock_median"), ".3f"),
                    {True: "yes", False: "no"}.get(r.get("vision_backprop"), "-"),
                    _fmt(r.get("wall_s"), ".0f"),
                ]
            )
            + " |"
        )
    lines += [
        "",
        "Definitions: rates are over the timed steps only (CUDA-synchronised wall clock between the end "
        "of the last warm-up step and the end of the last step). Text tokens = real (unpadded) tokens minus "
        "image placeholder tokens; vision tokens = image tokens the language model sees (after the 2x2 "
        "merge of 14-pixel patches for Qwen2.5-VL, 16-pixel for Qwen3-VL). "
        "Model FLOPs count the forward pass plus the gradients the configuration needs (weight gradients of "
        "trainable weights, input gradients above the lowest trainable module), not the recomputation of "
        "gradient checkpointing (bench/gpu/flops.py). Peak memory: torch.cuda.max_memory_allocated / "
        "max_memory_reserved over the whole process (load, warm-up and timed steps). Cost vs stock: seconds "
        "per sample of the run divided by the stock phase-1 LoRA run's, over the timed window (mean) and "
        "from the median timed step (robust to one slow step). Data wait: median time between the end of a "
        "step and the next forward (the trainer waiting for its batch). Vision backprop: whether autograd "
        "records the vision tower's first block (its backward then runs even when no vision weight is "
        "trainable).",
        "",
    ]
    return "\n".join(lines)
