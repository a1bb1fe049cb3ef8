//! The playground in a real browser: headless Chromium driven through its WebDriver
//! (chromium-driver, from Debian) by tests/browser.py (selenium, from the test environment),
//! against the real server binary: upload, the keyboard reading the map, redrawing, compare,
//! downloads, drop and paste, a refused file, a phone-width window. A page on another loopback
//! origin calls `/explain` for the overlay PNG and reads `x-class-label`; a second server with
//! API keys shows its 401 on the page until the key is typed in; a third, serving a 7-class
//! ResNet-18 with its own labels, has a page and an API reference that say so.

use crate::common::origin::Origin;
use crate::common::server::Server;
use std::process::Command;

/// The page a web client on another origin would serve: it fetches a photograph from its own
/// origin, posts it to the API named in its query string for the overlay PNG, and shows the
/// headers it could read.
const CROSS_ORIGIN_PAGE: &str = r#"<!doctype html><html><body><p id="out">waiting</p><script>
(async () => {
  const api = new URLSearchParams(location.search).get('api');
  const photo = await (await fetch('/photo.jpg')).blob();
  const res = await fetch(api + '/explain', { method: 'POST', body: photo,
    headers: { 'Content-Type': 'image/jpeg', Accept: 'image/png' } });
  const png = await res.blob();
  document.getElementById('out').textContent = JSON.stringify({ status: res.status,
    type: png.type, size: png.size, label: res.headers.get('x-class-label'),
    index: res.headers.get('x-class-index'), method: res.headers.get('x-method'),
    total: res.headers.get('x-total-time') });
})().catch((e) => { document.getElementById('out').textContent = 'error: ' + e; });
</script></body></html>"#;

#[test]
fn the_playground_works_in_headless_chromium() {
    let photo = std::fs::read(crate::common::fixture("rocket.jpg")).unwrap();
    let page = Origin::answer("127.0.0.1", move |path| {
        let (kind, body) = if path.starts_with("/photo.jpg") {
            ("image/jpeg", photo.clone())
        } else {
            ("text/html", CROSS_ORIGIN_PAGE.as_bytes().to_vec())
        };
        let mut res = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        res.extend_from_slice(&body);
        res
    });
    let page_origin = format!("http://{}", page.addr);
    let open = Server::start(&["--cors-origins", &page_origin]);
    let keyed = Server::start(&["--api-keys", "browser-test-key"]);
    // A model that is not ImageNet's ResNet-50: the family reference's 7-class ResNet-18.
    let family = crate::common::generated_dir("GRADCAM_TEST_FAMILY").join("ckpt");
    let own = Server::start_with(
        &family.join("resnet18_7.safetensors"),
        &["--labels", family.join("labels7.txt").to_str().unwrap()],
    );
    let screenshot = std::env::var("GRADCAM_SCREENSHOT").unwrap_or_else(|_| {
        std::env::temp_dir()
            .join("gradcam-playground.png")
            .display()
            .to_string()
    });
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("python")
        .arg(format!("{root}/tests/browser.py"))
        .args(["--api", &open.url("")])
        .args(["--keyed-api", &keyed.url(""), "--key", "browser-test-key"])
        .args(["--own-api", &own.url("")])
        .args(["--page", &format!("{page_origin}/")])
        .args(["--photo", &format!("{root}/tests/fixtures/rocket.jpg")])
        .args(["--text", &format!("{root}/README.md")])
        .args(["--screenshot", &screenshot])
        .output()
        .expect("python with selenium is installed by scripts/setup.sh; run scripts/test.sh");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{report}");
    assert!(out.status.success(), "the browser test failed:\n{report}");
    assert!(report.contains("all checks passed"), "{report}");
}
