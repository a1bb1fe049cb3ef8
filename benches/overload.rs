//! Overload run against a running server (scripts/overload.sh starts one and runs this).
//!
//! 1. Reference: one `/explain` of the photo, alone.
//! 2. Saturation: `OVERLOAD_CLIENTS` closed-loop clients post the photo for
//!    `OVERLOAD_SATURATION_SECS`; the rate of 200s is the saturation throughput.
//! 3. Overload: an open-loop schedule (requests leave on time whether or not earlier ones were
//!    answered): good requests at `OVERLOAD_FACTOR` x saturation, plus one malformed request
//!    for every two good ones (a third of all), cycling through several kinds of bad input.
//!    The first `OVERLOAD_WARMUP_SECS` fill the queue and the server's memory to their
//!    overload level; the figures are for the `OVERLOAD_SECS` after that.
//!
//! Checked, for every request: each good one is answered 200 with the reference's class and
//! heatmap, or refused with 429/503 and Retry-After; each malformed one gets its own 4xx and
//! problem type; no other status; readiness probes every 250 ms all answered 200. Then:
//! readiness true at the end, and resident memory flat
//! (at the end no more than 10% above the highest level seen until the middle of the measured
//! window). Prints the figures and exits 1 on any violation.
//!
//! Environment: OVERLOAD_URL (base URL), OVERLOAD_PHOTO (a JPEG), OVERLOAD_PID (the server's
//! process id, for memory), OVERLOAD_SECS (60), OVERLOAD_WARMUP_SECS (15), OVERLOAD_FACTOR
//! (1.5), OVERLOAD_CLIENTS (16), OVERLOAD_SATURATION_SECS (20).

use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One kind of malformed request and what the server must answer.
struct Bad {
    name: &'static str,
    path: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
    status: u16,
    problem: &'static str,
}

