//! The Kubernetes manifests (deploy/k8s) against the real server: they validate against the
//! Kubernetes schemas (offline, scripts/k8s_manifests.py), every GRADCAM_* variable they set is
//! a flag of `serve --help` and a started server accepts their values, the container ports are
//! the HTTP and gRPC ports that server binds, every probe answers on it (an HTTP probe's path
//! with 200, a gRPC probe's health check with SERVING, asked with scripts/grpc_health.py), the
//! drain fits in the grace period, and the custom metric the autoscaler variant names is one
//! the server's /metrics exports.

use crate::common::server::{Server, client};
use serde_json::Value;
use std::process::Command;

const BASE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/k8s/base");
const GPU: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/k8s/gpu");
/// Variables the manifests may set that are not the server's flags: libtorch's thread count.
const OTHER_VARIABLES: &[&str] = &["OMP_NUM_THREADS"];

fn manifests(args: &[&str]) -> Value {
    let out = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/k8s_manifests.py"
        ))
        .args(args)
        .output()
        .expect("python3 runs (scripts/env.sh puts the project's environment on PATH)");
    assert!(
        out.status.success(),
        "k8s_manifests.py {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn resource<'a>(resources: &'a Value, kind: &str) -> &'a Value {
    let found: Vec<&Value> = resources
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == kind)
        .collect();
    assert_eq!(found.len(), 1, "one {kind} expected");
    found[0]
}

/// The one container of the Deployment, and its environment: the ConfigMaps it takes whole,
/// then its own `env` (which wins, as in Kubernetes).
fn container(resources: &Value) -> (&Value, Vec<(String, String)>) {
    let pod = &resource(resources, "Deployment")["spec"]["template"]["spec"];
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let mut env = Vec::new();
    for from in c["envFrom"].as_array().into_iter().flatten() {
        let name = &from["configMapRef"]["name"];
        let map = resources
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["kind"] == "ConfigMap" && r["metadata"]["name"] == *name)
            .unwrap_or_else(|| panic!("no ConfigMap {name}"));
        for (k, v) in map["data"].as_object().unwrap() {
            env.push((k.clone(), v.as_str().unwrap().to_string()));
        }
    }
    for e in c["env"].as_array().into_iter().flatten() {
        let value = e["value"]
            .as_str()
            .expect("env values are literal")
            .to_string();
        env.retain(|(k, _)| k != e["name"].as_str().unwrap());
        env.push((e["name"].as_str().unwrap().to_string(), value));
    }
    (c, env)
}

/// `serve --help` of the real binary, one block per option.
fn help() -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_gradcam-serve"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .split("\n\n")
        .map(String::from)
        .collect()
}

/// The value a variable has on the server: the manifests' setting, else the flag's default.
fn setting(env: &[(String, String)], help: &[String], name: &str) -> String {
    if let Some((_, v)) = env.iter().find(|(k, _)| k == name) {
        return v.clone();
    }
    let block = help
        .iter()
        .find(|b| b.contains(&format!("[env: {name}=")))
        .unwrap_or_else(|| panic!("{name} is not a flag of serve --help"));
    let default = block.split("[default: ").nth(1).expect("a default");
    default[..default.find(']').unwrap()].to_string()
}

/// The real server with the manifests' environment (flags win over variables: a loopback port
/// of its own, the CPU, the test weights instead of the download; and a gRPC port of its own
/// when the manifests set one, so that tests in parallel do not collide on it).
fn start(env: &[(String, String)]) -> Server {
    let grpc: &[&str] = if env.iter().any(|(k, _)| k == "GRADCAM_GRPC_PORT") {
        &["--grpc-port", "0"]
    } else {
        &[]
    };
    Server::try_start_env(env, grpc)
        .unwrap_or_else(|log| panic!("the server refused the manifests' settings {env:?}:\n{log}"))
}

/// `grpc.health.v1.Health/Check` of `service` ("" for the server) at `target` (`HOST:PORT`), as
/// Kubernetes' gRPC probe asks it (scripts/grpc_health.py, with grpcio): whether the answer is
/// SERVING, and the answer (a serving status, or the gRPC code of a refusal).
pub(crate) fn grpc_health(target: &str, service: &str) -> (bool, String) {
    let out = Command::new("python")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/grpc_health.py"
        ))
        .args([target, service])
        .output()
        .expect("python with grpcio is installed by scripts/setup.sh");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let serving = out.status.success();
    assert_eq!(
        serving,
        said.starts_with("SERVING\n"),
        "grpc_health.py exits 0 exactly on SERVING: {said}"
    );
    (serving, said.trim().to_string())
}

