//! The inference protocols through the clients people use on those platforms, against the real
//! binary and model: tritonclient (HTTP, binary tensor data on and off; gRPC) and KServe's
//! Python SDK (REST v1 and v2; gRPC) must give what `/explain` and `/predict` give for the same photographs and
//! options, several photographs in one request, every output alone, and refuse bad input in
//! each protocol's shape (tests/protocols.py does the checking).

use crate::common::server::Server;
use std::process::Command;

#[test]
fn the_platforms_clients_get_what_explain_gives() {
    let server = Server::start(&["--grpc-port", "0"]);
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("python")
        .arg(format!("{root}/tests/protocols.py"))
        .arg(server.url(""))
        .arg(server.grpc_target())
        .arg("resnet50")
        .arg(format!("{root}/tests/fixtures/chelsea.png"))
        .arg(format!("{root}/tests/fixtures/coffee.jpg"))
        .output()
        .expect("python with tritonclient and kserve is installed by scripts/setup.sh");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{report}");
    assert!(
        out.status.success(),
        "a protocol client disagreed:\n{report}"
    );
    assert!(
        report.contains("all protocol clients agree with /explain"),
        "{report}"
    );
}
