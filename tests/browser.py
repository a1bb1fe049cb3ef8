"""Drives the playground in headless Chromium (Debian's chromium and chromium-driver) with
selenium. tests/browser.rs starts the servers and the cross-origin page and runs this script;
every check raises on failure. Waits are bounded (60 s each), so nothing hangs."""

import argparse
import hashlib
import json
import shutil
import sys
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
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


def canvas_digest(driver, index=0):
    """A digest of the pixels of the index-th overlay canvas and whether it has any variety."""
    data = driver.execute_script(
        """const c = document.querySelectorAll('#overlays canvas')[arguments[0]];
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let lo = 255, hi = 0; for (let i = 0; i < d.length; i += 4) { lo = Math.min(lo, d[i]); hi = Math.max(hi, d[i]); }
        return [Array.from(d.filter((_, i) => i % 97 == 0)).join(','), hi - lo, c.width, c.height];""",
        index,
    )
    return hashlib.sha256(data[0].encode()).hexdigest(), data[1], data[2], data[3]


def wait_text(driver, css, needle=""):
    WebDriverWait(driver, WAIT).until(
        lambda d: (e := d.find_elements(By.CSS_SELECTOR, css))
        and e[0].is_displayed()
        and needle in e[0].text
        and e[0].text.strip() != ""
    )
    return driver.find_element(By.CSS_SELECTOR, css).text


def check(condition, what):
    if not condition:
        raise AssertionError(what)
    print("ok:", what)


def main():
    p = argparse.ArgumentParser()
    for name in ("--api", "--keyed-api", "--key", "--page", "--photo", "--text", "--screenshot"):
        p.add_argument(name, required=True)
    a = p.parse_args()

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1200,1500", "--no-proxy-server"):
        options.add_argument(flag)
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(WAIT)
    driver.set_script_timeout(WAIT)
    started = time.monotonic()
    try:
        # 1. Upload a photograph: predictions and an overlay appear.
        driver.get(a.api + "/")
        driver.find_element(By.ID, "file").send_keys(a.photo)
        driver.find_element(By.ID, "explain").click()
        first = wait_text(driver, "#predictions li")
        check("%" in first, f"a prediction with its probability is shown: {first!r}")
        caption = wait_text(driver, "#overlays figcaption")
        label = first.split(" (")[0]
        check(caption.startswith(label), f"the overlay is labelled with the class: {caption!r}")
        digest, spread, w, h = canvas_digest(driver)
        check(spread > 30 and (w, h) == (640, 427), f"the overlay canvas is drawn ({w}x{h}, spread {spread})")
        ms = float(driver.find_element(By.TAG_NAME, "body").get_attribute("data-upload-to-overlay-ms"))
        print(f"figure: upload to overlay in the browser: {ms:.0f} ms (rocket.jpg, 640x427)")

        # 2. The alpha slider (moved with the keyboard) redraws without a new request.
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
        check(driver.find_element(By.TAG_NAME, "body").get_attribute("data-requests") == "1",
              "the page made one request in all")

        # 3. Another method gives a new overlay.
        Select(driver.find_element(By.ID, "method")).select_by_visible_text("layercam")
        driver.find_element(By.ID, "explain").click()
        wait_text(driver, "#overlays figcaption", "layercam")
        check(canvas_digest(driver)[0] != digest3, "layercam drew a new overlay")
        check(explain_count(a.api) == before + 1, "one more request for the new method")
        driver.save_screenshot(a.screenshot)
        print("screenshot:", a.screenshot)

        # 4. A text file: the problem's title and detail are on the page.
        driver.find_element(By.ID, "file").send_keys(a.text)
        driver.find_element(By.ID, "explain").click()
        title = wait_text(driver, "#problem-title")
        detail = driver.find_element(By.ID, "problem-detail").text
        check(title == "Invalid image", f"the problem's title is shown: {title!r}")
        check(len(detail) > 10, f"the problem's detail is shown: {detail!r}")

        # 5. A page on another origin reads x-class-label of an overlay PNG.
        expected = json.loads(urllib.request.urlopen(urllib.request.Request(
            a.api + "/explain?overlay=false", data=open(a.photo, "rb").read(),
            headers={"Content-Type": "image/jpeg"}), timeout=120).read())
        driver.get(a.page + "?api=" + a.api)
        out = wait_text(driver, "#out", "{")
        got = json.loads(out)
        check(got["status"] == 200 and got["type"] == "image/png" and got["size"] > 1000,
              f"the cross-origin page got the PNG: {got}")
        check(got["label"] == expected["explanations"][0]["label"],
              f"and read x-class-label {got['label']!r}")
        check(got["method"] == "gradcam" and got["total"], "and x-method, x-total-time")

        # 6. With API keys: the 401's message without the key, the answer with it.
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
    finally:
        driver.quit()
    print(f"figure: browser test {time.monotonic() - started:.1f} s")
    print("all checks passed")


if __name__ == "__main__":
    sys.exit(main())
