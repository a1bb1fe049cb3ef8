//! Starts the real `gradcam-serve serve` binary on port 0 and finds its address from the
//! "ready" log line.
#![allow(dead_code)]

use reqwest::blocking::RequestBuilder;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// The gRPC port's address, when the server was started with `--grpc-port`.
    pub grpc_addr: Option<SocketAddr>,
    /// Every log line so far (JSON), collected by a reader thread.
    pub log: Arc<Mutex<Vec<String>>>,
    /// The reader thread: it ends when the process has exited and its last line is in `log`.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Starts a server with the test weights on the CPU, plus `args`.
    pub fn start(args: &[&str]) -> Server {
        let weights = super::reference_dir().join("weights.safetensors");
        Server::start_with(&weights, args)
    }

    /// Starts a server with the weights file `weights` on the CPU, plus `args`.
    pub fn start_with(weights: &std::path::Path, args: &[&str]) -> Server {
        Server::launch(
            Command::new(env!("CARGO_BIN_EXE_gradcam-serve")),
            weights,
            args,
        )
    }

    /// The same under a limit of `bytes` of address space (`prlimit --as`, which the kernel
    /// enforces on every allocation: one that does not fit fails, and the server with it), with
    /// glibc's allocator held to two arenas so that the limit means the same on any number of
    /// cores (each arena reserves 64 MiB of address space).
    pub fn start_limited(bytes: u64, args: &[&str]) -> Server {
        let mut command = Command::new("prlimit");
        command
            .arg(format!("--as={bytes}"))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_gradcam-serve"))
            .env("MALLOC_ARENA_MAX", "2");
        let weights = super::reference_dir().join("weights.safetensors");
        Server::launch(command, &weights, args)
    }

    /// A figure from `/proc/PID/status` in KiB, such as `VmPeak` or `VmHWM`.
    pub fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the server process is alive");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            .unwrap_or_else(|| panic!("no {field} in {status}"))
    }

    /// Starts the real server with the environment `env` (every `GRADCAM_` variable of the
    /// test's own environment removed first) and `args`; the log when it stops before serving.
    pub fn try_start_env(env: &[(String, String)], args: &[&str]) -> Result<Server, String> {
        let weights = super::reference_dir().join("weights.safetensors");
        let mut command = Command::new(env!("CARGO_BIN_EXE_gradcam-serve"));
        command.envs(env.iter().cloned());
        Server::try_launch(command, &weights, args)
    }

    fn launch(command: Command, weights: &std::path::Path, args: &[&str]) -> Server {
        Server::try_launch(command, weights, args)
            .unwrap_or_else(|log| panic!("server did not become ready; log:\n{log}"))
    }

    /// The one way every test starts the server: on a loopback port of its own, on the CPU,
    /// with JSON logs and `weights`; the test's own `GRADCAM_` variables never reach it (those
    /// set on `command` do). Ready once its "ready" line names the address; the whole log when
    /// it stops (or takes two minutes) before that.
    fn try_launch(
        mut command: Command,
        weights: &std::path::Path,
        args: &[&str],
    ) -> Result<Server, String> {
        for (k, _) in std::env::vars() {
            if k.starts_with("GRADCAM_") && command.get_envs().all(|(set, _)| set != k.as_str()) {
                command.env_remove(k);
            }
        }
        let mut child = command
            .args([
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--device",
                "cpu",
                "--log-format",
                "json",
            ])
            .arg("--weights")
            .arg(weights)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the server binary starts");
        let stderr = child.stderr.take().expect("piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let thread_log = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && v["fields"]["message"] == "ready"
                {
                    let field = |f: &str| v["fields"][f].as_str().map(str::to_string);
                    let _ = tx.send((field("addr").unwrap_or_default(), field("grpc_addr")));
                }
                thread_log.lock().unwrap().push(line);
            }
        });
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok((a, grpc)) => Ok(Server {
                child,
                addr: a.parse().expect("the ready line carries the address"),
                grpc_addr: grpc.map(|g| g.parse().expect("grpc_addr is an address")),
                log,
                reader: Some(reader),
            }),
            Err(_) => {
                // Stopped (the reader ended with the process) or too slow: the whole log.
                let _ = child.kill();
                let _ = child.wait();
                let _ = reader.join();
                Err(log.lock().unwrap().join("\n"))
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `HOST:PORT` of the gRPC services (the server must have been started with
    /// `--grpc-port 0`).
    pub fn grpc_target(&self) -> String {
        self.grpc_addr
            .expect("the server was started with --grpc-port")
            .to_string()
    }

    /// The value of one Prometheus sample, e.g. `gradcam_queue_depth` or
    /// `gradcam_rejections_total{reason="client_gone"}`; 0 when absent.
    pub fn metric(&self, sample: &str) -> f64 {
        let text = client()
            .get(self.url("/metrics"))
            .send()
            .unwrap()
            .text()
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
            .map_or(0.0, |v| v.parse().unwrap())
    }

    /// The log once it contains `needle` (the reader thread may still be behind the answer
    /// that followed the line), waiting at most a minute.
    pub fn wait_log(&self, needle: &str) -> String {
        let start = Instant::now();
        loop {
            let log = self.log.lock().unwrap().join("\n");
            if log.contains(needle) {
                return log;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the log never said {needle:?}: {log}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Polls `sample` until `ok` holds, for at most `secs` seconds.
    pub fn wait_metric(&self, sample: &str, secs: u64, ok: impl Fn(f64) -> bool) -> f64 {
        let start = Instant::now();
        loop {
            let v = self.metric(sample);
            if ok(v) {
                return v;
            }
            assert!(
                start.elapsed() < Duration::from_secs(secs),
                "{sample} is still {v} after {secs} s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The status of `/health/ready`.
    pub fn ready(&self) -> u16 {
        client()
            .get(self.url("/health/ready"))
            .send()
            .unwrap()
            .status()
            .as_u16()
    }

    /// Asks `/predict` about the fixture photograph and asserts that it is answered.
    pub fn assert_predicts(&self) {
        let status = post_fixture(self.url("/predict"), "chelsea.png")
            .send()
            .unwrap()
            .status();
        assert_eq!(status, 200, "a plain /predict of the fixture photograph");
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal_term();
        self.wait_exit()
    }

    pub fn signal_term(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits up to a minute for the process to exit, then until `log` holds its last line.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                if let Some(reader) = self.reader.take() {
                    reader.join().expect("the log reader thread");
                }
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "server did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .no_proxy()
        .build()
        .unwrap()
}

/// A POST of the fixture photograph `file` to `url` as the raw request body, typed by its file
/// extension. Add headers (`Accept`, a fault) before sending.
pub fn post_fixture(url: impl reqwest::IntoUrl, file: &str) -> RequestBuilder {
    post_fixture_as(url, file, super::content_type(file))
}

/// The same with a declared type of the caller's choosing, which need not match the bytes.
pub fn post_fixture_as(
    url: impl reqwest::IntoUrl,
    file: &str,
    content_type: &str,
) -> RequestBuilder {
    client()
        .post(url)
        .header("content-type", content_type)
        .body(std::fs::read(super::fixture(file)).unwrap())
}
