"""The device check: the release binary against PyTorch on the machine it runs on.

Runs from the kit that scripts/device-bundle.sh assembles (scripts/gpu-check.sh starts it, with
libtorch and the carried wheels on the paths), on a GPU, or briefly on the CPU (the small plan,
which --small also chooses on a GPU):

a. environment: torch, CUDA, the GPU and its driver, the CPUs, the binary's version;
b. weights: a seeded random ResNet-50 (every batch-norm statistic randomised, as
   tests/reference.py does), saved as .safetensors for the binary;
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

Usage: python gpu_check.py [--kit KIT] [--bin DIR] [--device cuda|cpu] [--small] [--out DIR]
                           [--steps parity,engine,service] [--budget SECONDS]
"""

import argparse
import contextlib
import copy
import datetime
import functools
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import types
import urllib.request
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SEED = 0
# fp32 parity: logits and maps within this fraction of their scale (max |logit|, max |map|).
FP32_TOLERANCE = {"cuda": 1e-4, "cpu": 1e-5}
# Reduced precision against the fp32 reference: the top-1 class must agree wherever fp32's
# top-1 margin (the lead of the best logit over the second, as a fraction of max |logit|)
# exceeds MARGIN (the bound tests/precision.rs uses and justifies), and the top-1 class's map
# must stay within this fraction of the map's maximum.
MARGIN = 0.1
MAP_LIMIT = {"bf16": 0.1, "fp16": 0.05}
# fp32 maps at layer2 against PyTorch fp32: on the CPU each differs from float64 by up to 3e-3
# there (tests/parity.rs), so up to about 6e-3 from each other.
DEEP_FP32 = 1e-2
GOALS = {
    "engine_vs_eager": 0.9,
    "engine_bf16_batch64": 3000.0,
    "service_224": 2000.0,
    "service_1mp": 600.0,
    "service_p99_ms": 250.0,
}


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


class Report:
    """The JSON document and its Markdown rendering, saved after every step."""

    def __init__(self, out, data):
        self.out = out
        self.data = data
        self.lock = threading.Lock()

    def step(self, name, fn, *args):
        """Runs one step, records its status, result and duration, saves; returns the result
        (None when it crashed)."""
        rec = {"status": "running"}
        self.data["steps"][name] = rec
        t = time.monotonic()
        print(f"gpu-check: {name} ...", file=sys.stderr, flush=True)
        result = None
        try:
            result = fn(*args)
            rec["status"] = "ok"
        except Failed as e:
            result = e.result
            rec.update(status="failed", error=str(e))
        except Exception as e:  # noqa: BLE001 - every crash is recorded, the check goes on
            rec.update(status="crashed", error=f"{type(e).__name__}: {e}",
                       traceback=traceback.format_exc())
        rec["seconds"] = round(time.monotonic() - t, 1)
        if result is not None:
            rec["result"] = result
        print(f"gpu-check: {name} {rec['status']} in {rec['seconds']} s"
              + (f": {rec['error']}" if "error" in rec else ""), file=sys.stderr, flush=True)
        self.save()
        return result

    def note(self, text):
        self.data["notes"].append(text)
        print(f"gpu-check: {text}", file=sys.stderr, flush=True)

    def save(self):
        with self.lock:
            self.data["elapsed_s"] = round(time.time() - self.data["started_epoch"], 1)
            tmp = self.out / ".gpu-report.json.partial"
            tmp.write_text(json.dumps(self.data, indent=1, default=str))
            tmp.replace(self.out / "gpu-report.json")
            tmp = self.out / ".gpu-report.md.partial"
            tmp.write_text(render_markdown(self.data))
            tmp.replace(self.out / "gpu-report.md")


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


# ---------------------------------------------------------------------------------------------
# a. Environment


def nvidia_smi(query, what="--query-gpu"):
    """Rows of `nvidia-smi --query-...=FIELDS --format=csv,noheader,nounits`, or None."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", f"{what}={query}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return [[c.strip() for c in line.split(",")] for line in out.stdout.strip().splitlines()
            if line.strip()]


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


def meminfo(key):
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


# ---------------------------------------------------------------------------------------------
# b. Seeded weights (and the parity crops they are decorrelated on)


def photographs(kit):
    return sorted(p for p in (kit / "photos").iterdir()
                  if p.suffix.lower() in (".png", ".jpg", ".jpeg"))


def square_crop(path, side=224):
    """The picture's centre square, resized to side x side, as RGB uint8."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    s = min(w, h)
    box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    return np.asarray(img.crop(box).resize((side, side), Image.Resampling.BICUBIC))


def to_input(pixels, device):
    """(pixels / 255 - mean) / std in float32, NCHW, batch of one."""
    x = (pixels.astype(np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None].to(device)


def seeded_resnet50():
    """torchvision's ResNet-50 with seeded random weights; every batch-norm statistic
    randomised so that no layer is an identity, the last one of each residual branch small so
    that activations stay in a sane range (as tests/reference.py makes its network)."""
    torch.manual_seed(SEED)
    model = torchvision.models.resnet50()
    g = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                scale = 0.2 if name.endswith("bn3") else 1.0
                m.weight.copy_(scale * (0.5 + torch.rand(n, generator=g)))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                m.num_batches_tracked.fill_(1000)
        model.fc.weight.copy_(0.05 * torch.randn(model.fc.weight.shape, generator=g))
        model.fc.bias.copy_(0.05 * torch.randn(model.fc.bias.shape, generator=g))
    return model.eval()


def decorrelate_classifier(model, inputs):
    """Gives each photograph its own top class and logits of a few units (tests/reference.py
    explains why): the classifier's rows lose the component shared by all pooled features."""
    with torch.no_grad():
        feats = []
        hook = model.avgpool.register_forward_hook(lambda m, i, o: feats.append(o.flatten(1)))
        model(torch.cat(inputs))
        hook.remove()
        f = feats[0].mean(dim=0)
        w = model.fc.weight
        w -= torch.outer(w @ f, f) / (f @ f)
        w *= 20.0


def weights(ctx):
    ctx.crop_dir = ctx.tmp / "crops"
    ctx.crop_dir.mkdir()
    for path in photographs(ctx.kit)[:ctx.plan.pictures]:
        pixels = square_crop(path)
        ctx.crops[path.stem] = pixels
        Image.fromarray(pixels).save(ctx.crop_dir / f"{path.stem}.png")
    if not ctx.crops:
        raise RuntimeError(f"no photographs in {ctx.kit / 'photos'}")
    model = seeded_resnet50()
    decorrelate_classifier(model, [to_input(p, "cpu") for p in ctx.crops.values()])
    ctx.weights = ctx.tmp / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ctx.weights))
    ctx.model = model.to(ctx.device)
    return {"seed": SEED, "file_bytes": ctx.weights.stat().st_size,
            "pictures": sorted(ctx.crops), "crop": "centre square, bicubic to 224x224, PNG"}


