//! The deployment's load balancer, natively: two real replicas and Debian's nginx running the
//! project's own deploy/nginx.conf (only addresses rewritten) on loopback. Stopping one replica
//! must not cost any request its correct answer, and gRPC passes through to the replicas' gRPC
//! ports (a health check through nginx answers SERVING, before and after).

use crate::common::REFERENCE;
use crate::common::server::{Server, post_fixture};
use crate::k8s::grpc_health;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Nginx {
    child: Child,
    port: u16,
    /// The port of its gRPC (h2c) server.
    grpc_port: u16,
    dir: PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM lets the master stop its workers; SIGKILL would orphan them.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let started = Instant::now();
        while self.child.try_wait().ok().flatten().is_none()
            && started.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn nginx_binary() -> String {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .map(String::from)
        .unwrap_or_else(|| "nginx".into())
}

fn start_nginx(a: &Server, b: &Server) -> Nginx {
    let conf =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/nginx.conf")).unwrap();
    let (port, grpc_port) = (free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("gradcam-nginx-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    let rewrites = [
        ("gradcam-a:8080", a.addr.to_string()),
        ("gradcam-b:8080", b.addr.to_string()),
        ("gradcam-a:8081", a.grpc_target()),
        ("gradcam-b:8081", b.grpc_target()),
        ("listen 8080;", format!("listen 127.0.0.1:{port};")),
        (
            "listen 8081 http2;",
            format!("listen 127.0.0.1:{grpc_port} http2;"),
        ),
        // One worker: each worker keeps its own round robin, and the test counts on one.
        ("worker_processes auto;", "worker_processes 1;".to_string()),
    ];
    let mut replaced = conf.clone();
    for (from, to) in &rewrites {
        assert!(
            replaced.contains(from),
            "deploy/nginx.conf no longer says {from:?} (the replicas, the ports)"
        );
        replaced = replaced.replace(from, to);
    }
    // Keep nginx's temporary files in our directory so the test needs no system paths.
    let replaced = replaced.replacen(
        "http {",
        &format!(
            "http {{\n    client_body_temp_path {0}/body;\n    proxy_temp_path {0}/proxy;\n    \
             fastcgi_temp_path {0}/fcgi;\n    uwsgi_temp_path {0}/uwsgi;\n    scgi_temp_path {0}/scgi;\n    \
             access_log {0}/logs/access.log;",
            dir.display()
        ),
        1,
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, replaced).unwrap();
    let child = Command::new(nginx_binary())
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(&conf_path)
        .args(["-e", "stderr", "-g"])
        .arg(format!(
            "daemon off; pid {}/nginx.pid; error_log stderr;",
            dir.display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx is installed by scripts/setup.sh");
    let started = Instant::now();
    for p in [port, grpc_port] {
        while std::net::TcpStream::connect(("127.0.0.1", p)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "nginx did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Nginx {
        child,
        port,
        grpc_port,
        dir,
    }
}

fn explain_through(port: u16, file: &str) -> (u16, i64) {
    let res = post_fixture(
        format!("http://127.0.0.1:{port}/explain?overlay=false"),
        file,
    )
    .send()
    .unwrap();
    let status = res.status().as_u16();
    let body: serde_json::Value = res.json().unwrap_or_default();
    (
        status,
        body["predictions"][0]["index"].as_i64().unwrap_or(-1),
    )
}

#[test]
fn load_balancer_keeps_answering_when_a_replica_stops() {
    let a = Server::start(&["--grpc-port", "0"]);
    let mut b = Server::start(&["--grpc-port", "0"]);
    let nginx = start_nginx(&a, &b);
    let photos = &REFERENCE.meta.photos;
    let grpc = format!("127.0.0.1:{}", nginx.grpc_port);
    let check_round = |round: &str| {
        for photo in photos {
            let (status, top1) = explain_through(nginx.port, &photo.file);
            assert_eq!(status, 200, "{round}: {}", photo.file);
            assert_eq!(top1, photo.top3[0], "{round}: {}", photo.file);
        }
        // gRPC through nginx's h2c listener to the replicas' gRPC ports.
        for service in ["", "inference.GRPCInferenceService"] {
            let (serving, said) = grpc_health(&grpc, service);
            assert!(
                serving,
                "{round}: gRPC health of {service:?} through nginx: {said}"
            );
        }
    };
    check_round("both replicas");
    // Both replicas took traffic.
    for s in [&a, &b] {
        assert!(
            s.metric("gradcam_requests_total{route=\"/explain\",status=\"200\"}") > 0.0,
            "a replica got nothing"
        );
    }
    assert!(b.terminate().success());
    check_round("one replica stopped");
    check_round("one replica stopped, again");
}
