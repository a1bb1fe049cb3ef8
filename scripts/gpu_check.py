"""The device check: the release binary against PyTorch on the machine it runs on.

Runs from the kit that scripts/device-bundle.sh assembles (scripts/gpu-check.sh starts it, with
libtorch and the carried wheels on the paths), on a GPU, or briefly on the CPU (the small plan,
which --small also chooses on a GPU):

a. environment: torch, CUDA, the GPU and its driver, the CPUs, the binary's version;
b. weights: a seeded random ResNet-50 (every batch-norm statistic randomised: the network of
   tests/reference.py, from the shared torchref.py, under another seed), saved as
   .safetensors for the binary;
c. parity: `gradcam-serve explain` on 224x224 crops of the photographs (the binary's resize is
   then the identity) in fp32, bf16 and fp16, against PyTorch's logits and raw Grad-CAM maps at
   layer4 in fp32; PyTorch's own bf16/fp16 beside the binary's; fp16 refused on the CPU;
d. engine throughput: `gradcam-serve bench` (explain at layer4) beside PyTorch eager
   forward-only and pytorch-grad-cam's GradCAM, same batches and precisions;
e. the service over HTTP on loopback: `gradcam-serve serve` under `gradcam-load` with a 224 px
   and a 1 MP JPEG at several concurrencies, with the server's CPU, memory, batch sizes and the
   GPU's memory and utilisation around each run;
f. the performance goals, as PASS / FAIL / NOT-MEASURED.

Writes OUT/gpu-report.md (tables) and OUT/gpu-report.json (every figure, each step's status),
both rewritten after every step so that a run cut short still leaves what it measured. A
running clock skips optional measurements that would overrun the budget (7.5 minutes on a GPU,
3.5 in the small plan): parity always runs first, then the engine (keeping room for the first
service run), then the service. Exit status 1 when parity fails or a step fails or crashes; a
missed performance goal is reported, not an error.

This file is the entry point: the run's plan, budget and report come together here, each step
lives in its own module of device_check/ (environment, weights, parity, engine, service, goals;
context, probes, report and markdown beside them), and the PyTorch side shared with the
reference scripts is torchref.py, which the kit carries beside this file and the repository
keeps in tests/.

Usage: python gpu_check.py [--kit KIT] [--bin DIR] [--device cuda|cpu] [--small] [--out DIR]
                           [--steps parity,engine,service] [--budget SECONDS]
"""

import argparse
import datetime
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# torchref.py: beside this file in the kit; in the repository, with the scripts in tests/ that
# make the references (appended, so that nothing there shadows an installed package).
if not (HERE / "torchref.py").exists():
    sys.path.append(str(HERE.parent / "tests"))

import torch  # noqa: E402

from device_check.context import Clock, Ctx, Plan  # noqa: E402
from device_check.engine import engine  # noqa: E402
from device_check.environment import environment  # noqa: E402
from device_check.goals import goals  # noqa: E402
from device_check.parity import parity  # noqa: E402
from device_check.report import Report  # noqa: E402
from device_check.service import service  # noqa: E402
from device_check.weights import weights  # noqa: E402


def watchdog(ctx, hard_limit_s):
    """Past the hard limit: stop the children, write what there is, exit 1."""
    def fire():
        if ctx.clock.elapsed() < hard_limit_s:
            return
        for p in ctx.children:
            if p.poll() is None:
                p.kill()
        try:
            ctx.report.note(f"hard limit of {hard_limit_s:.0f} s reached: stopped")
            ctx.report.data["overall"] = "FAIL (hard time limit)"
            ctx.report.save()
        finally:
            os._exit(1)

    def loop():
        while True:
            time.sleep(1.0)
            fire()

    threading.Thread(target=loop, daemon=True).start()


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kit", type=Path, default=HERE, help="the kit directory (default: here)")
    p.add_argument("--bin", type=Path, help="directory of the binaries (default: KIT/bin)")
    p.add_argument("--device", choices=["cuda", "cpu"],
                   help="default: cuda when PyTorch sees one, else cpu")
    p.add_argument("--small", action="store_true",
                   help="the short plan (batches 1 and 8, fewer clients; always on the CPU)")
    p.add_argument("--out", type=Path,
                   help="report directory (default: $OUT, else ./gpu-report)")
    p.add_argument("--started", type=float, help="start of the check, in epoch seconds")
    p.add_argument("--budget", type=float, help="seconds for the whole check")
    p.add_argument("--steps", default="parity,engine,service",
                   help="comma-separated steps after environment and weights")
    a = p.parse_args()
    a.kit = a.kit.resolve()
    a.bin = (a.bin or a.kit / "bin").resolve()
    a.device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    a.out = (a.out or Path(os.environ.get("OUT") or "gpu-report")).resolve()
    a.started = a.started or time.time()
    return a


def main():
    args = parse_args()
    plan = Plan(args.device, args.small)
    if args.budget:
        plan.budget_s = args.budget
    args.out.mkdir(parents=True, exist_ok=True)
    data = {
        "started": datetime.datetime.fromtimestamp(args.started, datetime.timezone.utc)
        .isoformat(timespec="seconds"),
        "started_epoch": args.started,
        "args": {"device": args.device, "small": plan.small, "kit": str(args.kit),
                 "budget_s": plan.budget_s, "steps": args.steps},
        "plan": {k: v for k, v in vars(plan).items()},
        "steps": {},
        "notes": [],
    }
    report = Report(args.out, data)
    clock = Clock(args.started, plan.budget_s)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        ctx = Ctx(args, plan, clock, report, Path(tmp))
        watchdog(ctx, plan.budget_s + (45 if plan.small else 30))
        wanted = set(args.steps.split(","))
        report.step("environment", environment, ctx)
        if report.step("weights", weights, ctx) is not None:
            for name, fn in (("parity", parity), ("engine", engine), ("service", service)):
                if name in wanted:
                    report.step(name, fn, ctx)
        try:
            data["goals"] = goals(ctx)
        except Exception as e:  # noqa: BLE001 - the goals are a summary; the steps stand
            report.note(f"goals could not be evaluated: {type(e).__name__}: {e}")
        for p in ctx.children:
            if p.poll() is None:
                p.kill()
    bad = [k for k, v in data["steps"].items() if v["status"] in ("failed", "crashed")]
    data["overall"] = f"FAIL ({', '.join(bad)})" if bad else "PASS"
    report.save()
    print((args.out / "gpu-report.md").read_text())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