# ---------------------------------------------------------------------------------------------
# pytorch-grad-cam without its heavy imports


@functools.cache
def import_grad_cam():
    """pytorch-grad-cam's GradCAM and ClassifierOutputTarget, and the packages stood in for.

    The package imports matplotlib, scipy and scikit-learn at module level for helpers this
    check never calls (plots, 3-D resizing, sparse metrics, factorisation); where they are
    missing (the GPU machine lacks them), an importer placed after the real ones answers for
    them and every submodule while pytorch-grad-cam is imported, so that no heavy wheel travels
    in the kit. A stand-in's attributes raise when called. Afterwards the stand-ins leave
    sys.modules, so that no other library takes them for the real packages.
    """
    import importlib.util

    missing = [n for n in ("matplotlib", "scipy", "sklearn")
               if n not in sys.modules and importlib.util.find_spec(n) is None]
    finder = StandIn(missing)
    sys.meta_path.append(finder)
    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    finally:
        sys.meta_path.remove(finder)
        for name in [m for m in sys.modules if m.split(".")[0] in finder.names]:
            del sys.modules[name]
    return GradCAM, ClassifierOutputTarget, missing


class StandIn:
    """An importer of empty packages for the given top-level names (and anything below them);
    their attributes are functions that raise."""

    def __init__(self, names):
        self.names = set(names)

    def find_spec(self, name, path=None, target=None):
        import importlib.util

        if name.split(".")[0] in self.names:
            return importlib.util.spec_from_loader(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        module.__getattr__ = _absent(module.__name__)


def _absent(module):
    def attribute(name):
        if name.startswith("__"):
            raise AttributeError(name)

        def absent(*args, **kwargs):
            raise RuntimeError(f"{module}.{name} is not installed (stood in for the import)")

        return absent

    return attribute


# ---------------------------------------------------------------------------------------------
# c. Parity


STAGES = ("layer1", "layer2", "layer3", "layer4")


def torch_cam(model, x, classes, top=0, layer="layer4"):
    """Logits and raw Grad-CAM maps at `layer` (before ReLU: mean gradient per channel times
    the activations, summed over channels) for each class and the `top` best, computed in the
    model's dtype and returned as float32 numpy. The trunk up to `layer` runs without a graph
    and gradients flow from the logit to `layer` only, so one forward pass serves every class;
    the operations are those of torchvision's ResNet.forward."""
    cut = STAGES.index(layer) + 1
    with torch.no_grad():
        a = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        for stage in STAGES[:cut]:
            a = getattr(model, stage)(a)
    a.requires_grad_(True)
    with torch.enable_grad():
        h = a
        for stage in STAGES[cut:]:
            h = getattr(model, stage)(h)
        logits = model.fc(torch.flatten(model.avgpool(h), 1))
        best = logits[0].detach().float().topk(top).indices.tolist() if top else []
        maps = {}
        for c in dict.fromkeys([*classes, *best]):
            (g,) = torch.autograd.grad(logits[0, c], a, retain_graph=True)
            w = g.mean(dim=(2, 3))
            maps[c] = (w[:, :, None, None] * a).sum(dim=1)[0].float().detach().cpu().numpy()
    return logits[0].detach().float().cpu().numpy(), maps


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


class TorchSide:
    """One PyTorch model's logits and maps per picture, computed as classes are asked for;
    the first request for a picture also computes its top-5 classes' maps."""

    def __init__(self, model, dtype, ctx, allow_tf32=False, layer="layer4", top=5):
        self.model, self.dtype, self.ctx = model, dtype, ctx
        self.allow_tf32, self.layer, self.top = allow_tf32, layer, top
        self.logits, self.maps = {}, {}

    def _input(self, name):
        x = to_input(self.ctx.crops[name], self.ctx.device).to(self.dtype)
        if self.dtype != torch.float32:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def get(self, name, classes):
        have = self.maps.setdefault(name, {})
        first = name not in self.logits
        missing = [c for c in classes if c not in have]
        if first or missing:
            with tf32(self.allow_tf32):
                logits, maps = torch_cam(self.model, self._input(name), missing,
                                         self.top if first else 0, self.layer)
            self.logits.setdefault(name, logits)
            have.update(maps)
        return self.logits[name], {c: have[c] for c in classes}


def softmax(v):
    e = np.exp(v - v.max())
    return e / e.sum()


def run_explain(ctx, precision, outdir, layer="layer4", top_k=5):
    """`gradcam-serve explain` on the crops, batch 1 (as the reference), JSON only."""
    argv = [ctx.binary(), "explain", str(ctx.crop_dir), "--weights", str(ctx.weights),
            "--device", ctx.device, "--precision", precision, "--top-k", str(top_k),
            "--batch-size", "1", "--no-overlay", "--layer", layer, "--out", str(outdir),
            "--quiet"]
    return ctx.run(argv, 300)


def compare(ref, name, doc):
    """The binary's answer for one picture against a PyTorch side: logits at the binary's
    top-5 indices relative to max |logit|, each explained class's raw map relative to the
    reference map's max |value|."""
    preds = doc["predictions"]
    classes = [int(e["class_index"]) for e in doc["explanations"]]
    logits, maps = ref.get(name, classes)
    scale = float(np.abs(logits).max())
    logit_diff = max(abs(float(p["logit"]) - float(logits[int(p["index"])])) for p in preds)
    prob = softmax(logits.astype(np.float64))
    order = np.argsort(-prob)
    out = {
        "top1": int(preds[0]["index"]),
        "ref_top1": int(order[0]),
        "ref_margin": float((logits[order[0]] - logits[order[1]]) / scale),
        "top5": [int(p["index"]) for p in preds[:5]],
        "ref_top5": [int(i) for i in order[:5]],
        "logit_scale": scale,
        "logit_diff": logit_diff / scale,
        "maps": {},
    }
    for e in doc["explanations"]:
        c = int(e["class_index"])
        hm = e["heatmap"]
        got = np.asarray(hm["data"], dtype=np.float32).reshape(hm["height"], hm["width"])
        want = maps[c]
        if got.shape != want.shape:
            raise RuntimeError(f"{name}: map of class {c} is {got.shape}, PyTorch's {want.shape}")
        d = np.abs(got - want) / max(float(np.abs(want).max()), 1e-12)
        out["maps"][c] = {"max": float(d.max()), "mean": float(d.mean())}
    return out


def reduced_summary(rows, limit=None):
    """A side's agreement with the fp32 reference, from compare()'s rows; with a map limit,
    whether a reduced precision passes."""
    disagree = [n for n, r in rows.items() if r["top1"] != r["ref_top1"]]
    decisive = [n for n in disagree if rows[n]["ref_margin"] > MARGIN]
    top_maps = {n: r["maps"].get(r["ref_top1"]) for n, r in rows.items()}
    measured = {n: m for n, m in top_maps.items() if m is not None}
    worst = max((m["max"] for m in measured.values()), default=None)
    out = {
        "top1_agree": len(rows) - len(disagree),
        "pictures": len(rows),
        "top1_disagree_decisive": decisive,
        "map_max": worst,
        "map_mean": float(np.mean([m["mean"] for m in measured.values()])) if measured else None,
        "map_max_all_classes": max(m["max"] for r in rows.values() for m in r["maps"].values()),
        "logit_max": max(r["logit_diff"] for r in rows.values()),
    }
    if limit is not None:
        out.update(map_limit=limit,
                   passed=not decisive and worst is not None and worst < limit)
    return out


def load_docs(outdir, names):
    docs = {}
    for name in names:
        path = outdir / f"{name}.json"
        if not path.exists():
            raise RuntimeError(f"explain wrote no {path.name}")
        docs[name] = json.loads(path.read_text())
    return docs


def pgc_crosscheck(ctx, ref, names):
    """pytorch-grad-cam's raw GradCAM map for the top-1 class against this check's own
    (fp32), so that the reference is known to be pytorch-grad-cam's."""
    GradCAM, Target, stood_in = import_grad_cam()
    model = ctx.model
    layer = model.layer4[-1]
    worst = 0.0
    for name in names:
        logits, _ = ref.get(name, [])
        c = int(np.argmax(logits))
        _, maps = ref.get(name, [c])
        x = to_input(ctx.crops[name], ctx.device)
        cam = GradCAM(model=model, target_layers=[layer])
        try:
            with tf32(False):
                cam(input_tensor=x, targets=[Target(c)])
            acts = cam.activations_and_grads.activations[0].cpu().numpy()
            grads = cam.activations_and_grads.gradients[0].cpu().numpy()
            raw = cam.get_cam_image(x, layer, [Target(c)], acts, grads, False)[0]
        finally:
            cam.activations_and_grads.release()
            model.zero_grad(set_to_none=True)
        want = maps[c]
        worst = max(worst, float(np.abs(raw - want).max() / np.abs(want).max()))
    return worst, stood_in


def parity(ctx):
    plan = ctx.plan
    names = sorted(ctx.crops)
    tol = FP32_TOLERANCE[ctx.device]
    ref = TorchSide(ctx.model, torch.float32, ctx)
    for name in names:
        ref.get(name, [])
    result = {"tolerance_fp32": tol, "margin": MARGIN, "pictures": names, "binary": {},
              "pytorch": {}, "checks": {}}
    problems = []

    result["pytorch_grad_cam_vs_reference"], result["pytorch_grad_cam_stand_ins"] = \
        pgc_crosscheck(ctx, ref, names)
    if ctx.device == "cuda":
        # PyTorch's fp32 as it runs by default (TF32 convolutions) against the strict
        # reference: what the binary's difference looks like if it keeps libtorch's default.
        loose = TorchSide(ctx.model, torch.float32, ctx, allow_tf32=True)
        result["pytorch"]["fp32_tf32"] = side_vs_reference(loose, ref, names)

    for precision in plan.precisions:
        outdir = ctx.tmp / f"explain-{precision}"
        t = time.monotonic()
        out = run_explain(ctx, precision, outdir)
        seconds = round(time.monotonic() - t, 1)
        if out.returncode != 0:
            problems.append(f"explain --precision {precision} exited {out.returncode}")
            result["binary"][precision] = {"exit": out.returncode, "stderr": tail(out.stderr)}
            continue
        docs = load_docs(outdir, names)
        rows = {n: compare(ref, n, docs[n]) for n in names}
        rec = {"seconds": seconds, "pictures": rows}
        if precision == "fp32":
            rec["logit_max"] = max(r["logit_diff"] for r in rows.values())
            rec["map_max"] = max(m["max"] for r in rows.values() for m in r["maps"].values())
            rec["map_mean"] = float(np.mean([m["mean"] for r in rows.values()
                                             for m in r["maps"].values()]))
            rec["passed"] = rec["logit_max"] <= tol and rec["map_max"] <= tol
        else:
            rec.update(reduced_summary(rows, MAP_LIMIT[precision]))
        result["binary"][precision] = rec
        if not rec["passed"]:
            problems.append(f"{precision} parity")
        # PyTorch's own run in the same precision, against the same reference.
        if precision != "fp32":
            model = copy.deepcopy(ctx.model).to(DTYPES[precision])
            model = model.to(memory_format=torch.channels_last)
            side = TorchSide(model, DTYPES[precision], ctx)
            result["pytorch"][precision] = side_vs_reference(side, ref, names)
            del model, side

    result["deep"] = deep_parity(ctx, names, problems)

    if ctx.device == "cpu":
        result["checks"]["fp16_refused_on_cpu"] = fp16_refusal(ctx)
        if not result["checks"]["fp16_refused_on_cpu"]["passed"]:
            problems.append("fp16 on the CPU was not refused at start-up")
    empty_cache(ctx)
    result["passed"] = not problems
    if problems:
        raise Failed("; ".join(problems), result)
    return result


def deep_parity(ctx, names, problems):
    """Top-1 maps at layer2, where the gradients flow back through layer3 and layer4's
    convolutions: the backward convolutions take the process's TF32 setting, not a per-call
    flag. Each side against PyTorch fp32 with TF32 off; fp32 must stay within DEEP_FP32 (on
    the CPU the binary and PyTorch each differ from float64 by up to 3e-3 there), and on a GPU
    PyTorch with TF32 on shows how far TF32 alone moves the maps. Reduced precisions are
    reported, without a limit."""
    layer = "layer2"
    ref = TorchSide(ctx.model, torch.float32, ctx, layer=layer, top=1)
    out = {"layer": layer, "limit_fp32": DEEP_FP32, "binary": {}, "pytorch": {}}
    if ctx.device == "cuda":
        loose = TorchSide(ctx.model, torch.float32, ctx, allow_tf32=True, layer=layer, top=1)
        out["pytorch"]["fp32_tf32"] = side_vs_reference(loose, ref, names, top=1)
    for precision in ctx.plan.precisions:
        outdir = ctx.tmp / f"explain-{precision}-{layer}"
        run = run_explain(ctx, precision, outdir, layer=layer, top_k=1)
        if run.returncode != 0:
            problems.append(f"explain --precision {precision} --layer {layer} exited "
                            f"{run.returncode}")
            out["binary"][precision] = {"exit": run.returncode, "stderr": tail(run.stderr)}
            continue
        docs = load_docs(outdir, names)
        rec = reduced_summary({n: compare(ref, n, docs[n]) for n in names})
        if precision == "fp32":
            rec["passed"] = rec["map_max_all_classes"] <= DEEP_FP32
            if not rec["passed"]:
                problems.append(f"fp32 parity at {layer}")
        else:
            model = model_in(ctx, precision)
            side = TorchSide(model, DTYPES[precision], ctx, layer=layer, top=1)
            out["pytorch"][precision] = side_vs_reference(side, ref, names, top=1)
            del model, side
        out["binary"][precision] = rec
    return out


def side_vs_reference(side, ref, names, top=5):
    """A PyTorch side's logits and its `top` best classes' maps against the fp32 reference, as
    compare() does for the binary."""
    rows = {}
    for name in names:
        logits, _ = side.get(name, [])
        best = [int(i) for i in np.argsort(-logits)[:top]]
        _, maps = side.get(name, best)
        doc = {
            "predictions": [{"index": c, "logit": float(logits[c])} for c in best],
            "explanations": [{"class_index": c, "heatmap": {
                "width": maps[c].shape[1], "height": maps[c].shape[0],
                "data": maps[c].ravel().tolist()}} for c in best],
        }
        rows[name] = compare(ref, name, doc)
    summary = reduced_summary(rows)
    summary["pictures_detail"] = rows
    return summary


def fp16_refusal(ctx):
    """fp16 on the CPU must stop `explain` at start-up with a non-zero exit, writing nothing."""
    outdir = ctx.tmp / "explain-fp16-cpu"
    t = time.monotonic()
    out = run_explain(ctx, "fp16", outdir)
    written = sorted(p.name for p in outdir.glob("*.json")) if outdir.exists() else []
    return {"exit": out.returncode, "seconds": round(time.monotonic() - t, 1),
            "message": tail(out.stderr, 3), "written": written,
            "passed": out.returncode != 0 and not written}


def empty_cache(ctx):
    if ctx.device == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# d. Engine throughput


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


def model_in(ctx, precision):
    model = copy.deepcopy(ctx.model).to(DTYPES[precision])
    if precision != "fp32":
        model = model.to(memory_format=torch.channels_last)
    return model


def batch_input(ctx, precision, batch):
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
    GradCAM, Target, _ = import_grad_cam()
    x = batch_input(ctx, precision, batch)
    cam = GradCAM(model=model, target_layers=[model.layer4[-1]])
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


# ---------------------------------------------------------------------------------------------
# e. The service over HTTP


def ready_addr(log_path):
    """The address in the server's JSON "ready" log line, once it is there."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        fields = entry.get("fields") if isinstance(entry, dict) else None
        if isinstance(fields, dict) and fields.get("message") == "ready":
            return fields.get("addr")
    return None


def http_get(url, timeout=5.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode("utf-8", "replace")


def metrics(base):
    """The server's Prometheus metrics as {(name, labels): value}."""
    _, text = http_get(base + "/metrics")
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$", line)
        if m:
            out[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return out


def batch_sizes(before, after):
    """Mean batch size and the histogram's counts between two scrapes."""
    def delta(key):
        return after.get(key, 0.0) - before.get(key, 0.0)

    n = delta(("gradcam_batch_size_count", ""))
    buckets = {}
    for (name, labels), v in after.items():
        if name == "gradcam_batch_size_bucket":
            le = re.search(r'le="([^"]+)"', labels).group(1)
            buckets[le] = v - before.get((name, labels), 0.0)
    return {"batches": n, "mean": delta(("gradcam_batch_size_sum", "")) / n if n else None,
            "cumulative_buckets": buckets}


def proc_cpu_s(pid):
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_status_kib(pid, key):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


def machine_cpu():
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    v = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    total = sum(v[:8])
    return total - idle, total


def number(text):
    """A figure from nvidia-smi, or None for `[N/A]` and the like."""
    try:
        return float(text)
    except ValueError:
        return None


class Sampler(threading.Thread):
    """Samples the server's RSS and the GPU's memory and utilisation every half second."""

    def __init__(self, pid, gpu):
        super().__init__(daemon=True)
        self.pid, self.gpu = pid, gpu
        self.stop = threading.Event()
        self.rss, self.gpu_mem, self.gpu_util, self.proc_mem = [], [], [], []

    def run(self):
        while not self.stop.is_set():
            try:
                self.rss.append(proc_status_kib(self.pid, "VmRSS"))
            except OSError:
                return
            if self.gpu:
                rows = nvidia_smi("memory.used,utilization.gpu") or [[]]
                for values, v in zip((self.gpu_mem, self.gpu_util), rows[0]):
                    if number(v) is not None:
                        values.append(number(v))
                apps = nvidia_smi("pid,used_memory", "--query-compute-apps") or []
                mine = [number(r[1]) for r in apps if len(r) > 1 and r[0] == str(self.pid)]
                if mine and mine[0] is not None:
                    self.proc_mem.append(mine[0])
            self.stop.wait(0.5)


class Server:
    """`gradcam-serve serve` on a loopback port of its own choosing, until stop()."""

    def __init__(self, ctx, precision):
        self.ctx, self.precision = ctx, precision
        self.base = None
        plan = ctx.plan
        # The queue and the pixel budget admit every client of the highest concurrency, so
        # that the runs measure throughput and latency rather than 429 and 503 answers.
        top = max(plan.concurrency)
        self.flags = ["--max-batch-size", str(plan.max_batch), "--max-batch-delay-ms",
                      str(plan.batch_delay_ms), "--queue-capacity", str(max(64, 2 * top)),
                      "--max-inflight-pixels", str(max(100_000_000, 2 * top * 1_100_000))]
        self.log = ctx.tmp / f"serve-{precision}.log"
        self.proc = None

    def start(self):
        # Port 0: the server binds a free port itself and names it in its "ready" line, so no
        # other process can take the port between choosing and binding it.
        argv = [self.ctx.binary(), "serve", "--host", "127.0.0.1", "--port", "0",
                "--weights", str(self.ctx.weights), "--device", self.ctx.device,
                "--precision", self.precision, "--drain-delay-ms", "0", "--log-format", "json",
                *self.flags]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                         env=self.ctx.env())
        self.ctx.children.append(self.proc)
        t = time.monotonic()
        while time.monotonic() - t < self.ctx.clock.timeout(150):
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited {self.proc.returncode}: {self.log_tail()}")
            addr = ready_addr(self.log)
            if addr:
                self.base = f"http://{addr}"
                try:
                    if http_get(self.base + "/health/ready", 2)[0] == 200:
                        return round(time.monotonic() - t, 1)
                except OSError:
                    pass
            time.sleep(0.25)
        raise RuntimeError(f"serve was not ready in time: {self.log_tail()}")

    def log_tail(self):
        return tail(self.log.read_text(errors="replace"), 6) if self.log.exists() else ""

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else None


def load_run(ctx, server, file, concurrency, seconds):
    """One gradcam-load run against the server, with the server's and the machine's figures
    around it."""
    pid = server.proc.pid
    path = ctx.tmp / f"load-{server.precision}-{file.stem}-{concurrency}.json"
    argv = [ctx.binary("gradcam-load"), "--url", server.base + "/explain", "--file", str(file),
            "--content-type", "image/jpeg", "--concurrency", str(concurrency), "--seconds",
            str(seconds), "--threads", str(ctx.plan.load_threads), "--json", str(path)]
    m0 = metrics(server.base)
    cpu0, busy0, wall0 = proc_cpu_s(pid), machine_cpu(), time.monotonic()
    sampler = Sampler(pid, ctx.device == "cuda")
    sampler.start()
    log = path.with_suffix(".log")
    with open(log, "wb") as f:
        load = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=ctx.env())
    ctx.children.append(load)
    deadline = time.monotonic() + ctx.clock.timeout(seconds + 60)
    while True:
        done, status, usage = os.wait4(load.pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            load.kill()
            _, status, usage = os.wait4(load.pid, 0)
            break
        time.sleep(0.05)
    load.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - wall0
    cpu1, busy1 = proc_cpu_s(pid), machine_cpu()
    sampler.stop.set()
    sampler.join()
    m1 = metrics(server.base)
    if load.returncode != 0 or not path.exists():
        raise RuntimeError(f"gradcam-load exited {load.returncode}: "
                           f"{tail(log.read_text(errors='replace'))}")
    doc = json.loads(path.read_text())
    ncpu = len(os.sched_getaffinity(0))
    rec = {
        "file": file.name,
        "concurrency": concurrency,
        "load": doc,
        "wall_s": round(wall, 2),
        "server_cores": (cpu1 - cpu0) / wall,
        "load_cores": (usage.ru_utime + usage.ru_stime) / wall,
        "machine_busy_cores": (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]) * ncpu,
        "cores": ncpu,
        "server_rss_mib_max": max(filter(None, sampler.rss), default=0) / 1024,
        "server_hwm_mib": (proc_status_kib(pid, "VmHWM") or 0) / 1024,
        "batch_sizes": batch_sizes(m0, m1),
    }
    if sampler.gpu_mem:
        rec["gpu_memory_used_mib_max"] = max(sampler.gpu_mem)
        rec["gpu_util_mean"] = float(np.mean(sampler.gpu_util))
    if sampler.proc_mem:
        rec["server_gpu_memory_mib_max"] = max(sampler.proc_mem)
    rec["limit"] = limit_verdict(rec, ctx.plan)
    return rec


