"""What the check reads about the machine, its processes and the server while it measures:
nvidia-smi, /proc and the server's Prometheus metrics.
"""

import os
import re
import shutil
import subprocess
import threading
import urllib.request
from pathlib import Path


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


def meminfo(key):
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


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
