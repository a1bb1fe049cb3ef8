//! The Kubernetes manifests (deploy/k8s) against the real server: they validate against the
//! Kubernetes schemas (offline, scripts/k8s_manifests.py), every GRADCAM_* variable they set is
//! a flag of `serve --help` and a started server accepts their values, every probe path and
//! port answers on that server, the drain fits in the grace period, and the custom metric the
//! autoscaler variant names is one the server's /metrics exports.

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
/// of its own, the CPU, the test weights instead of the download).
fn start(env: &[(String, String)]) -> Server {
    Server::try_start_env(env, &[])
        .unwrap_or_else(|log| panic!("the server refused the manifests' settings {env:?}:\n{log}"))
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

    // The container port is the one the server binds with these settings, and every named
    // port the probes and the Service use is the container's.
    let ports = c["ports"].as_array().unwrap();
    assert_eq!(ports.len(), 1);
    let port = ports[0]["containerPort"].as_u64().unwrap();
    assert_eq!(setting(&env, &help, "GRADCAM_PORT"), port.to_string());
    let resolves = |p: &Value| p == &ports[0]["name"] || p.as_u64() == Some(port);
    let service = resource(&resources, "Service");
    for p in service["spec"]["ports"].as_array().unwrap() {
        assert!(
            resolves(&p["targetPort"]),
            "Service targetPort {}",
            p["targetPort"]
        );
    }

    // Every probe's path answers 200 on the started (ready) server; a path that is not there
    // would not (checked, so this check can fail).
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        let get_ = &c[probe]["httpGet"];
        assert!(resolves(&get_["port"]), "{probe} port {}", get_["port"]);
        let path = get_["path"]
            .as_str()
            .unwrap_or_else(|| panic!("{dir}: no {probe}"));
        let (status, body) = get(&server.url(path));
        assert_eq!(status, 200, "{dir}: {probe} {path}: {body}");
    }
    assert_eq!(get(&server.url("/health/nothing")).0, 404);

    // Prometheus scrapes the port and path the annotations name.
    let annotations =
        &resource(&resources, "Deployment")["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/port"], port.to_string());
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
/// a server started with them answers the probes, and serves the model under the name the
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
    let port = setting(&env, &help, "GRADCAM_PORT");
    assert_eq!(c["ports"][0]["containerPort"].to_string(), port);
    assert_eq!(
        predictor["securityContext"]["runAsUser"], 10001,
        "the image's user"
    );
    let server = start(&env);
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        let path = c[probe]["httpGet"]["path"].as_str().unwrap();
        assert_eq!(c[probe]["httpGet"]["port"].to_string(), port, "{probe}");
        assert_eq!(get(&server.url(path)).0, 200, "{probe} {path}");
    }
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
