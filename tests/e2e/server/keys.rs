//! API keys: with keys set, /explain and /predict need `Authorization: Bearer KEY` (401
//! problems otherwise, counted by reason), the operational routes stay open unless named, and
//! no key reaches the log.

use super::problem;
use crate::common::server::{Server, client, post_fixture};

const FILE_KEY: &str = "file-key-8d1f0c";
const FLAG_KEY: &str = "flag-key-51a9e7";

fn keyed_server(extra: &[&str]) -> (Server, std::path::PathBuf) {
    let file = std::env::temp_dir().join(format!(
        "gradcam-test-keys-{}-{}",
        std::process::id(),
        extra.len()
    ));
    std::fs::write(&file, format!("# test keys\n{FILE_KEY}\n")).unwrap();
    let mut args = vec![
        "--api-keys-file",
        file.to_str().unwrap(),
        "--api-keys",
        FLAG_KEY,
    ];
    args.extend_from_slice(extra);
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (Server::start(&args), file)
}

#[test]
fn guarded_routes_need_a_valid_key_and_the_rest_stay_open() {
    let (server, file) = keyed_server(&[]);
    for route in ["/explain", "/predict"] {
        let url = server.url(route);
        let res = post_fixture(&url, "coffee.jpg").send().unwrap();
        assert_eq!(
            res.headers()["www-authenticate"],
            "Bearer realm=\"gradcam-serve\""
        );
        let body = problem(route, res, 401, "unauthorized");
        assert!(
            body["detail"].as_str().unwrap().contains("Bearer"),
            "{body}"
        );
        let res = post_fixture(&url, "coffee.jpg")
            .header("authorization", "Bearer not-a-key")
            .send()
            .unwrap();
        assert!(
            res.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("invalid_token")
        );
        problem(route, res, 401, "unauthorized");
        let res = post_fixture(&url, "coffee.jpg")
            .header("authorization", FILE_KEY)
            .send()
            .unwrap();
        problem("no Bearer", res, 401, "unauthorized");
        for key in [FILE_KEY, FLAG_KEY] {
            let res = post_fixture(&url, "coffee.jpg")
                .header("authorization", format!("Bearer {key}"))
                .send()
                .unwrap();
            assert_eq!(res.status(), 200, "{route} with a key");
        }
    }
    for route in [
        "/health/live",
        "/health/ready",
        "/metrics",
        "/info",
        "/labels",
        "/openapi.yaml",
    ] {
        let res = client().get(server.url(route)).send().unwrap();
        assert_eq!(res.status(), 200, "{route} stays open");
    }
    assert_eq!(
        server.metric("gradcam_auth_failures_total{reason=\"missing\"}"),
        2.0
    );
    assert_eq!(
        server.metric("gradcam_auth_failures_total{reason=\"invalid\"}"),
        2.0
    );
    assert_eq!(
        server.metric("gradcam_auth_failures_total{reason=\"malformed\"}"),
        2.0
    );
    assert_eq!(
        server.metric("gradcam_rejections_total{reason=\"unauthorized\"}"),
        6.0
    );
    let log = server.log.lock().unwrap().join("\n");
    assert!(
        !log.contains(FILE_KEY) && !log.contains(FLAG_KEY),
        "a key reached the log"
    );
    std::fs::remove_file(file).unwrap();
}

#[test]
fn operators_may_guard_the_operational_routes_too() {
    let (server, file) = keyed_server(&["--api-key-paths", "/explain,/predict,/metrics,/info"]);
    for route in ["/metrics", "/info"] {
        let res = client().get(server.url(route)).send().unwrap();
        problem(route, res, 401, "unauthorized");
        let res = client()
            .get(server.url(route))
            .bearer_auth(FLAG_KEY)
            .send()
            .unwrap();
        assert_eq!(res.status(), 200, "{route} with a key");
    }
    assert_eq!(
        client()
            .get(server.url("/health/ready"))
            .send()
            .unwrap()
            .status(),
        200
    );
    std::fs::remove_file(file).unwrap();
}
