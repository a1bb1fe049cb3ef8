"""Step d, engine throughput: `gradcam-serve bench` (explain at layer4) beside PyTorch eager
forward-only and pytorch-grad-cam's GradCAM, at the same batches and precisions."""

import json
import subprocess
import time

import numpy as np
import torch

import torchref

from .context import Failed, empty_cache, tail, tf32
from .weights import DTYPES, model_in


def measure(fn, batch, seconds, sync, warm_up):
    """Images per second of fn() over about `seconds` after `warm_up` calls, with per-call
    latency; each call is synchronised."""
    for _ in range(warm_up):
        fn()
        sync()
    times = []
    start = time.perf_counter()
    while not times or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    total = time.perf_counter() - start
    ms = np.array(times) * 1e3
    return {"batch": batch, "iterations": len(times), "images_per_s": len(times) * batch / total,
            "batch_ms_p50": float(np.percentile(ms, 50)),
            "batch_ms_p99": float(np.percentile(ms, 99))}


def batch_input(ctx, precision, batch):
    """A seeded random batch on the device, in `precision` (channels-last below fp32)."""
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch))
    x = x.to(ctx.device, DTYPES[precision])
    if precision != "fp32":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def run_bench(ctx, precision, seconds):
    """`gradcam-serve bench`, its JSON document."""
    path = ctx.tmp / f"bench-{precision}.json"
    argv = [ctx.binary(), "bench", "--weights", str(ctx.weights), "--device", ctx.device,
            "--precision", precision, "--batches", ",".join(map(str, ctx.plan.batches)),
            "--seconds", str(seconds), "--json", str(path)]
    # Each batch size: explain for `seconds`, then forward-only for half as long.
    wanted = 60 + len(ctx.plan.batches) * (1.5 * seconds + 5) * (3 if ctx.device == "cpu" else 1)
    out = ctx.run(argv, wanted)
    if out.returncode != 0 or not path.exists():
        raise RuntimeError(f"bench --precision {precision} exited {out.returncode}: "
                           f"{tail(out.stderr)}")
    return json.loads(path.read_text())


def eager_forward(ctx, model, precision, batch, seconds):
    x = batch_input(ctx, precision, batch)

    def forward():
        with torch.no_grad():
            model(x)

    return measure(forward, batch, seconds, ctx.sync, ctx.plan.warm_up)


def grad_cam_rate(ctx, model, precision, batch, seconds):
    """pytorch-grad-cam's GradCAM at layer4 as a user calls it (full backward, maps resized to
    the input on the CPU); the error instead where it fails in this dtype."""
    methods, Target, _ = torchref.grad_cam()
    x = batch_input(ctx, precision, batch)
    cam = methods["gradcam"](model=model, target_layers=[model.layer4[-1]])
    targets = [Target(i) for i in range(batch)]
    try:
        return measure(lambda: cam(input_tensor=x, targets=targets), batch, seconds, ctx.sync,
                       ctx.plan.warm_up)
    except Exception as e:  # noqa: BLE001 - recorded as pytorch-grad-cam's limitation
        return {"batch": batch, "error": f"{type(e).__name__}: {str(e).splitlines()[0]}"}
    finally:
        cam.activations_and_grads.release()
        model.zero_grad(set_to_none=True)


def engine(ctx):
    plan, clock = ctx.plan, ctx.clock
    s = plan.bench_seconds
    if ctx.device == "cuda":
        torch.backends.cudnn.benchmark = True
    result = {"seconds_per_point": s, "batches": plan.batches, "precisions": {},
              "pytorch_settings": {"cudnn_benchmark": torch.backends.cudnn.benchmark,
                                   "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                                   "channels_last": "bf16 and fp16",
                                   "warm_up_calls": plan.warm_up}}
    problems = []
    # On the CPU a point costs more than its seconds (a warm-up call is a whole batch).
    point = s + (1.0 if ctx.device == "cuda" else 2.5)
    reserve = plan.service_cost()  # the first service run matters more than the last engine
    for precision in plan.precisions:
        rec = result["precisions"][precision] = {}
        # bench (explain, then its own forward for half as long), eager, pytorch-grad-cam.
        cost = plan.start_s + (2.5 * len(plan.batches) + len(plan.grad_cam_batches)) * point
        if not clock.afford(cost, reserve):
            rec["skipped"] = f"time budget ({clock.left():.0f} s left, about {cost:.0f} s needed)"
            ctx.report.note(f"engine {precision} skipped: {rec['skipped']}")
            continue
        try:
            rec["engine"] = run_bench(ctx, precision, s)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            rec["engine_error"] = str(e)
            problems.append(f"bench {precision}")
        model = model_in(ctx, precision)
        rec["eager_forward"] = [eager_forward(ctx, model, precision, b, s) for b in plan.batches]
        if ctx.device == "cuda" and precision == "fp32" and clock.afford(
                len(plan.batches) * point, reserve + 60):
            # The same with TF32 off: fp32 as the parity reference computes it.
            with tf32(False):
                rec["eager_forward_strict_fp32"] = [eager_forward(ctx, model, precision, b, s)
                                                    for b in plan.batches]
        rec["grad_cam"] = []
        for b in plan.grad_cam_batches:
            if not clock.afford(point, reserve):
                rec["grad_cam"].append({"batch": b, "skipped": "time budget"})
                continue
            rec["grad_cam"].append(grad_cam_rate(ctx, model, precision, b, s))
            if "error" in rec["grad_cam"][-1]:
                break  # the same dtype fails the same way at every batch
        del model
        empty_cache(ctx)
        rec["ratios"] = engine_ratios(rec)
        ctx.report.save()
    torch.backends.cudnn.benchmark = False
    ctx.engine = result
    if problems:
        raise Failed("; ".join(problems) + " failed", result)
    return result


def engine_ratios(rec):
    """engine / eager forward (and engine / pytorch-grad-cam) per batch. In fp32 on a GPU the
    eager figure is PyTorch's with TF32 off where it was measured, since the binary never uses
    TF32; the ratio against PyTorch's default (TF32 on) is kept beside it."""
    engine = {r["batch"]: r for r in (rec.get("engine") or {}).get("results", [])}
    default = {r["batch"]: r for r in rec.get("eager_forward", [])}
    strict = {r["batch"]: r for r in rec.get("eager_forward_strict_fp32", [])}
    eager = strict or default
    cam = {r["batch"]: r for r in rec.get("grad_cam", []) if "images_per_s" in r}
    out = []
    for b, e in sorted(engine.items()):
        row = {"batch": b}
        if b in eager:
            row["vs_eager_forward"] = e["images_per_s"] / eager[b]["images_per_s"]
        if strict and b in default:
            row["vs_eager_forward_tf32"] = e["images_per_s"] / default[b]["images_per_s"]
        if b in cam:
            row["vs_grad_cam"] = e["images_per_s"] / cam[b]["images_per_s"]
        out.append(row)
    return out