def limit_verdict(rec, plan):
    """Where the limit of one run lies, from the cores in use, the GPU's business and the
    batches formed."""
    n = rec["cores"]
    max_batch = plan.max_batch
    mean_batch = rec["batch_sizes"]["mean"] or 0
    if rec["load_cores"] >= 0.9 * plan.load_threads and rec["machine_busy_cores"] < 0.9 * n:
        return (f"the load generator: its {plan.load_threads} threads use "
                f"{rec['load_cores']:.1f} cores while the machine has room")
    if rec["server_cores"] >= 0.8 * n or rec["machine_busy_cores"] >= 0.9 * n:
        return (f"host CPU: the server uses {rec['server_cores']:.1f} of {n} cores and the "
                f"machine {rec['machine_busy_cores']:.1f} (decode, render and the load "
                "generator share them)")
    if rec.get("gpu_util_mean", 0) >= 85 or mean_batch >= 0.9 * max_batch:
        return (f"the model: batches of {mean_batch:.1f} on average (at most {max_batch}), "
                f"GPU busy {rec.get('gpu_util_mean', float('nan')):.0f}%")
    return (f"neither CPU ({rec['machine_busy_cores']:.1f} of {n} cores busy) nor model "
            f"(batches of {mean_batch:.1f}): the clients' concurrency bounds it")


