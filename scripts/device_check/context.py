"""What the device check's steps share: the plan of one mode, the clock against its budget, the
context handed to every step (paths, the reference network, the binaries' environment), the
exception a step raises when a check in it fails, and small helpers (a program's output tail,
cuDNN's TF32 switch, the CUDA cache).
"""

import contextlib
import os
import re
import subprocess
import time
from pathlib import Path

import torch


class Plan:
    """What one mode measures, and how long the whole check may take."""

    def __init__(self, device, small):
        gpu = device == "cuda"
        # The CPU always runs the small plan; --small on a GPU is a quick look.
        small = small or not gpu
        self.small = small
        self.precisions = ["fp32", "bf16", "fp16"] if gpu else ["fp32", "bf16"]
        self.batches = [1, 8] if small else [1, 8, 32, 64, 128]
        self.bench_seconds = 2 if small else 3
        # pytorch-grad-cam at every batch, or at batch 1 only in the small plan.
        self.grad_cam_batches = [1] if small else self.batches
        self.service_precisions = ["bf16", "fp32"] if gpu else ["fp32", "bf16"]
        self.concurrency = [4, 16] if small else [16, 64, 256]
        self.load_seconds = 5 if small else 8
        # gradcam-load's client threads: enough that the load generator is not the limit.
        self.load_threads = 2 if small else 4
        self.max_batch = 64 if gpu else 8
        self.batch_delay_ms = 2 if gpu else 0
        # Parity pictures (of the kit's photographs, in name order).
        self.pictures = 4 if small else 6
        # Seconds from launch to ready of a binary on this device, for the estimates.
        self.start_s = 20 if gpu else 8
        # Warm-up calls before a measurement (on a GPU the first picks cuDNN's algorithms).
        self.warm_up = 2 if gpu else 1
        # Everything in 7.5 minutes on a GPU (gpu-check.sh must end within 8); under 4 in the
        # small plan on a 2-core CPU.
        self.budget_s = 215.0 if small else 450.0

    def service_cost(self, files=2):
        """About how long the service step takes for one precision."""
        runs = files * len(self.concurrency)
        return self.start_s + files * 3 + runs * (self.load_seconds + 1.5)


class Clock:
    """Seconds since the check started (gpu-check.sh passes its own start) against a budget."""

    def __init__(self, started, budget_s):
        self.started = started
        self.budget_s = budget_s

    def elapsed(self):
        return time.time() - self.started

    def left(self):
        return self.budget_s - self.elapsed()

    def afford(self, cost_s, reserve_s=0.0):
        return self.elapsed() + cost_s + reserve_s <= self.budget_s

    def timeout(self, wanted_s):
        """A subprocess timeout: what it needs, but never far past the budget."""
        return max(30.0, min(wanted_s, self.left() + 30.0))


class Failed(Exception):
    """A step ran but a check in it failed; its result is kept."""

    def __init__(self, message, result):
        super().__init__(message)
        self.result = result


class Ctx:
    """What the steps share."""

    def __init__(self, args, plan, clock, report, tmp):
        self.args = args
        self.plan = plan
        self.clock = clock
        self.report = report
        self.tmp = tmp
        self.device = args.device
        self.kit = args.kit
        self.bin = args.bin
        self.children = []  # processes to stop if the hard limit strikes
        self.model = None  # the fp32 reference network on the device
        self.weights = None
        self.crops = {}  # picture name -> 224x224 RGB uint8 array
        self.crop_dir = None
        self.engine = None
        self.service = None

    def binary(self, name="gradcam-serve"):
        return str(self.bin / name)

    def env(self):
        """The binaries' environment: libtorch from this Python's torch first on the path."""
        env = dict(os.environ)
        lib = str(Path(torch.__file__).resolve().parent / "lib")
        rest = env.get("LD_LIBRARY_PATH", "")
        if lib not in rest.split(":"):
            env["LD_LIBRARY_PATH"] = lib + (":" + rest if rest else "")
        return env

    def run(self, argv, wanted_s, **kw):
        """Runs a binary to completion, output captured; a timeout kills it."""
        return subprocess.run(argv, capture_output=True, text=True, env=self.env(),
                              timeout=self.clock.timeout(wanted_s), **kw)

    def sync(self):
        if self.device == "cuda":
            torch.cuda.synchronize()


def tail(text, lines=15):
    """The last lines of a program's output, without terminal colours."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text or "")
    return "\n".join(text.strip().splitlines()[-lines:])


@contextlib.contextmanager
def tf32(allowed):
    """cuDNN's TF32 for fp32 convolutions, on by default in PyTorch and libtorch alike (on
    Ampere and later GPUs fp32 convolutions then round their inputs to 10 mantissa bits)."""
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = before


def empty_cache(ctx):
    """Hands PyTorch's cached CUDA memory back, so that the binaries find it free."""
    if ctx.device == "cuda":
        torch.cuda.empty_cache()
