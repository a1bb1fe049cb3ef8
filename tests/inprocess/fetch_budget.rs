//! The URL form under the pixel budget: fetched bytes count (a third of a pixel each) from the
//! moment they arrive, all at once when the origin announces a length, and the image's pixels
//! are added to them before decoding.

use crate::common::origin::Origin;
use crate::support::{detail, fetching_app, fixture_bytes, post_json, problem, send, until};
use gradcam_serve::fetch::Lookup;
use serde_json::json;
use std::io::Write;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// An origin on loopback: `/rocket.jpg` the photo with its length; `/announced` a head that
/// announces 300 000 bytes; `/stream` 150 000 bytes without a length, a pause of a second,
/// then 100 000 more.
fn origin() -> Origin {
    let photo = fixture_bytes("rocket.jpg");
    Origin::stream("127.0.0.1", move |path, conn| {
        let ok = "HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nConnection: close\r\n";
        let _ = match path {
            "/rocket.jpg" => {
                let mut a = format!("{ok}Content-Length: {}\r\n\r\n", photo.len()).into_bytes();
                a.extend_from_slice(&photo);
                conn.write_all(&a)
            }
            "/announced" => {
                conn.write_all(format!("{ok}Content-Length: 300000\r\n\r\n").as_bytes())
            }
            _ => {
                let _ = conn.write_all(format!("{ok}\r\n").as_bytes());
                let _ = conn.write_all(&vec![0xAB; 150_000]);
                std::thread::sleep(Duration::from_secs(1));
                conn.write_all(&vec![0xCD; 100_000])
            }
        };
    })
}

fn loopback() -> Lookup {
    Arc::new(|_host: String| {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        Box::pin(async move { Ok(vec![ip]) })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetched_bytes_are_held_in_the_budget_as_they_arrive() {
    let origin = origin();
    let port = origin.addr.port();
    let ports = port.to_string();
    // 65 536 pixels: 196 608 bytes of a fetch.
    let (app, state) = fetching_app(
        &[
            "--fetch-allow",
            "127.0.0.1/32",
            "--fetch-ports",
            &ports,
            "--max-inflight-pixels",
            "65536",
        ],
        loopback(),
    );
    let url = |path: &str| json!({ "url": format!("http://images.test:{port}{path}") });

    // The photo's 112 525 bytes fit; its 640x427 pixels beside them do not.
    let a = send(&app, post_json("/predict", &url("/rocket.jpg"))).await;
    let p = problem(
        "a fetched photo over the budget",
        &a,
        422,
        "image_too_large",
    );
    assert!(
        detail(&p).contains("640x427") && detail(&p).contains("65536"),
        "{p}"
    );

    // An announced length over what the budget can hold is refused before the body.
    let a = send(&app, post_json("/predict", &url("/announced"))).await;
    let p = problem("an announced length", &a, 422, "source_too_large");
    assert!(detail(&p).contains("196608"), "{p}");

    // Without a length, the bytes are reserved as they come: 150 000 bytes are 50 000 pixels
    // held during the pause; 250 000 in all do not fit.
    let metrics = state.metrics.clone();
    let pending = tokio::spawn({
        let app = app.clone();
        let doc = url("/stream");
        async move { send(&app, post_json("/predict", &doc)).await }
    });
    until("the first 150 000 bytes to be held", || {
        metrics.inflight_pixels.load(Ordering::SeqCst) >= 50_000
    })
    .await;
    let a = pending.await.unwrap();
    let p = problem(
        "a stream longer than the budget",
        &a,
        422,
        "source_too_large",
    );
    assert!(detail(&p).contains("196608"), "{p}");
    assert_eq!(
        metrics.inflight_pixels.load(Ordering::SeqCst),
        0,
        "the reservation ends with the request"
    );
}