def service(ctx):
    plan, clock = ctx.plan, ctx.clock
    files = [ctx.kit / "load" / "load-224.jpg", ctx.kit / "load" / "load-1mp.jpg"]
    for f in files:
        if not f.exists():
            raise RuntimeError(f"no {f}")
    if not Path(ctx.binary("gradcam-load")).exists():
        raise RuntimeError(f"no {ctx.binary('gradcam-load')}")
    empty_cache(ctx)
    baseline = nvidia_smi("memory.used") if ctx.device == "cuda" else None
    result = {"seconds_per_run": plan.load_seconds, "precisions": {},
              "gpu_memory_used_mib_before": number(baseline[0][0]) if baseline else None}
    problems = []
    s = plan.load_seconds
    for precision in plan.service_precisions:
        cost = plan.service_cost(len(files))
        rec = result["precisions"][precision] = {}
        if not clock.afford(cost):
            rec["skipped"] = f"time budget ({clock.left():.0f} s left, about {cost:.0f} s needed)"
            ctx.report.note(f"service {precision} skipped: {rec['skipped']}")
            continue
        server = Server(ctx, precision)
        rec["flags"] = server.flags
        try:
            rec["ready_s"] = server.start()
            rec["rss_ready_mib"] = proc_status_kib(server.proc.pid, "VmRSS") / 1024
            # Warm-up (not recorded), at the highest concurrency so that most batch sizes have
            # been run (on a GPU each new size picks its cuDNN algorithms).
            for f in files:
                load_run(ctx, server, f, max(plan.concurrency), 2)
            rec["runs"] = []
            for f in files:
                for c in plan.concurrency:
                    rec["runs"].append(load_run(ctx, server, f, c, s))
                    ctx.report.save()
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
            rec["error"] = str(e)
            problems.append(f"service {precision}")
        finally:
            rec["exit_after_sigterm"] = server.stop()
            if rec["exit_after_sigterm"] not in (0, None) and "error" not in rec:
                rec["log_tail"] = server.log_tail()
                problems.append(f"serve {precision} exited {rec['exit_after_sigterm']} after "
                                "SIGTERM")
    ctx.service = result
    if problems:
        raise Failed("; ".join(problems), result)
    return result