fn bad_requests(photo: &[u8]) -> Vec<Bad> {
    // A JPEG header claiming 65000 x 65000 pixels.
    let mut huge = vec![0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x11, 0x08];
    huge.extend_from_slice(&65000u16.to_be_bytes());
    huge.extend_from_slice(&65000u16.to_be_bytes());
    huge.extend_from_slice(&[3, 1, 0x11, 0, 2, 0x11, 1, 3, 0x11, 1]);
    huge.extend_from_slice(&[
        0xFF, 0xDA, 0x00, 0x0C, 3, 1, 0x00, 2, 0x11, 3, 0x11, 0x00, 0x3F, 0x00, 0xFF, 0xD9,
    ]);
    let mut noise = vec![0u8; 4096];
    let mut x = 0x2545F4914F6CDD1Du64;
    for b in &mut noise {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let form =
        b"--B\r\nContent-Disposition: form-data; name=\"method\"\r\n\r\ngradcam\r\n--B--\r\n";
    let bad = |name, path, content_type, body: &[u8], status, problem| Bad {
        name,
        path,
        content_type,
        body: body.to_vec(),
        status,
        problem,
    };
    vec![
        bad(
            "random bytes",
            "/explain",
            "image/jpeg",
            &noise,
            422,
            "invalid_image",
        ),
        bad(
            "truncated jpeg",
            "/explain",
            "image/jpeg",
            &photo[..photo.len() / 2],
            422,
            "invalid_image",
        ),
        bad(
            "zero bytes",
            "/explain",
            "image/png",
            b"",
            422,
            "invalid_image",
        ),
        bad(
            "huge claim",
            "/explain",
            "image/jpeg",
            &huge,
            422,
            "image_too_large",
        ),
        bad(
            "unknown method",
            "/explain?method=scorecam",
            "image/jpeg",
            photo,
            422,
            "invalid_option",
        ),
        bad(
            "text body",
            "/explain",
            "text/plain",
            b"hello",
            415,
            "unsupported_media_type",
        ),
        bad(
            "metadata url",
            "/explain",
            "application/json",
            br#"{"url":"http://169.254.169.254/latest/meta-data/"}"#,
            403,
            "forbidden_source",
        ),
        bad(
            "ftp url",
            "/explain",
            "application/json",
            br#"{"url":"ftp://example.com/cat.jpg"}"#,
            422,
            "invalid_url",
        ),
        bad(
            "form without image",
            "/explain",
            "multipart/form-data; boundary=B",
            form,
            400,
            "malformed_request",
        ),
    ]
}

struct Reference {
    class: u64,
    heatmap: Vec<f64>,
}

#[derive(Debug)]
struct Outcome {
    /// Sent during the warm-up (not counted in the figures, but checked).
    warmup: bool,
    /// `None` for a good request, else the malformed kind's index.
    bad: Option<usize>,
    status: u16,
    latency: Duration,
    /// What was wrong with the answer, if anything.
    violation: Option<String>,
}

async fn send(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> Result<(u16, Option<String>, bytes::Bytes), String> {
    let res = client
        .post(format!("{base}{path}"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .map_err(|e| format!("transport: {e}"))?;
    let status = res.status().as_u16();
    let retry = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = res.bytes().await.map_err(|e| format!("body: {e}"))?;
    Ok((status, retry, bytes))
}

/// The status of `/health/ready`; 0 when the server does not answer.
async fn ready_status(client: &reqwest::Client, base: &str) -> u16 {
    client
        .get(format!("{base}/health/ready"))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

fn check_good(
    reference: &Reference,
    status: u16,
    retry: &Option<String>,
    body: &[u8],
) -> Option<String> {
    match status {
        200 => {
            let v: Value = match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => return Some(format!("200 with a body that is not JSON: {e}")),
            };
            let e = &v["explanations"][0];
            if e["class_index"].as_u64() != Some(reference.class) {
                return Some(format!(
                    "class {} instead of {}",
                    e["class_index"], reference.class
                ));
            }
            let map: Vec<f64> =
                serde_json::from_value(e["heatmap"]["data"].clone()).unwrap_or_default();
            let scale = reference.heatmap.iter().fold(0f64, |m, x| m.max(x.abs()));
            let diff = map
                .iter()
                .zip(&reference.heatmap)
                .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
            if map.len() != reference.heatmap.len() || diff > 1e-4 * scale {
                return Some(format!("heatmap differs from the reference by {diff}"));
            }
            if e["overlay_png"].as_str().is_none_or(str::is_empty) {
                return Some("no overlay".into());
            }
            None
        }
        429 | 503 if retry.is_some() => None,
        s => Some(format!(
            "good request answered {s}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        )),
    }
}

fn check_bad(bad: &Bad, status: u16, body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    (status != bad.status || v["type"] != bad.problem).then(|| {
        format!(
            "{}: expected {} {}, got {status} {}",
            bad.name, bad.status, bad.problem, v["type"]
        )
    })
}

fn rss_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let base: String = env("OVERLOAD_URL", "http://127.0.0.1:8080".to_string());
    let photo_path: String = env("OVERLOAD_PHOTO", String::new());
    let pid: u32 = env("OVERLOAD_PID", 0);
    let secs: f64 = env("OVERLOAD_SECS", 60.0);
    let warmup: f64 = env("OVERLOAD_WARMUP_SECS", 15.0);
    let factor: f64 = env("OVERLOAD_FACTOR", 1.5);
    let clients: usize = env("OVERLOAD_CLIENTS", 16);
    let sat_secs: f64 = env("OVERLOAD_SATURATION_SECS", 20.0);
    let photo = Arc::new(std::fs::read(&photo_path).expect("OVERLOAD_PHOTO names a readable JPEG"));
    let bads = Arc::new(bad_requests(&photo));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .no_proxy()
        .build()
        .unwrap();

    // 1. Reference answer, alone.
    let (status, _, body) = send(&client, &base, "/explain", "image/jpeg", photo.to_vec())
        .await
        .expect("the server answers");
    assert_eq!(status, 200, "reference request");
    let v: Value = serde_json::from_slice(&body).unwrap();
    let reference = Arc::new(Reference {
        class: v["explanations"][0]["class_index"].as_u64().unwrap(),
        heatmap: serde_json::from_value(v["explanations"][0]["heatmap"]["data"].clone()).unwrap(),
    });
    println!(
        "photo {} bytes, reference class {}, answer {} bytes",
        photo.len(),
        reference.class,
        body.len()
    );

    // 2. Saturation, closed loop.
    let until = Instant::now() + Duration::from_secs_f64(sat_secs);
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (client, base, photo) = (client.clone(), base.clone(), photo.clone());
            tokio::spawn(async move {
                let mut ok = 0u64;
                while Instant::now() < until {
                    if let Ok((200, _, _)) =
                        send(&client, &base, "/explain", "image/jpeg", photo.to_vec()).await
                    {
                        ok += 1;
                    }
                }
                ok
            })
        })
        .collect();
    let mut answered = 0;
    for t in tasks {
        answered += t.await.unwrap();
    }
    let saturation = answered as f64 / started.elapsed().as_secs_f64();
    let good_rate = factor * saturation;
    let total_rate = good_rate * 1.5;
    println!(
        "saturation: {saturation:.2} req/s ({clients} closed-loop clients, {sat_secs} s, RSS {:.0} MiB); \
         offering {good_rate:.2} good + {:.2} malformed req/s for {warmup} s of warm-up and {secs} s measured",
        rss_mib(pid, "VmRSS:"),
        total_rate - good_rate
    );

    // 3. Overload, open loop: request i leaves at i / total_rate; every third is malformed.
    let n_warm = (warmup * total_rate).round() as usize;
    let n = n_warm + (secs * total_rate).round() as usize;
    let mut handles = Vec::with_capacity(n);
    let (mut rss_before, mut rss_max, mut t_measured) = (f64::NAN, 0f64, Instant::now());
    // Highest RSS until the middle of the measured window: the level a leak would grow past.
    let mut rss_first_half = 0f64;
    let n_mid = n_warm + (n - n_warm) / 2;
    // RSS every 10 s of the schedule, warm-up included.
    let mut trace: Vec<f64> = Vec::new();
    let per_10s = (10.0 * total_rate).round().max(1.0) as usize;
    // Readiness probes all along, as a load balancer sends them: they must stay 200 and fast.
    let probing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let probes = {
        let (client, base, probing) = (client.clone(), base.clone(), probing.clone());
        tokio::spawn(async move {
            let mut seen: Vec<(u16, Duration)> = Vec::new();
            while probing.load(std::sync::atomic::Ordering::SeqCst) {
                let sent = Instant::now();
                let status = ready_status(&client, &base).await;
                seen.push((status, sent.elapsed()));
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            seen
        })
    };
    let t0 = Instant::now();
    for i in 0..n {
        let at = t0 + Duration::from_secs_f64(i as f64 / total_rate);
        tokio::time::sleep_until(at.into()).await;
        if i == n_warm {
            rss_before = rss_mib(pid, "VmRSS:");
            t_measured = Instant::now();
        }
        if i % per_10s == 0 {
            trace.push(rss_mib(pid, "VmRSS:"));
        }
        if i % 25 == 0 {
            let r = rss_mib(pid, "VmRSS:");
            if i > n_warm {
                rss_max = rss_max.max(r);
            }
            if i <= n_mid {
                rss_first_half = rss_first_half.max(r);
            }
        }
        let (client, base, photo, bads, reference) = (
            client.clone(),
            base.clone(),
            photo.clone(),
            bads.clone(),
            reference.clone(),
        );
        let bad = (i % 3 == 2).then_some((i / 3) % bads.len());
        let warmup = i < n_warm;
        handles.push(tokio::spawn(async move {
            let sent = Instant::now();
            let result = match bad {
                None => send(&client, &base, "/explain", "image/jpeg", photo.to_vec()).await,
                Some(k) => {
                    let b = &bads[k];
                    send(&client, &base, b.path, b.content_type, b.body.clone()).await
                }
            };
            let latency = sent.elapsed();
            match result {
                Err(e) => Outcome {
                    warmup,
                    bad,
                    status: 0,
                    latency,
                    violation: Some(e),
                },
                Ok((status, retry, body)) => Outcome {
                    warmup,
                    bad,
                    status,
                    latency,
                    violation: match bad {
                        None => check_good(&reference, status, &retry, &body),
                        Some(k) => check_bad(&bads[k], status, &body),
                    },
                },
            }
        }));
    }
    let mut outcomes = Vec::with_capacity(n);
    for h in handles {
        outcomes.push(h.await.unwrap());
    }
    probing.store(false, std::sync::atomic::Ordering::SeqCst);
    let probes = probes.await.unwrap();
    let rss_end = rss_mib(pid, "VmRSS:");
    let elapsed = t_measured.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = rss_mib(pid, "VmRSS:");
    let rss_peak = rss_mib(pid, "VmHWM:");
    let ready = ready_status(&client, &base).await;

    // Report.
    let mut by_status: BTreeMap<(&str, u16), usize> = BTreeMap::new();
    let measured: Vec<&Outcome> = outcomes.iter().filter(|o| !o.warmup).collect();
    for o in &measured {
        let kind = o.bad.map_or("good", |k| bads[k].name);
        *by_status.entry((kind, o.status)).or_default() += 1;
    }
    println!(
        "measured: {} requests sent in {secs} s ({:.2} req/s offered), after {n_warm} in the warm-up; \
         the last answer came {elapsed:.1} s after the first",
        measured.len(),
        measured.len() as f64 / secs
    );
    for ((kind, status), count) in &by_status {
        println!("  {kind:>18} {status}: {count}");
    }
    let lat = |f: &dyn Fn(&Outcome) -> bool| {
        let mut v: Vec<Duration> = measured
            .iter()
            .filter(|o| f(o))
            .map(|o| o.latency)
            .collect();
        v.sort();
        (v.len(), percentile(&v, 0.5), percentile(&v, 0.99))
    };
    for (label, f) in [
        (
            "good, answered 200",
            &(|o: &Outcome| o.bad.is_none() && o.status == 200) as &dyn Fn(&Outcome) -> bool,
        ),
        ("good, refused 429/503", &|o: &Outcome| {
            o.bad.is_none() && (o.status == 429 || o.status == 503)
        }),
        ("malformed", &|o: &Outcome| o.bad.is_some()),
    ] {
        let (count, p50, p99) = lat(f);
        println!("  {label:>22}: {count:5}  p50 {p50:8.1} ms  p99 {p99:8.1} ms");
    }
    let served = measured
        .iter()
        .filter(|o| o.bad.is_none() && o.status == 200)
        .count();
    println!(
        "served {:.2} good req/s ({:.2}x saturation); RSS (MiB) at the end of the warm-up \
         {rss_before:.0}, highest until mid-run {rss_first_half:.0}, highest while measured \
         {rss_max:.0}, at the end {rss_end:.0}, 2 s later \
         {rss_after:.0}, process peak {rss_peak:.0}; \
         readiness at the end: {ready}",
        served as f64 / elapsed,
        served as f64 / elapsed / saturation,
    );

    println!(
        "RSS every 10 s from the start of the warm-up (MiB): {}",
        trace
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    );

    let mut probe_times: Vec<Duration> = probes.iter().map(|p| p.1).collect();
    probe_times.sort();
    let probes_failed = probes.iter().filter(|p| p.0 != 200).count();
    println!(
        "readiness probes during the run: {} ({} not 200), p50 {:.1} ms, p99 {:.1} ms",
        probes.len(),
        probes_failed,
        percentile(&probe_times, 0.5),
        percentile(&probe_times, 0.99)
    );

    let violations: Vec<&String> = outcomes
        .iter()
        .filter_map(|o| o.violation.as_ref())
        .collect();
    let mut failed = false;
    if !violations.is_empty() {
        failed = true;
        println!("VIOLATIONS: {}", violations.len());
        for v in violations.iter().take(10) {
            println!("  {v}");
        }
    }
    if probes_failed > 0 {
        failed = true;
        println!("VIOLATION: {probes_failed} readiness probes were not answered 200");
    }
    if ready != 200 {
        failed = true;
        println!("VIOLATION: readiness {ready} at the end");
    }
    // Memory rises with the work in flight (the allocator keeps what it once needed); a leak
    // keeps rising. Flat: at the end no more than 10% above the highest level of the first half.
    if rss_end > rss_first_half * 1.1 {
        failed = true;
        println!(
            "VIOLATION: resident memory grew from {rss_first_half:.0} (highest in the first half) \
             to {rss_end:.0} MiB"
        );
    }
    if failed {
        std::process::exit(1);
    }
    println!("overload: OK");
}
