"""Drives the playground in headless Chromium (Debian's chromium and chromium-driver) with
selenium. tests/e2e/browser.rs starts the servers and the cross-origin page and runs this script;
every check raises on failure. Waits are bounded (60 s each), so nothing hangs.

With --measure it only uploads one photograph again and again and reports the page's own time
from upload to overlay and where it went (scripts/playground_bench.sh); nothing is asserted
about time."""

import argparse
import base64
import hashlib
import io
import json
import os
import re
import shutil
import statistics
import struct
import sys
import tempfile
import time
import urllib.request

from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

WAIT = 60


def metric(api, sample):
    text = urllib.request.urlopen(api + "/metrics", timeout=30).read().decode()
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


def explain_count(api):
    return sum(
        metric(api, f'gradcam_requests_total{{route="/explain",status="{s}"}}')
        for s in ("200", "401", "422")
    )


def sampled_digest(rgba):
    """The digest canvas_digest computes in the page, of RGBA bytes: every 97th byte."""
    return hashlib.sha256(",".join(str(b) for b in rgba[::97]).encode()).hexdigest()


def canvas_digest(driver, index=0, where="#overlays"):
    """A digest of the pixels of the index-th canvas under `where` and whether it has any
    variety."""
    data = driver.execute_script(
        """const c = document.querySelectorAll(arguments[1] + ' canvas')[arguments[0]];
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let lo = 255, hi = 0; for (let i = 0; i < d.length; i += 4) { lo = Math.min(lo, d[i]); hi = Math.max(hi, d[i]); }
        return [Array.from(d.filter((_, i) => i % 97 == 0)).join(','), hi - lo, c.width, c.height];""",
        index,
        where,
    )
    return hashlib.sha256(data[0].encode()).hexdigest(), data[1], data[2], data[3]


def requests_made(driver):
    return int(driver.find_element(By.TAG_NAME, "body").get_attribute("data-requests") or 0)


def wait_answered(driver, requests):
    """Waits until the page has made `requests` calls in all and is no longer busy."""
    WebDriverWait(driver, WAIT).until(
        lambda d: requests_made(d) >= requests
        and d.find_element(By.TAG_NAME, "body").get_attribute("aria-busy") is None
    )


def wait_figures(driver, where, count):
    """Waits for `count` drawn figures under `where`; their captions."""
    WebDriverWait(driver, WAIT).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, where + " figcaption")) == count
    )
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, where + " figcaption")]


def wait_file(directory, name):
    """Waits for a finished download (Chromium writes NAME.crdownload first); its bytes."""
    path = os.path.join(directory, name)
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if os.path.exists(path) and not os.path.exists(path + ".crdownload"):
            with open(path, "rb") as f:
                data = f.read()
            if data:
                return data
        time.sleep(0.1)
    raise AssertionError(f"no download {name} in {directory}: {os.listdir(directory)}")


def post_json(url, photo, params):
    """The server's own JSON answer for the photograph, asked directly (not by the page)."""
    req = urllib.request.Request(url + "/explain?" + params, data=open(photo, "rb").read(),
                                 headers={"Content-Type": "image/jpeg"})
    return json.loads(urllib.request.urlopen(req, timeout=120).read())


# A File built in the page from the fixture's bytes, in a DataTransfer, as a drop or a paste
# delivers it; the event is dispatched where a person's would be.
DISPATCH_FILE = """const [b64, name, kind, target] = arguments;
const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
const dt = new DataTransfer();
dt.items.add(new File([bytes], name, { type: 'image/jpeg' }));
const at = target ? document.getElementById(target) : document;
if (kind === 'drop') {
  at.dispatchEvent(new DragEvent('dragover', { dataTransfer: dt, bubbles: true, cancelable: true }));
  at.dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
} else {
  at.dispatchEvent(new ClipboardEvent('paste', { clipboardData: dt, bubbles: true, cancelable: true }));
}"""

# What the page says while the keyboard cursor is on a map cell.
CELL = re.compile(r"cell \((\d+), (\d+)\) of (\d+)x(\d+): map ([0-9.]+) \(normalised\), raw (\S+)")


