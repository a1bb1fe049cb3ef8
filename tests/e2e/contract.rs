//! The live server against its contract, openapi.yaml: schemathesis (from the test
//! environment) generates valid and invalid requests for every operation and checks status
//! codes, content types, headers and response bodies against the document. Any drift between
//! the server and openapi.yaml fails this test.

use crate::common::server::Server;
use std::process::Command;

#[test]
fn live_server_conforms_to_openapi_yaml() {
    let server = Server::start(&[]);
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("schemathesis")
        .current_dir(std::env::temp_dir())
        .arg("--config-file")
        .arg(format!("{root}/tests/schemathesis.toml"))
        .arg("run")
        .arg(format!("{root}/openapi.yaml"))
        .args([
            "--url",
            &server.url(""),
            // Every check runs by default; tests/schemathesis.toml turns off the few that do
            // not apply (an explicit `--checks all` would override those settings).
            "--max-examples",
            "25",
            // One worker: with several, Python 3.11's ast.parse (used by hypothesis to
            // describe its filters) races and schemathesis reports a runtime error of its own.
            "--workers",
            "1",
            // A fixed seed: the same cases on every run, so that a red run can be replayed
            // and a green one means the same thing each time.
            "--seed",
            "20261130",
            // An explanation at layer1 for six classes takes well under a second alone, but
            // on a busy shared machine far longer: the contract is not about speed.
            "--request-timeout",
            "120",
        ])
        .args(["--phases", "examples,coverage,fuzzing", "--no-color"])
        .output()
        .expect(
            "schemathesis is installed by scripts/setup.sh; run the tests with scripts/test.sh",
        );
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "schemathesis found contract violations:\n{report}"
    );
    assert!(
        report.contains("generated"),
        "schemathesis did not run any test case:\n{report}"
    );
}
