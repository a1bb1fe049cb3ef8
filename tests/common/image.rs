//! The Dockerfile's runtime stage as an image on this machine, and that image run as a
//! container, without a Docker engine: see tests/e2e/container.rs.
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
        let id = Command::new("id").arg("-u").output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&id.stdout).trim(),
            "0",
            "the container tests need root (chroot, namespaces): run scripts/test.sh as root, as CI does"
        );
        let dir = std::env::temp_dir().join(format!("gradcam-image-{}-{name}", std::process::id()));
        let out = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/scripts/runtime_image.py"
            ))
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

    pub fn root(&self) -> PathBuf {
        PathBuf::from(self.spec["root"].as_str().unwrap())
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

    /// A command run in the image's root as its user (no namespaces: for static checks).
    pub fn chroot(&self, argv: &[&str]) -> Output {
        Command::new("chroot")
            .arg(format!("--userspec={}", self.user()))
            .arg(self.root())
            .args(argv)
            .env_clear()
            .envs(self.env())
            .output()
            .unwrap()
    }

    /// Where the entrypoint's program is in the root, found on the image's PATH.
    pub fn entrypoint_path(&self) -> String {
        let program = self.strings("command")[0].clone();
        if program.starts_with('/') {
            return program;
        }
        let path = self.env().into_iter().find(|(k, _)| k == "PATH").unwrap().1;
        path.split(':')
            .map(|dir| format!("{dir}/{program}"))
            .find(|p| self.root().join(&p[1..]).is_file())
            .unwrap_or_else(|| panic!("{program} is not on the image's PATH {path}"))
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The launcher: `docker run` in a few mounts. Arguments: root, volume mounts "host:dir",
/// weights directory, user:group, then the command. It execs, so its pid is the server's.
pub const LAUNCH: &str = r#"
set -e
r="$1"; volumes="$2"; weights="$3"; user="$4"; shift 4
ip link set lo up
mount --bind "$r" "$r"
mount -o remount,bind,ro "$r"
for v in $volumes; do mount --bind "${v%%:*}" "$r${v#*:}"; done
mount --bind -o ro "$weights" "$r/weights"
mount -t proc proc "$r/proc"
mount -t tmpfs -o nosuid,mode=755 tmpfs "$r/dev"
for d in null zero full random urandom tty; do : > "$r/dev/$d"; mount --bind "/dev/$d" "$r/dev/$d"; done
mkdir "$r/dev/shm" && mount -t tmpfs -o nosuid,nodev tmpfs "$r/dev/shm"
exec chroot --userspec="$user" "$r" "$@"
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
    /// the image's environment, `stdin` as its input.
    pub fn exec(&self, image: &Image, argv: &[String], stdin: Option<&Path>) -> Output {
        Command::new("nsenter")
            .args([
                "--target",
                &self.pid(),
                "--net",
                "--mount",
                "--root",
                "--wd",
            ])
            .args(["--setuid", &image.spec["uid"].to_string()])
            .args(["--setgid", &image.spec["gid"].to_string()])
            .arg("--")
            .args(argv)
            .env_clear()
            .envs(image.env())
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
