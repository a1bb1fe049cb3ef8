"""Step a, environment: torch, CUDA, the GPU and its driver, the CPUs, the binaries' versions and
the kit's manifest."""

import json
import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch
import torchvision

from .context import tail
from .probes import meminfo, nvidia_smi


def environment(ctx):
    env = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": torch.cuda.is_available(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(meminfo("MemTotal") / 2**20, 1),
        "libtorch_dir": str(Path(torch.__file__).resolve().parent / "lib"),
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=p.name, gpu_capability=f"{p.major}.{p.minor}",
                   gpu_memory_gib=round(p.total_memory / 2**30, 1))
    rows = nvidia_smi("name,driver_version,memory.total,power.limit")
    if rows:
        env["nvidia_smi"] = {"name": rows[0][0], "driver": rows[0][1],
                             "memory_total_mib": rows[0][2], "power_limit_w": rows[0][3]}
    if ctx.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda, but PyTorch sees no CUDA device")
    out = ctx.run([ctx.binary(), "--version"], 60)
    env["gradcam_serve_version"] = (out.stdout or out.stderr).strip()
    if out.returncode != 0:
        raise RuntimeError(f"gradcam-serve --version failed ({out.returncode}): "
                           f"{tail(out.stderr)}")
    if Path(ctx.binary("gradcam-load")).exists():
        out = ctx.run([ctx.binary("gradcam-load"), "--version"], 30)
        env["gradcam_load_version"] = (out.stdout or out.stderr).strip().splitlines()[0] \
            if out.returncode == 0 else "(no --version)"
    manifest = ctx.kit / "manifest.json"
    if manifest.exists():
        env["kit_manifest"] = json.loads(manifest.read_text())
    return env