# ---------------------------------------------------------------------------------------------
# f. Goals


def goals(ctx):
    """The performance goals, each PASS, FAIL or NOT-MEASURED with the figures behind it."""
    out = []
    cuda = ctx.device == "cuda"
    engine = (ctx.engine or {}).get("precisions", {})
    for precision in ctx.plan.precisions:
        ratios = [r for r in engine.get(precision, {}).get("ratios", [])
                  if "vs_eager_forward" in r]
        name = f"engine explain >= {GOALS['engine_vs_eager']}x PyTorch eager forward, {precision}"
        if not ratios:
            out.append((name, "NOT-MEASURED", "no engine and eager figures"))
            continue
        worst = min(ratios, key=lambda r: r["vs_eager_forward"])
        status = "PASS" if worst["vs_eager_forward"] >= GOALS["engine_vs_eager"] else "FAIL"
        out.append((name, status, "worst {:.2f}x at batch {}; ".format(
            worst["vs_eager_forward"], worst["batch"]) + ", ".join(
                f"b{r['batch']} {r['vs_eager_forward']:.2f}x" for r in ratios)))
    name = f"engine >= {GOALS['engine_bf16_batch64']:.0f} explains/s, bf16, batch 64 (cuda)"
    rows = [r for r in (engine.get("bf16", {}).get("engine") or {}).get("results", [])
            if r["batch"] == 64]
    if not cuda or not rows:
        out.append((name, "NOT-MEASURED", "CPU run" if not cuda else "no bf16 batch-64 figure"))
    else:
        v = rows[0]["images_per_s"]
        out.append((name, "PASS" if v >= GOALS["engine_bf16_batch64"] else "FAIL",
                    f"{v:.0f} images/s"))
    runs = [(p, r) for p, rec in ((ctx.service or {}).get("precisions") or {}).items()
            for r in rec.get("runs", [])]
    for file, key, label in (("load-224.jpg", "service_224", "224 px JPEG"),
                             ("load-1mp.jpg", "service_1mp", "1 MP JPEG")):
        name = (f"service >= {GOALS[key]:.0f} req/s, {label}, p99 < "
                f"{GOALS['service_p99_ms']:.0f} ms (cuda)")
        mine = [(p, r) for p, r in runs if r["file"] == file]
        if not cuda or not mine:
            out.append((name, "NOT-MEASURED", "CPU run" if not cuda else "no service run"))
            continue
        good = [(p, r) for p, r in mine if clean(r["load"])
                and r["load"]["latency_ms"]["p99"] < GOALS["service_p99_ms"]]
        if not good:
            out.append((name, "FAIL", "no run with p99 under the limit and only 200 answers"))
            continue
        p, best = max(good, key=lambda pr: ok_rate(pr[1]["load"]))
        v = ok_rate(best["load"])
        out.append((name, "PASS" if v >= GOALS[key] else "FAIL",
                    f"best {v:.0f} req/s ({p}, concurrency {best['concurrency']}, p99 "
                    f"{best['load']['latency_ms']['p99']:.0f} ms; limit: {best['limit']})"))
    return [{"goal": g, "status": s, "detail": d} for g, s, d in out]