def read_cell_text(driver):
    text = driver.find_element(By.ID, "pointer").text
    read_cell(driver)
    return text


def read_cell(driver):
    text = driver.find_element(By.ID, "pointer").text
    m = CELL.search(text)
    if not m:
        raise AssertionError(f"the map's value is not shown: {text!r}")
    x, y, w, h = (int(g) for g in m.groups()[:4])
    return x, y, w, h, float(m.group(5)), float(m.group(6))


def wait_text(driver, css, needle=""):
    WebDriverWait(driver, WAIT).until(
        lambda d: (e := d.find_elements(By.CSS_SELECTOR, css))
        and e[0].is_displayed()
        and needle in e[0].text
        and e[0].text.strip() != ""
    )
    return driver.find_element(By.CSS_SELECTOR, css).text


def get_json(url):
    with urllib.request.urlopen(url) as r:
        return json.load(r)


# How the page names torchvision's architectures ("resnet50": "a ResNet-50").
ARCHITECTURES = [
    (re.compile(r"^resnet(\d+)$"), "a ResNet-{0}"),
    (re.compile(r"^resnext(\d+)_(\w+)$"), "a ResNeXt-{0} {1}"),
    (re.compile(r"^wide_resnet(\d+)_(\d+)$"), "a Wide ResNet-{0}-{1}"),
]


def check_model_facts(driver, api):
    """The page's heading, its line about the model and the class field's example come from the
    server's /info and /labels."""
    info = get_json(api + "/info")
    labels = get_json(api + "/labels")["labels"]
    name = next((f.format(*m.groups()) for r, f in ARCHITECTURES if (m := r.match(info["architecture"]))),
                info["architecture"])
    wait_text(driver, "#model-name", name)
    facts = wait_text(driver, "#model-facts", f"{info['classes']} classes")
    side = info["input"]["size"]
    check(f"{side} x {side}" in facts and info["precision"] in facts and info["model"] in facts,
          f"the page states the model's input, precision and name: {facts!r}")
    example = labels[min(281, len(labels) - 1)]
    want = f"e.g. {example['index']} {example['label']}"
    field = driver.find_element(By.ID, "class")
    # The page's own text until /labels has answered.
    WebDriverWait(driver, WAIT).until(lambda d: field.get_attribute("placeholder").startswith("e.g. ")
                                      and "class index or name" not in field.get_attribute("placeholder"))
    got = field.get_attribute("placeholder")
    check(got == want, f"the class field's example is the model's class: {got!r} (want {want!r})")


def check(condition, what):
    if not condition:
        raise AssertionError(what)
    print("ok:", what)


def start_browser(downloads=None):
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1200,1500", "--no-proxy-server"):
        options.add_argument(flag)
    if downloads:
        options.add_experimental_option("prefs", {
            "download.default_directory": downloads,
            "download.prompt_for_download": False,
        })
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(WAIT)
    driver.set_script_timeout(WAIT)
    return driver


def upload_and_explain(driver, api, photo):
    """A fresh page, the photograph chosen with the file input, Explain: the first prediction."""
    driver.get(api + "/")
    driver.find_element(By.ID, "file").send_keys(photo)
    driver.find_element(By.ID, "explain").click()
    return wait_text(driver, "#predictions li", "%")


