"""Step e, the service over HTTP on loopback: `gradcam-serve serve` under `gradcam-load` with a
224 px and a 1 MP JPEG at several concurrencies, with the server's CPU, memory and batch sizes
and the GPU's memory and utilisation around each run."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np

from .context import Failed, empty_cache, tail
from .probes import (Sampler, batch_sizes, http_get, machine_cpu, metrics, number, nvidia_smi,
                     proc_cpu_s, proc_status_kib)


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