/// The container's ports against the server's settings: one port (named `names[0]`) is
/// GRADCAM_PORT; one (named `names[1]`) is GRADCAM_GRPC_PORT when that is set; there are no
/// others.
struct Ports {
    http: (String, u64),
    grpc: Option<(String, u64)>,
}

impl Ports {
    fn of(
        c: &Value,
        env: &[(String, String)],
        help: &[String],
        names: [&str; 2],
        what: &str,
    ) -> Ports {
        let ports = c["ports"].as_array().unwrap();
        let find = |variable: &str, name: &str| {
            let number: u64 = setting(env, help, variable).parse().unwrap();
            let port = ports
                .iter()
                .find(|p| p["containerPort"].as_u64() == Some(number))
                .unwrap_or_else(|| panic!("{what}: no container port is {variable} ({number})"));
            assert_eq!(port["name"], name, "{what}: the name of port {number}");
            assert_eq!(port["protocol"], "TCP", "{what}: port {number}");
            (name.to_string(), number)
        };
        let http = find("GRADCAM_PORT", names[0]);
        let grpc = env
            .iter()
            .any(|(k, _)| k == "GRADCAM_GRPC_PORT")
            .then(|| find("GRADCAM_GRPC_PORT", names[1]));
        assert_eq!(
            ports.len(),
            1 + usize::from(grpc.is_some()),
            "{what}: a container port the server does not bind: {ports:?}"
        );
        Ports { http, grpc }
    }

    /// The number of the container port that `port` (a name or a number) names.
    fn resolve(&self, port: &Value) -> Option<u64> {
        [Some(&self.http), self.grpc.as_ref()]
            .into_iter()
            .flatten()
            .find(|(name, number)| port == name.as_str() || port.as_u64() == Some(*number))
            .map(|(_, number)| *number)
    }
}

/// Every probe answers on the started (ready) server: an HTTP probe's path on the HTTP port
/// with 200, a gRPC probe's health check on the gRPC port with SERVING; and a probe watches the
/// gRPC port exactly when there is one. A path or a service that is not there would not answer
/// so (checked, so these checks can fail).
fn probes_answer(c: &Value, ports: &Ports, server: &Server, what: &str) {
    let mut grpc_probed = false;
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        let p = &c[probe];
        assert!(p.is_object(), "{what}: no {probe}");
        if p.get("httpGet").is_some() {
            let get_ = &p["httpGet"];
            assert_eq!(
                ports.resolve(&get_["port"]),
                Some(ports.http.1),
                "{what}: {probe} port {}",
                get_["port"]
            );
            let path = get_["path"].as_str().unwrap();
            let (status, body) = get(&server.url(path));
            assert_eq!(status, 200, "{what}: {probe} {path}: {body}");
        } else if p.get("grpc").is_some() {
            let grpc = ports
                .grpc
                .as_ref()
                .unwrap_or_else(|| panic!("{what}: a gRPC {probe} without a gRPC port"));
            // Kubernetes' gRPC probe takes a number; its schema refuses a name.
            assert_eq!(
                p["grpc"]["port"].as_u64(),
                Some(grpc.1),
                "{what}: {probe} port {}",
                p["grpc"]["port"]
            );
            let service = p["grpc"]["service"].as_str().unwrap_or("");
            let (serving, said) = grpc_health(&server.grpc_target(), service);
            assert!(serving, "{what}: {probe} (service {service:?}): {said}");
            grpc_probed = true;
        } else {
            panic!("{what}: {probe} is neither httpGet nor grpc: {p}");
        }
    }
    assert_eq!(get(&server.url("/health/nothing")).0, 404);
    if server.grpc_addr.is_some() {
        let (serving, said) = grpc_health(&server.grpc_target(), "no.such.Service");
        assert!(!serving && said.starts_with("NOT_FOUND"), "{said}");
    }
    assert_eq!(
        grpc_probed,
        ports.grpc.is_some(),
        "{what}: a probe watches the gRPC port exactly when there is one"
    );
}

