"""Step c, parity: `gradcam-serve explain` against PyTorch on the parity crops: logits and raw
Grad-CAM maps in fp32, bf16 and fp16 at layer4 (and at layer2, where gradients flow back
through more convolutions), PyTorch's own reduced precisions beside the binary's, and fp16
refused on the CPU."""

import json
import time

import numpy as np
import torch

import torchref

from .context import Failed, empty_cache, tail, tf32
from .weights import DTYPES, model_in, to_input

# fp32 parity: logits and maps within this fraction of their scale (max |logit|, max |map|).
FP32_TOLERANCE = {"cuda": 1e-4, "cpu": 1e-5}
# Reduced precision against the fp32 reference: the top-1 class must agree wherever fp32's
# top-1 margin (the lead of the best logit over the second, as a fraction of max |logit|)
# exceeds MARGIN (the bound tests/numerics/precision.rs uses and justifies), and the top-1 class's map
# must stay within this fraction of the map's maximum.
MARGIN = 0.1
MAP_LIMIT = {"bf16": 0.1, "fp16": 0.05}
# fp32 maps at layer2 against PyTorch fp32: on the CPU each differs from float64 by up to 3e-3
# there (tests/numerics/parity.rs), so up to about 6e-3 from each other.
DEEP_FP32 = 1e-2
# ResNet's stages, in the order the input passes them.
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
    (fp32), so that the reference is known to be pytorch-grad-cam's; also the packages stood in
    for while importing it (torchref.grad_cam)."""
    stood_in = torchref.grad_cam().stood_in
    model = ctx.model
    worst = 0.0
    for name in names:
        logits, _ = ref.get(name, [])
        c = int(np.argmax(logits))
        _, maps = ref.get(name, [c])
        x = to_input(ctx.crops[name], ctx.device)
        try:
            with tf32(False):
                raw = torchref.raw_cams(model, model.layer4[-1], x, c, ["gradcam"])["gradcam"]
        finally:
            model.zero_grad(set_to_none=True)
        want = maps[c]
        worst = max(worst, float(np.abs(raw.numpy() - want).max() / np.abs(want).max()))
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
            model = model_in(ctx, precision)
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