def ok_rate(load):
    """200 answers per second (all answers per second where the figure is missing)."""
    return load.get("ok_per_s", load["throughput_per_s"])


def clean(load):
    """Every request answered 200."""
    ok = load.get("status", {}).get("200", 0)
    return load.get("requests", 0) > 0 and ok == load["requests"] and \
        not load.get("transport_errors")


# ---------------------------------------------------------------------------------------------
# The report in Markdown


def fmt(v, digits=1):
    """Numbers for the tables: three significant digits below 1, else `digits` decimals."""
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != 0 and abs(v) < 1:
            return f"{v:.3g}"
        if abs(v) >= 1e6:
            return f"{v:.3e}"
        return f"{v:.{digits}f}"
    return str(v)


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def render_markdown(d):
    md = [f"# Device check: gradcam-serve on {d['args']['device']}"
          f"{' (--small)' if d['args']['small'] else ''}\n",
          f"Started {d['started']}, {fmt(d.get('elapsed_s'))} s so far; overall: "
          f"**{d.get('overall', 'running')}**.\n"]
    steps = d["steps"]
    if d.get("goals"):
        md.append("## Goals\n")
        md += [f"- **{g['status']}** {g['goal']}: {g['detail']}" for g in d["goals"]]
        md.append("")
    md.append("## Steps\n")
    md.append(table(["step", "status", "seconds", "error"],
                    [[k, v["status"], v.get("seconds"), (v.get("error") or "").replace("|", "/")
                      [:200]] for k, v in steps.items()]))
    env = steps.get("environment", {}).get("result")
    if env:
        kit = env.get("kit_manifest") or {}
        md.append("## Environment\n")
        if kit:
            md.append(f"Kit made {kit.get('created')} from commit {kit.get('git_commit')}"
                      f"{' with uncommitted changes' if kit.get('git_dirty') else ''}.\n")
        md.append(table(["what", "value"], [[k, v] for k, v in env.items()
                                            if k != "kit_manifest" and not isinstance(v, dict)]
                        + [[k, json.dumps(v)] for k, v in env.items()
                           if isinstance(v, dict) and k != "kit_manifest"]))
    par = steps.get("parity", {}).get("result")
    if par:
        md += render_parity(par)
    eng = steps.get("engine", {}).get("result")
    if eng:
        md += render_engine(eng)
    svc = steps.get("service", {}).get("result")
    if svc:
        md += render_service(svc)
    if d["notes"]:
        md.append("## Notes\n")
        md += [f"- {n}" for n in d["notes"]]
        md.append("")
    return "\n".join(md) + "\n"