fn get(url: &str) -> (u16, String) {
    let r = client().get(url).send().unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

#[test]
fn the_manifests_are_valid_kubernetes_objects() {
    let out = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/k8s_manifests.py"
        ))
        .args(["validate", BASE, GPU])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    eprintln!("{report}");
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What both variants must agree on with a server started with their settings.
fn agrees_with_the_server(dir: &str) {
    let resources = manifests(&["render", dir]);
    let (c, env) = container(&resources);
    let help = help();

    // Every variable is a flag of the server (or one of the few others named above).
    for (name, _) in &env {
        let known = help.iter().any(|b| b.contains(&format!("[env: {name}=")));
        assert!(
            known || OTHER_VARIABLES.contains(&name.as_str()),
            "{dir}: {name} is not a flag of gradcam-serve serve"
        );
    }
    let server = start(&env);

    // The container ports are the ones the server binds with these settings (HTTP, and gRPC:
    // the manifests set GRADCAM_GRPC_PORT). The Service exposes both and targets nothing else;
    // its gRPC port is declared cleartext HTTP/2 (h2c) for gateways and meshes.
    let ports = Ports::of(c, &env, &help, ["http", "grpc"], dir);
    let grpc = ports.grpc.as_ref().map(|g| g.1);
    assert!(grpc.is_some(), "{dir}: no gRPC port");
    let service = resource(&resources, "Service");
    let mut targets = Vec::new();
    for p in service["spec"]["ports"].as_array().unwrap() {
        let target = ports.resolve(&p["targetPort"]);
        assert!(
            target.is_some(),
            "{dir}: Service targetPort {}",
            p["targetPort"]
        );
        if target == grpc {
            assert_eq!(p["appProtocol"], "kubernetes.io/h2c", "{dir}: {p}");
        }
        targets.push(target);
    }
    assert!(
        targets.contains(&Some(ports.http.1)) && targets.contains(&grpc),
        "{dir}: the Service exposes the HTTP and the gRPC port"
    );

    // Every probe answers on the started (ready) server, on the port it names.
    probes_answer(c, &ports, &server, dir);

    // Prometheus scrapes the port and path the annotations name.
    let annotations =
        &resource(&resources, "Deployment")["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/port"], ports.http.1.to_string());
    let (status, metrics) = get(&server.url(annotations["prometheus.io/path"].as_str().unwrap()));
    assert_eq!(status, 200);
    assert!(
        metrics.contains("# TYPE gradcam_requests_total counter"),
        "{metrics}"
    );

    // Selectors select the pods; the autoscaler scales this Deployment.
    let deployment = resource(&resources, "Deployment");
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let selects = |selector: &Value| {
        selector
            .as_object()
            .unwrap()
            .iter()
            .all(|(k, v)| &labels[k] == v)
    };
    assert!(selects(&service["spec"]["selector"]));
    assert!(selects(&deployment["spec"]["selector"]["matchLabels"]));
    assert!(selects(
        &resource(&resources, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    ));
    let target = &resource(&resources, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"];
    assert_eq!(target["kind"], "Deployment");
    assert_eq!(target["name"], deployment["metadata"]["name"]);

    // The pod runs as a user that is not root, with a read-only root and the cache writable.
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_ne!(pod["securityContext"]["runAsUser"].as_u64(), Some(0));
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    let cache = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == "/cache")
        .expect("the cache volume is mounted at /cache");
    assert_ne!(cache["readOnly"], true);
}

#[test]
fn the_cpu_manifests_agree_with_the_server() {
    agrees_with_the_server(BASE);
}

#[test]
fn the_gpu_overlay_agrees_with_the_server_and_asks_for_a_gpu() {
    agrees_with_the_server(GPU);
    let resources = manifests(&["render", GPU]);
    let (c, env) = container(&resources);
    assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], 1);
    assert!(setting(&env, &help(), "GRADCAM_DEVICE").starts_with("cuda"));
}

