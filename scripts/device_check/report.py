"""The report: the JSON document of every figure and each step's status, saved with its Markdown
rendering (markdown.py) after every step, so that a run cut short still leaves what it measured.
"""

import json
import sys
import threading
import time
import traceback

from .context import Failed
from .markdown import render_markdown


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