def render_parity(par):
    md = ["## Parity\n",
          f"Pictures: {', '.join(par['pictures'])} (224x224 crops). Differences are relative to "
          "the picture's max |logit| and the map's max |value|; the reference is PyTorch fp32 "
          f"(TF32 off). pytorch-grad-cam's raw GradCAM map against this reference: "
          f"{fmt(par.get('pytorch_grad_cam_vs_reference'))}"
          + (f" (imported with stand-ins for {', '.join(par['pytorch_grad_cam_stand_ins'])})"
             if par.get("pytorch_grad_cam_stand_ins") else "") + ".\n"]
    fp32 = par["binary"].get("fp32")
    if fp32 and "pictures" in fp32:
        md.append(f"**fp32** (tolerance {fmt(par['tolerance_fp32'])}): "
                  f"{'PASS' if fp32['passed'] else 'FAIL'}\n")
        md.append(table(["picture", "top-1", "PyTorch top-1", "logit diff", "map diff max",
                         "map diff mean"],
                        [[n, r["top1"], r["ref_top1"], r["logit_diff"],
                          max(m["max"] for m in r["maps"].values()),
                          float(np.mean([m["mean"] for m in r["maps"].values()]))]
                         for n, r in fp32["pictures"].items()]))
    rows = []
    tf32 = par["pytorch"].get("fp32_tf32")
    if tf32:
        rows.append(["fp32 (TF32 on)", "PyTorch", f"{tf32['top1_agree']}/{tf32['pictures']}",
                     len(tf32["top1_disagree_decisive"]), tf32["map_max"], tf32["map_mean"],
                     tf32["logit_max"], "-"])
    for precision in ("bf16", "fp16"):
        for side, rec in (("gradcam-serve", par["binary"].get(precision)),
                          ("PyTorch", par["pytorch"].get(precision))):
            if rec and "top1_agree" in rec:
                verdict = ("PASS" if rec["passed"] else "FAIL") if side == "gradcam-serve" \
                    else "-"
                rows.append([precision, side, f"{rec['top1_agree']}/{rec['pictures']}",
                             len(rec["top1_disagree_decisive"]), rec["map_max"],
                             rec["map_mean"], rec["logit_max"], verdict])
            elif rec:
                rows.append([precision, side, f"exit {rec.get('exit')}", "-", "-", "-", "-",
                             "FAIL"])
    if rows:
        md.append(f"**Reduced precision** against fp32: top-1 must agree where fp32's margin "
                  f"exceeds {par['margin']}; top-1 map within "
                  + ", ".join(f"{v} ({k})" for k, v in MAP_LIMIT.items()) + ".\n")
        md.append(table(["precision", "side", "top-1 agrees", f"disagrees, margin > {MARGIN}",
                         "top-1 map diff max", "top-1 map diff mean", "logit diff max",
                         "verdict"], rows))
    deep = par.get("deep")
    if deep:
        rows = []
        for label, side, rec in [("fp32 (TF32 on)", "PyTorch", deep["pytorch"].get("fp32_tf32"))] + [
                (p, s, r) for p in ("fp32", "bf16", "fp16")
                for s, r in (("gradcam-serve", deep["binary"].get(p)),
                             ("PyTorch", deep["pytorch"].get(p)))]:
            if rec and "top1_agree" in rec:
                verdict = ("PASS" if rec["passed"] else "FAIL") if "passed" in rec else "-"
                rows.append([label, side, f"{rec['top1_agree']}/{rec['pictures']}",
                             rec["map_max_all_classes"], rec["map_mean"], rec["logit_max"],
                             verdict])
            elif rec:
                rows.append([label, side, f"exit {rec.get('exit')}", "-", "-", "-", "FAIL"])
        md.append(f"**At {deep['layer']}** (gradients back through layer3 and layer4's "
                  f"convolutions) against PyTorch fp32, TF32 off: fp32 within "
                  f"{fmt(deep['limit_fp32'])}; reduced precisions reported.\n")
        md.append(table(["precision", "side", "top-1 agrees", "map diff max", "map diff mean",
                         "logit diff max", "verdict"], rows))
    for name, check in par.get("checks", {}).items():
        md.append(f"**{name}**: {'PASS' if check['passed'] else 'FAIL'} (exit {check['exit']}, "
                  f"{check['seconds']} s): {check['message'].splitlines()[-1] if check['message'] else ''}\n")
    for p, rec in par["binary"].items():
        if "stderr" in rec:
            md.append(f"explain --precision {p} failed:\n\n```\n{rec['stderr']}\n```\n")
    return md