#[test]
fn the_drain_fits_in_the_grace_period_and_outlasts_the_readiness_probe() {
    let help = help();
    for dir in [BASE, GPU] {
        let resources = manifests(&["render", dir]);
        let (c, env) = container(&resources);
        let ms = |name| setting(&env, &help, name).parse::<u64>().unwrap();
        let (delay, timeout) = (ms("GRADCAM_DRAIN_DELAY_MS"), ms("GRADCAM_DRAIN_TIMEOUT_MS"));
        let pod = &resource(&resources, "Deployment")["spec"]["template"]["spec"];
        let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap() * 1000;
        assert!(
            delay + timeout < grace,
            "{dir}: drain delay {delay} ms + drain timeout {timeout} ms must end before the \
             grace period ({grace} ms) sends SIGKILL"
        );
        // While the delay lasts the server still serves: the readiness probe must see the 503
        // and the pod leave the endpoints before the server stops accepting.
        let probe = &c["readinessProbe"];
        let detect = probe["periodSeconds"].as_u64().unwrap_or(10)
            * probe["failureThreshold"].as_u64().unwrap_or(3)
            * 1000;
        assert!(
            detect <= delay,
            "{dir}: the readiness probe takes up to {detect} ms to notice a drain that accepts for {delay} ms"
        );
    }
}

#[test]
fn the_custom_metric_autoscaler_names_a_metric_the_server_exports() {
    let hpa_file = format!("{BASE}/hpa.yaml");
    let hpa = manifests(&["commented", &hpa_file, "custom-metric HPA"]);
    let rules = manifests(&["commented", &hpa_file, "prometheus-adapter rule"]);
    let deployment = resource(&manifests(&["render", BASE]), "Deployment").clone();
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );
    let names: Vec<String> = hpa["spec"]["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["type"] == "Pods")
        .map(|m| m["pods"]["metric"]["name"].as_str().unwrap().to_string())
        .collect();
    assert!(!names.is_empty(), "the variant scales on no custom metric");

    let resources = manifests(&["render", BASE]);
    let server = start(&container(&resources).1);
    let (_, metrics) = get(&server.url("/metrics"));
    for name in &names {
        assert!(
            metrics.contains(&format!("# TYPE {name} gauge")),
            "the server exports no gauge {name}:\n{metrics}"
        );
        // prometheus-adapter serves it under that name, from the series of that name.
        let rule = rules
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"]["as"] == name.as_str())
            .unwrap_or_else(|| panic!("no prometheus-adapter rule serves {name}"));
        assert!(
            rule["seriesQuery"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{name}{{"))
        );
    }
}

/// deploy/kserve: every field is one KServe's schema knows, with a value of its type
/// (scripts/kserve_manifest.py, with KServe's SDK); every variable is a flag the server takes;
/// the container ports are the HTTP and gRPC ports a server started with them binds, that
/// server answers the probes (HTTP and gRPC), and it serves the model under the name the
/// manifest gives it on both protocols.
#[test]
fn the_kserve_inference_service_fits_kserves_schema_and_the_server() {
    let out = Command::new("python")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/kserve_manifest.py"
        ))
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/kserve/inferenceservice.yaml"
        ))
        .output()
        .expect("python with kserve is installed by scripts/setup.sh");
    assert!(
        out.status.success(),
        "the InferenceService does not fit KServe's schema:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let service: Value = serde_json::from_slice(&out.stdout).unwrap();
    let predictor = &service["spec"]["predictor"];
    let c = &predictor["containers"][0];
    assert_eq!(
        c["name"], "kserve-container",
        "KServe's name for the model container"
    );
    let env: Vec<(String, String)> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let pair = (e["name"].as_str().unwrap(), e["value"].as_str().unwrap());
            (pair.0.to_string(), pair.1.to_string())
        })
        .collect();
    let help = help();
    for (name, _) in &env {
        let flag = format!("[env: {name}=");
        assert!(
            help.iter().any(|b| b.contains(&flag)),
            "{name} is not a flag of serve --help"
        );
    }
    // KServe's port names: http1 (HTTP/1.1) and h2c (gRPC); the HTTP one first, since the
    // Service KServe makes puts the first container port on port 80.
    let ports = Ports::of(c, &env, &help, ["http1", "h2c"], "InferenceService");
    assert!(ports.grpc.is_some(), "no gRPC port");
    assert_eq!(c["ports"][0]["name"], "http1", "the HTTP port first");
    assert_eq!(
        predictor["securityContext"]["runAsUser"], 10001,
        "the image's user"
    );
    let server = start(&env);
    probes_answer(c, &ports, &server, "InferenceService");
    let name = setting(&env, &help, "GRADCAM_MODEL_NAME");
    assert_eq!(
        service["metadata"]["name"],
        name.as_str(),
        "the service is named after the model"
    );
    for path in [
        format!("/v1/models/{name}"),
        format!("/v2/models/{name}/ready"),
    ] {
        assert_eq!(get(&server.url(&path)).0, 200, "{path}");
    }
}
