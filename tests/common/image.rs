//! The Dockerfile's runtime stage as an image on this machine, and that image run as a
//! container, without a Docker engine and without root: see tests/e2e/container.rs.
#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The image as runtime_image.py describes it, in a directory removed afterwards.
pub struct Image {
    pub dir: PathBuf,
    pub spec: Value,
}

impl Image {
    pub fn assemble(name: &str) -> Image {
        user_namespaces_or_say_how();
        let dir = std::env::temp_dir().join(format!("gradcam-image-{}-{name}", std::process::id()));
        let out = Command::new("python3")
            .arg(script("runtime_image.py"))
            .arg("assemble")
            .arg(env!("CARGO_BIN_EXE_gradcam-serve"))
            .arg(&dir)
            .output()
            .expect("python3 runs (scripts/env.sh puts the project's environment on PATH)");
        let mut image = Image {
            dir,
            spec: Value::Null,
        };
        assert!(
            out.status.success(),
            "assembling the runtime stage failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        image.spec = serde_json::from_slice(&out.stdout).expect("the image description is JSON");
        image
    }

    /// Where the container's root file system is mounted (empty outside the container).
    pub fn root(&self) -> PathBuf {
        PathBuf::from(self.str("root"))
    }

    pub fn str(&self, key: &str) -> &str {
        self.spec[key]
            .as_str()
            .unwrap_or_else(|| panic!("no {key}"))
    }

    pub fn user(&self) -> String {
        format!("{}:{}", self.spec["uid"], self.spec["gid"])
    }

    pub fn env(&self) -> Vec<(String, String)> {
        let env = self.spec["env"].as_object().unwrap();
        env.iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect()
    }

    pub fn strings(&self, key: &str) -> Vec<String> {
        self.spec[key]
            .as_array()
            .unwrap_or_else(|| panic!("no {key}"))
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    }

    /// The directory COPY mounts read-only, as (host, image path) pairs.
    fn binds(&self) -> Vec<(String, String)> {
        let pairs = self.spec["binds"].as_array().unwrap().iter();
        pairs
            .map(|b| (b[0].as_str().unwrap().into(), b[1].as_str().unwrap().into()))
            .collect()
    }

    /// Where a path of the image is on this machine: in a COPY mount, the COPY layer or the base.
    pub fn host_path(&self, path: &str) -> Option<PathBuf> {
        for (host, at) in self.binds() {
            if let Some(rest) = path.strip_prefix(&at) {
                return Some(PathBuf::from(host + rest));
            }
        }
        let lower = self.strings("lower");
        let found = lower.iter().map(|l| Path::new(l).join(&path[1..]));
        found.into_iter().find(|p| p.symlink_metadata().is_ok())
    }

    /// A directory made in the COPY layer for a mount, as Docker makes the target of `-v`.
    pub fn mount_point(&self, path: &str) {
        std::fs::create_dir_all(Path::new(&self.strings("lower")[0]).join(&path[1..])).unwrap();
    }

    /// Where the entrypoint's program is in the image, found on the image's PATH.
    pub fn entrypoint_path(&self) -> String {
        let program = self.strings("command")[0].clone();
        if program.starts_with('/') {
            return program;
        }
        let path = self.env().into_iter().find(|(k, _)| k == "PATH").unwrap().1;
        path.split(':')
            .map(|dir| format!("{dir}/{program}"))
            .find(|p| self.host_path(p).is_some_and(|h| h.is_file()))
            .unwrap_or_else(|| panic!("{program} is not on the image's PATH {path}"))
    }

    /// `docker run`: argv as the image's user in a container of this image, with `volumes`
    /// ("host:dir") mounted read-write and `read_only` ones ("host:dir") read-only.
    pub fn launch(
        &self,
        volumes: &[String],
        read_only: &[String],
        env: Vec<(String, String)>,
        argv: &[String],
    ) -> Command {
        let binds = self.binds().into_iter().map(|(h, at)| format!("{h}:{at}"));
        let binds: Vec<String> = binds.chain(read_only.iter().cloned()).collect();
        let mut command = Command::new("unshare");
        command
            .args(["--user", "--map-root-user", "--net", "--mount"])
            .args(["--propagation", "private", "bash", "-c", LAUNCH, "bash"])
            .arg(self.root())
            .arg(self.strings("lower").join(":"))
            .arg(binds.join(" "))
            .arg(volumes.join(" "))
            .arg(self.user())
            .args(argv)
            .env_clear()
            .envs(env)
            .stdin(Stdio::null());
        command
    }

    /// A command run to its end in a container of this image, with no volumes.
    pub fn run(&self, argv: &[&str]) -> Output {
        let argv: Vec<String> = argv.iter().map(|a| a.to_string()).collect();
        self.launch(&[], &[], self.env(), &argv).output().unwrap()
    }
}

fn script(name: &str) -> String {
    format!("{}/scripts/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// The containers need user namespaces an ordinary user may make; where the host forbids them,
/// one line says so and how to allow them, instead of a launcher failing obscurely.
fn user_namespaces_or_say_how() {
    let probe = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "--net", "true"])
        .output()
        .expect("unshare (util-linux) is installed: scripts/setup.sh installs it");
    assert!(
        probe.status.success(),
        "the container tests need unprivileged user namespaces, which this host forbids ({}): \
         allow them with `sudo sysctl -w kernel.unprivileged_userns_clone=1` (Debian), \
         `sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0` (Ubuntu 23.10 and later) \
         or `sudo sysctl -w user.max_user_namespaces=15000`, or run the suite as root",
        String::from_utf8_lossy(&probe.stderr).trim()
    );
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The launcher, run by `unshare` in a user namespace where the caller is root, with mount and
/// network namespaces of its own: what `docker run` does, rootless. Arguments: the root's mount
/// point, the layers (overlay lowerdirs, top first), read-only mounts "host:dir", volumes
/// "host:dir", user:group, then the command. The root is the layers joined read-only (as
/// Kubernetes' readOnlyRootFilesystem makes it), made the namespace's own root with pivot_root
/// (a chrooted process may not make the user namespace below). The command then runs in a
/// second user namespace that maps the caller to the image's user, so that the process is that
/// user, every id of it, with no capabilities; files the caller owns (the volumes) are that
/// user's, root's (the base) belong to no one it may act as. It execs throughout, so its pid
/// is the command's. `unshare` and `umount` there are the image's own (util-linux).
const LAUNCH: &str = r#"
set -e
r="$1"; lower="$2"; read_only="$3"; volumes="$4"; user="$5"; shift 5
ip link set lo up
mount -t overlay overlay -o "ro,lowerdir=$lower" "$r"
for m in $read_only; do mount --bind -o ro "${m%%:*}" "$r${m#*:}"; done
for v in $volumes; do mount --bind "${v%%:*}" "$r${v#*:}"; done
mount --rbind /proc "$r/proc"
mount -t tmpfs -o nosuid,mode=755 tmpfs "$r/dev"
for d in null zero full random urandom tty; do : > "$r/dev/$d"; mount --bind "/dev/$d" "$r/dev/$d"; done
mkdir "$r/dev/shm" && mount -t tmpfs -o nosuid,nodev tmpfs "$r/dev/shm"
cd "$r"; pivot_root . .; umount -l .; cd /
exec unshare --user --map-user="${user%%:*}" --map-group="${user#*:}" -- "$@"
"#;

/// The running container: the server's process and what it printed.
pub struct Container {
    pub child: Child,
    pub log: PathBuf,
}

impl Container {
    pub fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// `docker exec`: argv in the container's namespaces and root, as the image's user, with
    /// the image's environment, `stdin` as its input (scripts/container_exec.py).
    pub fn exec(&self, image: &Image, argv: &[String], stdin: Option<&Path>) -> Output {
        let env = image.env().into_iter().map(|(k, v)| format!("{k}={v}"));
        Command::new("python3")
            .arg(script("container_exec.py"))
            .arg(self.pid())
            .arg(image.spec["uid"].to_string())
            .arg(image.spec["gid"].to_string())
            .args(env)
            .arg("--")
            .args(argv)
            .stdin(stdin.map_or(Stdio::null(), |f| std::fs::File::open(f).unwrap().into()))
            .output()
            .unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Seconds in a Docker duration such as `120s`, `1m30s` or `500ms`.
pub fn seconds(duration: &str) -> f64 {
    let mut total = 0.0;
    let mut number = String::new();
    let mut chars = duration.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let unit = if c == 'm' && chars.peek() == Some(&'s') {
            chars.next();
            0.001
        } else {
            match c {
                'h' => 3600.0,
                'm' => 60.0,
                's' => 1.0,
                _ => panic!("unknown unit in {duration}"),
            }
        };
        total += number.parse::<f64>().unwrap() * unit;
        number.clear();
    }
    total
}