def render_engine(eng):
    md = [f"## Engine throughput (images/s, {eng['seconds_per_point']} s per point)\n",
          "gradcam-serve `bench` explains with GradCAM at layer4; PyTorch eager is forward-only "
          f"(`torch.no_grad`); settings: {json.dumps(eng['pytorch_settings'])}.\n"]
    for precision, rec in eng["precisions"].items():
        if "skipped" in rec:
            md.append(f"**{precision}**: skipped, {rec['skipped']}\n")
            continue
        bench = {r["batch"]: r for r in (rec.get("engine") or {}).get("results", [])}
        skipped = {r["batch"]: r["why"] for r in (rec.get("engine") or {}).get("skipped", [])}
        eager = {r["batch"]: r for r in rec.get("eager_forward", [])}
        strict = {r["batch"]: r for r in rec.get("eager_forward_strict_fp32", [])}
        cam = {r["batch"]: r for r in rec.get("grad_cam", [])}
        ratio = {r["batch"]: r for r in rec.get("ratios", [])}
        rows = []
        for b in eng["batches"]:
            e = bench.get(b, {})
            c = cam.get(b, {})
            rows.append([b, e.get("images_per_s", skipped.get(b)), e.get("batch_ms_p50"),
                         e.get("forward_images_per_s"), eager.get(b, {}).get("images_per_s"),
                         strict.get(b, {}).get("images_per_s") if strict else None,
                         ratio.get(b, {}).get("vs_eager_forward"),
                         c.get("images_per_s", c.get("error", c.get("skipped"))),
                         ratio.get(b, {}).get("vs_grad_cam")])
        md.append(f"**{precision}**\n")
        if "engine_error" in rec:
            md.append(f"bench failed:\n\n```\n{rec['engine_error']}\n```\n")
        md.append(table(["batch", "engine explain", "engine p50 ms", "engine forward",
                         "eager forward",
                         "eager forward, TF32 off", "engine / eager (TF32 off where measured)", "pytorch-grad-cam",
                         "engine / pytorch-grad-cam"], rows))
    return md


def render_service(svc):
    md = [f"## Service over HTTP ({svc['seconds_per_run']} s per run)\n"]
    for precision, rec in svc["precisions"].items():
        if "skipped" in rec:
            md.append(f"**{precision}**: skipped, {rec['skipped']}\n")
            continue
        ready = (f"ready in {fmt(rec['ready_s'])} s, RSS {fmt(rec.get('rss_ready_mib'), 0)} MiB "
                 "when ready; " if rec.get("ready_s") is not None else "")
        md.append(f"**{precision}**: {ready}flags `{' '.join(rec.get('flags', []))}`\n")
        for key in ("error", "log_tail"):
            if key in rec:
                md.append(f"```\n{rec[key]}\n```\n")
        rows = []
        for r in rec.get("runs", []):
            ld = r["load"]
            codes = ", ".join(f"{k}: {v}" for k, v in sorted(ld.get("status", {}).items()))
            rows.append([r["file"], r["concurrency"], ld["throughput_per_s"],
                         ld["latency_ms"]["p50"], ld["latency_ms"]["p99"], codes,
                         ld.get("transport_errors"), r["server_cores"], r["load_cores"],
                         r["machine_busy_cores"], r["server_rss_mib_max"], r["server_hwm_mib"],
                         r.get("server_gpu_memory_mib_max", r.get("gpu_memory_used_mib_max")),
                         r.get("gpu_util_mean"), r["batch_sizes"]["mean"]])
        if rows:
            md.append(table(["file", "clients", "req/s", "p50 ms", "p99 ms", "answers",
                             "transport errors", "server cores", "load cores", "machine cores",
                             "RSS max MiB", "VmHWM MiB", "GPU MiB", "GPU %", "mean batch"],
                            rows))
            md += [f"- {r['file']} x {r['concurrency']}: limit: {r['limit']}"
                   for r in rec["runs"]]
            md.append("")
    if svc.get("gpu_memory_used_mib_before") is not None:
        md.append(f"GPU MiB is the server's own where nvidia-smi lists its process, otherwise "
                  f"the whole GPU's ({fmt(svc['gpu_memory_used_mib_before'], 0)} MiB in use "
                  "before the server started, this check's PyTorch included).\n")
    return md


# ---------------------------------------------------------------------------------------------


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
    here = Path(__file__).resolve().parent
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kit", type=Path, default=here, help="the kit directory (default: here)")
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