def check_keyboard_reading(driver, expected):
    """Tab reaches the first overlay; the arrow keys move a visible cursor cell by cell and the
    live region says the map's value there, as the server's JSON has it."""
    driver.execute_script("document.getElementById('colormap').focus()")
    ActionChains(driver).send_keys(Keys.TAB).perform()
    focused = driver.execute_script(
        "return document.activeElement === document.querySelector('#overlays canvas')")
    check(focused, "Tab moves from the colour map to the first overlay")
    e = expected["explanations"][0]
    mw, mh, raw, norm = e["heatmap"]["width"], e["heatmap"]["height"], e["heatmap"]["data"], e["normalized"]
    scale = max(abs(e["heatmap"]["min"]), abs(e["heatmap"]["max"]))
    canvas = driver.find_element(By.CSS_SELECTOR, "#overlays canvas")
    cursor = driver.find_element(By.CSS_SELECTOR, "#overlays .cursor")
    x, y, w, h, _, _ = read_cell(driver)
    check((x, y, w, h) == (mw // 2, mh // 2, mw, mh) and cursor.is_displayed(),
          f"focus shows the cursor on the middle cell of the {mw}x{mh} map")
    keys = [Keys.ARROW_RIGHT, Keys.ARROW_DOWN, Keys.ARROW_DOWN] + [Keys.ARROW_LEFT] * (mw + 1) + [Keys.ARROW_UP]
    want_x, want_y = mw // 2, mh // 2
    for key in keys:
        step = {Keys.ARROW_RIGHT: (1, 0), Keys.ARROW_LEFT: (-1, 0), Keys.ARROW_UP: (0, -1), Keys.ARROW_DOWN: (0, 1)}[key]
        want_x = min(mw - 1, max(0, want_x + step[0]))
        want_y = min(mh - 1, max(0, want_y + step[1]))
        ActionChains(driver).send_keys(key).perform()
        x, y, _, _, shown_norm, shown_raw = read_cell(driver)
        i = y * mw + x
        if (x, y) != (want_x, want_y):
            raise AssertionError(f"the cursor is at ({x}, {y}), not ({want_x}, {want_y})")
        if abs(shown_raw - raw[i]) > 1e-3 * scale or abs(shown_norm - norm[i]) > 1.5e-3:
            raise AssertionError(f"cell ({x}, {y}) shows {shown_norm} / {shown_raw}, the JSON has {norm[i]} / {raw[i]}")
    print(f"ok: {len(keys)} arrow keys moved the cursor cell by cell (clamped at the edge) and each value "
          f"matched the server's JSON (last: cell ({x}, {y}), raw {shown_raw})")
    box = driver.execute_script(
        """const c = arguments[0].getBoundingClientRect(), k = arguments[1].getBoundingClientRect();
        return [(k.left - c.left) / c.width, (k.top - c.top) / c.height, k.width / c.width];""",
        canvas, cursor)
    check(abs(box[0] - x / mw) < 0.02 and abs(box[1] - y / mh) < 0.02 and abs(box[2] - 1 / mw) < 0.02,
          f"the cursor is drawn over that cell ({box[0]:.3f}, {box[1]:.3f} of the picture)")
    scrolled = driver.execute_script("return window.scrollY")
    ActionChains(driver).send_keys(Keys.ARROW_DOWN).perform()
    check(driver.execute_script("return window.scrollY") == scrolled, "the arrow keys do not scroll the page")


def check_compare(driver, api):
    before = explain_count(api)
    driver.find_element(By.ID, "compare-methods").click()
    captions = wait_figures(driver, "#comparison", 5)
    methods = [c.split(" at ")[0] for c in captions]
    check(sorted(methods) == sorted(["gradcam", "hirescam", "gradcam++", "xgradcam", "layercam"]),
          f"the five methods side by side: {captions}")
    for i in range(5):
        _, spread, _, _ = canvas_digest(driver, i, "#comparison")
        if spread <= 30:
            raise AssertionError(f"comparison {captions[i]} is not drawn (spread {spread})")
    check(explain_count(api) == before + 5, "one request per method")
    driver.find_element(By.ID, "compare-layers").click()
    WebDriverWait(driver, WAIT).until(
        lambda d: [e.text.split(" at ")[-1] for e in d.find_elements(By.CSS_SELECTOR, "#comparison figcaption")]
        == ["layer3", "layer4"])
    captions = wait_figures(driver, "#comparison", 2)
    check(canvas_digest(driver, 0, "#comparison")[0] != canvas_digest(driver, 1, "#comparison")[0],
          f"two layers side by side, drawn differently: {captions}")
    check(explain_count(api) == before + 7, "one request per layer")


def check_downloads(driver, downloads):
    digest, _, w, h = canvas_digest(driver)
    driver.find_element(By.ID, "download-png").click()
    png = wait_file(downloads, "overlay.png")
    check(png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR", f"the overlay downloads as a PNG ({len(png)} bytes)")
    check(struct.unpack(">II", png[16:24]) == (w, h), f"of the overlay's size, {w}x{h}")
    pixels = Image.open(io.BytesIO(png)).convert("RGBA").tobytes()
    check(sampled_digest(pixels) == digest, "with the overlay's pixels")
    driver.find_element(By.ID, "download-json").click()
    answer = json.loads(wait_file(downloads, "explanation.json"))
    first = driver.find_element(By.CSS_SELECTOR, "#predictions li").text
    check(answer["predictions"] and first.startswith(answer["predictions"][0]["label"] + " ("),
          f"the JSON downloads, parses, and has the predictions shown ({answer['predictions'][0]['label']!r})")


def check_drop_and_paste(driver, api, photo, label):
    b64 = base64.b64encode(open(photo, "rb").read()).decode()
    for kind, name, target in (("drop", "dropped.jpg", "drop"), ("paste", "pasted.jpg", None)):
        done = {"drop": "dropped", "paste": "pasted"}[kind]
        driver.get(api + "/")
        driver.execute_script(DISPATCH_FILE, b64, name, kind, target)
        chosen = driver.find_element(By.ID, "chosen").text
        check(chosen.startswith(f"Chosen: {name}"), f"a {kind} chooses the image: {chosen!r}")
        driver.find_element(By.ID, "explain").click()
        first = wait_text(driver, "#predictions li", "%")
        caption = wait_text(driver, "#overlays figcaption")
        _, spread, w, h = canvas_digest(driver)
        check(first.startswith(label) and caption.startswith(label) and spread > 30 and (w, h) == (640, 427),
              f"the {done} image is explained: {first!r}, overlay {w}x{h}")


def check_phone_width(driver, api, photo):
    """A phone-sized window (390x844 CSS pixels, mobile): nothing scrolls sideways, every control
    and the overlay fit, and an upload still gives predictions and an overlay."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 390, "height": 844, "deviceScaleFactor": 3, "mobile": True})
    try:
        upload_and_explain(driver, api, photo)
        wait_text(driver, "#overlays figcaption")
        _, spread, _, _ = canvas_digest(driver)
        check(spread > 30, "at phone width an upload gives predictions and an overlay")
        # Every element that is laid out, not only the controls, so that a failure names the
        # one that sticks out.
        layout = driver.execute_script(
            """const root = document.documentElement;
            const wide = [...document.body.querySelectorAll('*')]
              .filter((e) => e.getClientRects().length)
              .map((e) => [e.id || e.className || e.tagName.toLowerCase(), e.getBoundingClientRect()])
              .filter(([, r]) => r.left < 0 || r.right > root.clientWidth + 0.5)
              .map(([n, r]) => `${n} ${r.left.toFixed(0)}..${r.right.toFixed(0)}`);
            const c = document.querySelector('#overlays canvas').getBoundingClientRect();
            return [root.scrollWidth, root.clientWidth, wide, c.width];""")
        scroll, client, wide, canvas_width = layout
        check(not wide, f"everything on the page fits the width: {wide or 'it does'}")
        check(client <= 390 and scroll <= client, f"no horizontal scrolling (scrollWidth {scroll}, clientWidth {client})")
        check(0 < canvas_width <= client, f"the overlay is {canvas_width:.0f} CSS pixels wide")
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--api", required=True)
    p.add_argument("--photo", required=True)
    for name in ("--keyed-api", "--key", "--page", "--text", "--screenshot", "--own-api"):
        p.add_argument(name)
    p.add_argument("--measure", action="store_true", help="time uploads of --photo, check nothing else")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    a = p.parse_args()
    if a.measure:
        return measure(a)
    missing = [n for n in ("keyed_api", "key", "page", "text", "screenshot", "own_api")
               if getattr(a, n) is None]
    if missing:
        p.error(f"the test needs --{', --'.join(m.replace('_', '-') for m in missing)}")

    downloads = tempfile.mkdtemp(prefix="gradcam-downloads-")
    driver = start_browser(downloads)
    started = time.monotonic()
    try:
        # 1. Upload a photograph: predictions and an overlay appear.
        first = upload_and_explain(driver, a.api, a.photo)
        check_model_facts(driver, a.api)
        check("%" in first, f"a prediction with its probability is shown: {first!r}")
        caption = wait_text(driver, "#overlays figcaption")
        label = first.split(" (")[0]
        check(caption.startswith(label), f"the overlay is labelled with the class: {caption!r}")
        digest, spread, w, h = canvas_digest(driver)
        check(spread > 30 and (w, h) == (640, 427), f"the overlay canvas is drawn ({w}x{h}, spread {spread})")
        ms = float(driver.find_element(By.TAG_NAME, "body").get_attribute("data-upload-to-overlay-ms"))
        print(f"figure: upload to overlay in the browser: {ms:.0f} ms (rocket.jpg, 640x427)")

        # 2. The map's value under a keyboard cursor, against the server's own JSON.
        expected = post_json(a.api, a.photo, "overlay=false")
        check(expected["explanations"][0]["label"] == label, "the server's JSON names the same class")
        check_keyboard_reading(driver, expected)

        # 3. The alpha slider (moved with the keyboard) redraws without a new request.
        before = explain_count(a.api)
        slider = driver.find_element(By.ID, "alpha")
        slider.send_keys(Keys.ARROW_RIGHT * 6)
        check(driver.find_element(By.ID, "alpha-value").text == "0.70", "the slider moved to 0.70")
        digest2, _, _, _ = canvas_digest(driver)
        check(digest2 != digest, "the overlay was redrawn with the new alpha")
        Select(driver.find_element(By.ID, "colormap")).select_by_visible_text("viridis")
        digest3, _, _, _ = canvas_digest(driver)
        check(digest3 != digest2, "the overlay was redrawn with another colour map")
        check(explain_count(a.api) == before, "no request reached the server while redrawing")
        check(requests_made(driver) == 1, "the page made one request in all")

        # 4. Another method gives a new overlay.
        Select(driver.find_element(By.ID, "method")).select_by_visible_text("layercam")
        driver.find_element(By.ID, "explain").click()
        wait_text(driver, "#overlays figcaption", "layercam")
        check(canvas_digest(driver)[0] != digest3, "layercam drew a new overlay")
        check(explain_count(a.api) == before + 1, "one more request for the new method")
        pointer = driver.find_element(By.ID, "pointer").text
        check(not CELL.search(pointer), f"the value read from the old overlay is gone: {pointer!r}")
        # The screenshot shows the keyboard cursor and the value it reads.
        driver.find_element(By.CSS_SELECTOR, "#overlays canvas").send_keys(Keys.ARROW_RIGHT)
        check("layercam" in read_cell_text(driver), "the keyboard reads the new overlay")
        driver.save_screenshot(a.screenshot)
        print("screenshot:", a.screenshot)

        # 5. Compare: the five methods, then two layers, side by side.
        check_compare(driver, a.api)

        # 6. Downloads: the overlay PNG and the JSON answer are real files.
        check_downloads(driver, downloads)

        # 7. A text file: the problem's title and detail are on the page.
        driver.find_element(By.ID, "file").send_keys(a.text)
        driver.find_element(By.ID, "explain").click()
        title = wait_text(driver, "#problem-title")
        detail = driver.find_element(By.ID, "problem-detail").text
        check(title == "Invalid image", f"the problem's title is shown: {title!r}")
        check(len(detail) > 10, f"the problem's detail is shown: {detail!r}")

        # 8. Drag and drop, and paste, choose the image as the file input does.
        check_drop_and_paste(driver, a.api, a.photo, label)

        # 9. A phone-width window.
        check_phone_width(driver, a.api, a.photo)

        # 10. A page on another origin reads x-class-label of an overlay PNG.
        driver.get(a.page + "?api=" + a.api)
        out = wait_text(driver, "#out", "{")
        got = json.loads(out)
        check(got["status"] == 200 and got["type"] == "image/png" and got["size"] > 1000,
              f"the cross-origin page got the PNG: {got}")
        check(got["label"] == expected["explanations"][0]["label"],
              f"and read x-class-label {got['label']!r}")
        check(got["method"] == "gradcam" and got["total"], "and x-method, x-total-time")

        # 11. With API keys: the 401's message without the key, the answer with it.
        driver.get(a.keyed_api + "/")
        driver.execute_script("sessionStorage.clear()")
        driver.get(a.keyed_api + "/")
        driver.find_element(By.ID, "file").send_keys(a.photo)
        driver.find_element(By.ID, "explain").click()
        title = wait_text(driver, "#problem-title")
        detail = driver.find_element(By.ID, "problem-detail").text
        check(title == "API key required" and "Bearer" in detail, f"the 401 is shown: {title!r}: {detail!r}")
        driver.find_element(By.ID, "key").send_keys(a.key)
        driver.find_element(By.ID, "explain").click()
        wait_text(driver, "#predictions li", "%")
        check(not driver.find_element(By.ID, "problem").is_displayed(), "the problem is gone")
        stored = driver.execute_script("return sessionStorage.getItem('gradcam-key')")
        check(stored == a.key, "the key is kept in session storage")

        # 12. Another model (not ImageNet's ResNet-50): the page and the API reference say what
        # that model is, and explaining a photograph names one of its classes.
        driver.get(a.own_api + "/")
        check_model_facts(driver, a.own_api)
        label = upload_and_explain(driver, a.own_api, a.photo).split(" (")[0]
        names = {l["label"] for l in get_json(a.own_api + "/labels")["labels"]}
        check(label in names, f"the prediction {label!r} is one of the model's classes")
        info = get_json(a.own_api + "/info")
        driver.get(a.own_api + "/docs")
        described = wait_text(driver, ".info", f"A {info['model']} ({info['classes']} classes)")
        check("ImageNet" not in described and "ResNet-50" not in described,
              "the API reference describes the loaded model")
    finally:
        driver.quit()
        shutil.rmtree(downloads, ignore_errors=True)
    print(f"figure: browser test {time.monotonic() - started:.1f} s")
    print("all checks passed")


def measure(a):
    """Uploads the photograph --warmup + --runs times from one page and reports the page's own
    figures (performance.now() in the page): upload to overlay, and its split."""
    driver = start_browser()
    rows = []
    try:
        driver.get(a.api + "/")
        driver.find_element(By.ID, "file").send_keys(a.photo)
        for n in range(1, a.warmup + a.runs + 1):
            driver.find_element(By.ID, "explain").click()
            wait_answered(driver, n)
            if driver.find_element(By.ID, "problem").is_displayed():
                raise AssertionError("refused: " + driver.find_element(By.ID, "problem").text)
            split = json.loads(driver.find_element(By.TAG_NAME, "body").get_attribute("data-upload-to-overlay"))
            # The server's own stages, from the answer the page holds.
            server = driver.execute_script("return state.json.timings")
            for stage in ("decode", "queue", "inference", "render"):
                split[f"server_{stage}_ms"] = server[f"{stage}_ms"]
            size = driver.execute_script(
                """const e = performance.getEntriesByType('resource').filter((r) => r.name.includes('/explain'));
                performance.clearResourceTimings();
                return e.length ? e[e.length - 1].encodedBodySize : null;""")
            if n > a.warmup:
                rows.append(split)
                print(f"run {n - a.warmup}: " + ", ".join(f"{k} {v:.1f}" for k, v in split.items())
                      + f", answer {size} bytes")
        _, _, w, h = canvas_digest(driver)
        label = driver.find_element(By.CSS_SELECTOR, "#predictions li").text
    finally:
        driver.quit()
    print(f"photo: {a.photo}, overlay {w}x{h}, first prediction {label!r}, {a.runs} runs after {a.warmup} warm-up")
    names = {
        "total_ms": "upload to overlay",
        "server_ms": "  server (timings.total_ms)",
        "server_decode_ms": "    decode",
        "server_queue_ms": "    queue",
        "server_inference_ms": "    inference",
        "server_render_ms": "    render",
        "network_ms": "  upload + download",
        "read_ms": "  JSON parse + photo decode",
        "draw_ms": "  drawing",
    }
    print(f"{'ms':<30} {'p50':>7} {'min':>7} {'max':>7}")
    for key, name in names.items():
        v = [r[key] for r in rows]
        print(f"{name:<30} {statistics.median(v):7.1f} {min(v):7.1f} {max(v):7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
