//! The URL fetcher against a stub DNS resolver and loopback origins: names with forbidden,
//! mixed or changing answers, oversized and slow bodies. A canary origin on another loopback
//! address counts connections and must stay at zero.

use crate::common::origin::Origin;
use gradcam_serve::fetch::addr::AddressPolicy;
use gradcam_serve::fetch::{FetchConfig, FetchError, Fetcher, Lookup};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

fn fetcher(ports: &[u16], lookup: Lookup, timeout: Duration) -> Fetcher {
    let config = FetchConfig {
        timeout,
        max_bytes: 1000,
        allowed_ports: ports.to_vec(),
        policy: AddressPolicy {
            allow: vec!["127.0.0.1/32".parse().unwrap()],
        },
    };
    Fetcher::with_lookup(config, lookup)
}

/// Answers each lookup with the next list in `answers` (the last one repeats); counts lookups.
fn stub(answers: Vec<Vec<&'static str>>, count: Arc<AtomicUsize>) -> Lookup {
    Arc::new(move |_host: String| {
        let n = count.fetch_add(1, Ordering::SeqCst);
        let ips: Vec<IpAddr> = answers[n.min(answers.len() - 1)]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        Box::pin(async move { Ok(ips) })
    })
}

fn forbidden(r: Result<bytes::Bytes, FetchError>) -> String {
    match r {
        Err(FetchError::Forbidden(m)) => m,
        other => panic!("expected a forbidden source, got {other:?}"),
    }
}

#[tokio::test]
async fn names_with_any_forbidden_answer_are_refused_before_connecting() {
    let canary = Origin::ok("127.0.0.2", b"secret", None);
    let port = canary.addr.port();
    let lookups = Arc::new(AtomicUsize::new(0));
    for answers in [
        vec!["127.0.0.2"],
        vec!["93.184.216.34", "127.0.0.2"],
        vec!["10.1.1.1"],
        vec!["::1"],
    ] {
        let f = fetcher(
            &[port],
            stub(vec![answers.clone()], lookups.clone()),
            Duration::from_secs(5),
        );
        let m = forbidden(f.fetch(&format!("http://images.test:{port}/cat.jpg")).await);
        assert!(
            m.contains("images.test resolves to a forbidden address"),
            "{answers:?}: {m}"
        );
        assert!(!m.contains("secret"));
    }
    assert_eq!(canary.hits(), 0);
}

#[tokio::test]
async fn a_name_is_resolved_once_so_rebinding_cannot_redirect_the_connection() {
    let origin = Origin::ok("127.0.0.1", b"image bytes", None);
    let canary = Origin::ok("127.0.0.2", b"secret", None);
    assert_ne!(origin.addr.port(), canary.addr.port());
    // First answer: the allowed origin; any later answer: the canary. Both ports allowed.
    let lookups = Arc::new(AtomicUsize::new(0));
    let lookup = stub(vec![vec!["127.0.0.1"], vec!["127.0.0.2"]], lookups.clone());
    let f = fetcher(
        &[origin.addr.port(), canary.addr.port()],
        lookup,
        Duration::from_secs(5),
    );
    let body = f
        .fetch(&format!(
            "http://rebind.test:{}/cat.jpg",
            origin.addr.port()
        ))
        .await
        .unwrap();
    assert_eq!(&body[..], b"image bytes");
    assert_eq!(
        lookups.load(Ordering::SeqCst),
        1,
        "exactly one lookup per fetch"
    );
    assert_eq!(canary.hits(), 0);
}

#[tokio::test]
async fn bodies_over_the_cap_are_cut_off_while_reading() {
    // No Content-Length: the cap must hold while streaming (an endless body).
    let endless = Origin::answer("127.0.0.1", |_| {
        let mut r = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec();
        r.extend(std::iter::repeat_n(b'x', 1_000_000));
        r
    });
    let f = fetcher(
        &[endless.addr.port()],
        stub(vec![vec!["127.0.0.1"]], Default::default()),
        Duration::from_secs(5),
    );
    match f.fetch(&format!("http://{}/big", endless.addr)).await {
        Err(FetchError::TooLarge(1000)) => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_source_that_trickles_times_out() {
    // Headers at once, then one byte per second.
    let slow = Origin::stream("127.0.0.1", |_, s| {
        use std::io::Write;
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n");
        for _ in 0..30 {
            if s.write_all(b"x").is_err() {
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    let addr = slow.addr;
    let f = fetcher(
        &[addr.port()],
        stub(vec![vec!["127.0.0.1"]], Default::default()),
        Duration::from_millis(1500),
    );
    let started = std::time::Instant::now();
    match f.fetch(&format!("http://{addr}/slow")).await {
        Err(FetchError::Timeout) => {}
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[tokio::test]
async fn proxy_settings_in_the_environment_are_ignored() {
    // A proxy that would be used if the fetcher honoured the environment.
    let proxy = Origin::ok("127.0.0.2", b"from the proxy", None);
    let origin = Origin::ok("127.0.0.1", b"direct", None);
    // SAFETY: tests in this binary run in their own processes under nextest; no other thread
    // reads the environment while this one writes it.
    unsafe {
        std::env::set_var("HTTP_PROXY", format!("http://{}", proxy.addr));
        std::env::set_var("http_proxy", format!("http://{}", proxy.addr));
    }
    let f = fetcher(
        &[origin.addr.port()],
        stub(vec![vec!["127.0.0.1"]], Default::default()),
        Duration::from_secs(5),
    );
    let body = f
        .fetch(&format!("http://{}/cat.jpg", origin.addr))
        .await
        .unwrap();
    assert_eq!(&body[..], b"direct");
    assert_eq!(proxy.hits(), 0);
}
