"""The report in Markdown: gpu-report.md, rendered from the JSON document."""

import json

import numpy as np

from .parity import MAP_LIMIT, MARGIN


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
