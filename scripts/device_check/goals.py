"""Step f, the performance goals: PASS, FAIL or NOT-MEASURED from the engine's and the service's
figures; a missed goal is reported, never the check's failure."""


GOALS = {
    "engine_vs_eager": 0.9,
    "engine_bf16_batch64": 3000.0,
    "service_224": 2000.0,
    "service_1mp": 600.0,
    "service_p99_ms": 250.0,
}


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
