"""The Dockerfile's runtime stage, assembled without a Docker engine (none runs where this
project is built, and base images cannot be pulled).

    python3 scripts/runtime_image.py base              # set-up as root, needs Debian's mirror, cached
    python3 scripts/runtime_image.py assemble BIN DIR  # offline, any user: prints the image as JSON

`base` stands in for `FROM debian:<suite>-slim` and the stage's RUN instructions: a root file
system made by `debootstrap --variant=minbase` from Debian's packages, trimmed like the slim
images (no documentation, manuals or locales; apt keeps no downloaded packages), then every RUN
of the stage run in it with chroot, as a builder runs it. It is cached in
$GRADCAM_CACHE/runtime-image under a hash of what it is made from, so it is made again only
when the stage's FROM or RUN lines change.

`assemble` does the rest of the stage without root and without copying the base: each COPY from
the build stage (libtorch's libraries from the Python environment in the cache, the binary
given) as a layer in DIR/copies or, for a directory, as a read-only mount to make, with the
binary's rpath set to what the build stage's would be (the build stage has its GRADCAM_CACHE
elsewhere). It reports the layers to join (the launcher in tests/common/image.rs mounts them as
an overlay), the user, environment, entrypoint, health check, volumes, the size of each layer
and every path the image's user may write, judged from the owners and modes the image has (a
COPY's are root's) by the kernel's rules. Everything is read from the Dockerfile
(scripts/dockerfile.py).
"""

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dockerfile  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("GRADCAM_CACHE") or os.path.expanduser("~/.cache/gradcam-serve")
WORK = os.path.join(CACHE, "runtime-image")
MIRROR = os.environ.get("GRADCAM_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# Bump when the way the base is made changes, so that cached bases are made again.
RECIPE = "2"

# What the slim images leave out of every package (dpkg path-exclude rules), and the apt
# setting that deletes downloaded packages after installing them.
DPKG_EXCLUDES = """\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
"""
APT_CLEAN = """\
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
"""


def stages():
    with open(os.path.join(ROOT, "Dockerfile"), encoding="utf-8") as f:
        all_stages = dockerfile.parse(f.read())
    return all_stages[0], all_stages[-1]


def suite_of(image):
    """`debian:bookworm-slim` -> bookworm; `rust:1.95-bookworm` -> bookworm."""
    tag = image.partition(":")[2]
    if image.startswith("debian:"):
        return tag.split("-")[0]
    return tag.split("-")[-1]


def runs(stage):
    """The stage's RUN steps, which must all come before its first COPY."""
    out, copied = [], False
    for step in stage["steps"]:
        if "copy" in step:
            copied = True
        elif copied:
            raise SystemExit("runtime_image: a RUN after a COPY in the runtime stage is not supported")
        else:
            out.append(step)
    return out


def base_key(stage):
    text = json.dumps([RECIPE, stage["from"], MIRROR, runs(stage)], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def tree_bytes(path):
    """Apparent size of a tree: regular files (each inode once) and symlinks."""
    seen, total = set(), 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in filenames + dirnames:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            if not os.path.isdir(os.path.join(dirpath, name)) or os.path.islink(
                os.path.join(dirpath, name)
            ):
                total += st.st_size
    return total


def in_chroot(root, argv, env, out):
    """Runs argv in root as a builder's RUN does: its own mount namespace with /proc, /dev
    and the host's resolver, the stage's environment and nothing else."""
    script = (
        'set -e; r="$1"; shift; mount -t proc proc "$r/proc"; mount --rbind /dev "$r/dev"; '
        '[ -e "$r/etc/resolv.conf" ] || : > "$r/etc/resolv.conf"; '
        'mount --bind /etc/resolv.conf "$r/etc/resolv.conf"; exec chroot "$r" "$@"'
    )
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", root, *argv],
        env=env, stdout=out, stderr=subprocess.STDOUT,
    ).returncode


def python_version(root):
    """Debian's python3 in this suite (what the build stage's venv uses), from the package
    list debootstrap left behind: e.g. 3.11."""
    lists = os.path.join(root, "var/lib/apt/lists")
    for name in os.listdir(lists):
        if name.endswith("_Packages"):
            with open(os.path.join(lists, name), encoding="utf-8") as f:
                for block in f.read().split("\n\n"):
                    if block.startswith("Package: python3\n"):
                        return re.search(r"^Version: (\d+\.\d+)", block, re.M).group(1)
    raise SystemExit("runtime_image: no python3 in the suite's package list")


def base():
    _, stage = stages()
    key = base_key(stage)
    done = os.path.join(WORK, f"base-{key}")
    if os.path.exists(os.path.join(done, "meta.json")):
        return done
    if os.geteuid() != 0:
        raise SystemExit("runtime_image: making the base needs root (debootstrap): run it with sudo")
    if not stage["from"].startswith("debian:"):
        raise SystemExit(f"runtime_image: only debian:<suite> bases are assembled, not {stage['from']}")
    tmp = done + ".tmp"
    os.makedirs(os.path.join(WORK, "debs"), exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"runtime-image: making the runtime stage's base in {done} (once)", file=sys.stderr)
    root = os.path.join(tmp, "root")
    log = os.path.join(WORK, "debootstrap.log")
    with open(log, "w") as out:
        status = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--cache-dir={os.path.join(WORK, 'debs')}",
             suite_of(stage["from"]), root, MIRROR],
            stdout=out, stderr=subprocess.STDOUT,
        ).returncode
    if status != 0:
        with open(log) as f:
            sys.stderr.write(f.read()[-3000:])
        raise SystemExit(f"runtime_image: debootstrap failed ({status})")
    meta = {"python": python_version(root), "suite": suite_of(stage["from"]), "layers": []}
    with open(os.path.join(root, "etc/dpkg/dpkg.cfg.d/slim"), "w") as f:
        f.write(DPKG_EXCLUDES)
    with open(os.path.join(root, "etc/apt/apt.conf.d/slim-clean"), "w") as f:
        f.write(APT_CLEAN)
    for pattern in ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
                    "usr/share/groff", "usr/share/lintian"):
        path = os.path.join(root, pattern)
        for entry in os.listdir(path) if os.path.isdir(path) else []:
            full = os.path.join(path, entry)
            if pattern == "usr/share/doc" and os.path.isdir(full) and not os.path.islink(full):
                for name in os.listdir(full):
                    if name != "copyright":
                        sub = os.path.join(full, name)
                        shutil.rmtree(sub) if os.path.isdir(sub) and not os.path.islink(sub) else os.remove(sub)
            elif os.path.isdir(full) and not os.path.islink(full):
                shutil.rmtree(full)
            else:
                os.remove(full)
    subprocess.run(["rm", "-rf", os.path.join(root, "var/cache/apt/archives"),
                    os.path.join(root, "var/lib/apt/lists")], check=True)
    os.makedirs(os.path.join(root, "var/cache/apt/archives/partial"))
    os.makedirs(os.path.join(root, "var/lib/apt/lists/partial"))
    size = tree_bytes(root)
    meta["layers"].append({"layer": f"FROM {stage['from']} (debootstrap --variant=minbase, slimmed)",
                           "bytes": size})
    for step in runs(stage):
        env = {"PATH": dockerfile.DEFAULT_PATH, "DEBIAN_FRONTEND": "noninteractive", **step["env"]}
        with open(log, "a") as out:
            status = in_chroot(root, step["run"], env, out)
        if status != 0:
            with open(log) as f:
                sys.stderr.write(f.read()[-3000:])
            raise SystemExit(f"runtime_image: RUN failed ({status}): {step['run'][-1]}")
        after = tree_bytes(root)
        meta["layers"].append({"layer": "RUN " + step["run"][-1], "bytes": after - size})
        size = after
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    os.rename(tmp, done)
    for name in os.listdir(WORK):
        if name.startswith("base-") and name != f"base-{key}":
            shutil.rmtree(os.path.join(WORK, name), ignore_errors=True)
    return done


def rpath(binary):
    out = subprocess.run(["readelf", "-d", binary], capture_output=True, text=True, check=True).stdout
    m = re.search(r"\((?:RUNPATH|RPATH)\)\s+Library r(?:un)?path: \[([^\]]*)\]", out)
    if not m:
        raise SystemExit(f"runtime_image: {binary} has no rpath")
    return m.group(1)


def searchable(st, ids):
    """Whether the image's user (uid, gid, groups) may enter a directory with this stat, by
    the kernel's rule: the owner's bits if it owns it, else the group's if it is in the group,
    else the others'."""
    return allowed(st, ids, 0o1)


def allowed(st, ids, bit):
    uid, groups = ids
    if uid == 0:
        return True
    if st[0] == uid:
        return bool(st[2] & (bit << 6))
    if st[1] in groups:
        return bool(st[2] & (bit << 3))
    return bool(st[2] & bit)


def writable(layers, ids, pruned):
    """The paths of the image its user may write: not symlinks, write permission for the user
    and search permission on every directory above. `layers` are (host directory, image path,
    owner) from the top down, owner None for the base's own recorded owners and (0, 0) for a
    COPY's (Docker's COPY makes root the owner); a directory present in several keeps the
    lowest one's owner and mode, as a COPY into an existing directory does."""
    meta = {}
    for host, at, owner in reversed(layers):
        for dirpath, dirnames, filenames in os.walk(host):
            rel = os.path.relpath(dirpath, host)
            image_dir = os.path.normpath(os.path.join(at, rel))
            for name in dirnames + filenames:
                path = os.path.normpath(os.path.join(image_dir, name))
                st = os.lstat(os.path.join(dirpath, name))
                if stat.S_ISLNK(st.st_mode):
                    continue
                if stat.S_ISDIR(st.st_mode) and path in meta:
                    continue
                uid, gid = owner or (st.st_uid, st.st_gid)
                meta[path] = (uid, gid, st.st_mode & 0o7777, stat.S_ISDIR(st.st_mode))
            for name in list(dirnames):
                full = os.path.join(dirpath, name)
                path = os.path.normpath(os.path.join(image_dir, name))
                if os.path.islink(full):
                    continue  # os.walk does not follow it
                if path in pruned:
                    dirnames.remove(name)
                elif not os.access(full, os.R_OK | os.X_OK):
                    # Only the image's user's view matters: a directory it cannot enter hides
                    # nothing it could write; one it can enter must be readable here too.
                    if path in meta and not searchable(meta[path], ids):
                        dirnames.remove(name)
                    else:
                        raise SystemExit(f"runtime_image: cannot read {full} to check it")
    out = []
    for path, st in sorted(meta.items()):
        parts = path.split("/")
        above = ["/".join(parts[:i]) for i in range(2, len(parts))]
        if all(searchable(meta[d], ids) for d in above if d in meta) and allowed(st, ids, 0o2):
            out.append(path)
    return out


def assemble(binary, out):
    build, stage = stages()
    key = base_key(stage)
    done = os.path.join(WORK, f"base-{key}")
    if not os.path.exists(os.path.join(done, "meta.json")):
        raise SystemExit(
            "runtime_image: the runtime stage's base is not made yet (or the Dockerfile changed):"
            " run scripts/setup.sh"
        )
    with open(os.path.join(done, "meta.json")) as f:
        meta = json.load(f)
    # The image's file system is the base (root's, as setup.sh made it) under a layer of this
    # assembly's COPY files, joined by an overlay mount when the container starts; a COPY of a
    # directory is mounted there read-only rather than copied (3.6 GB of libraries).
    base_root = os.path.join(done, "root")
    shutil.rmtree(out, ignore_errors=True)
    root, copies = os.path.join(out, "root"), os.path.join(out, "copies")
    os.makedirs(root)
    os.makedirs(copies)
    binds = []

    # The binary's rpath names libtorch in this machine's cache; the build stage's names the
    # same path under its own GRADCAM_CACHE, with Debian's Python version.
    host_rpath = rpath(binary)
    host_cache = os.path.realpath(CACHE)
    if not os.path.realpath(host_rpath).startswith(host_cache + "/"):
        raise SystemExit(f"runtime_image: the rpath {host_rpath} is not in {host_cache}")
    suffix = os.path.realpath(host_rpath)[len(host_cache):]
    host_python = re.search(r"python(\d+\.\d+)", suffix).group(1)
    builder_cache = build["env"].get("GRADCAM_CACHE")
    if not builder_cache:
        raise SystemExit("runtime_image: the build stage sets no GRADCAM_CACHE")
    image_rpath = builder_cache + suffix.replace(f"python{host_python}", f"python{meta['python']}")

    layers = list(meta["layers"])
    for step in stage["steps"]:
        if "copy" not in step:
            continue
        if step["from"] != build["name"] or step["chown"]:
            raise SystemExit(f"runtime_image: unsupported COPY {step}")
        for src in step["copy"]:
            dest = copies + step["dest"]
            if src.startswith(builder_cache + "/"):
                host = host_cache + src[len(builder_cache):].replace(
                    f"python{meta['python']}", f"python{host_python}")
                if os.path.isfile(host):
                    os.makedirs(os.path.dirname(dest), exist_ok=True)
                    shutil.copy2(host, dest)
                elif not os.path.isdir(host):
                    raise SystemExit(
                        f"runtime_image: COPY {src}: the build stage has no such file or directory"
                        f" (here {host}); the build stage's Python is Debian's {meta['python']}")
                else:
                    os.makedirs(dest, exist_ok=True)  # the mount point
                    binds.append([host, step["dest"]])
            elif os.path.basename(src) == "gradcam-serve":
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                shutil.copy2(binary, dest)
                subprocess.run(["patchelf", "--set-rpath", image_rpath, dest], check=True)
            else:
                raise SystemExit(f"runtime_image: no source known for COPY {src}")
            source = binds[-1][0] if binds and binds[-1][1] == step["dest"] else dest
            layers.append({"layer": f"COPY --from={step['from']} {src} {step['dest']}",
                           "bytes": tree_bytes(source) if os.path.isdir(source)
                           else os.path.getsize(source)})

    user = stage["user"] or "root"
    with open(os.path.join(base_root, "etc/passwd")) as f:
        entries = [line.split(":") for line in f.read().splitlines()]
    entry = next((e for e in entries if user in (e[0], e[2])), None)
    if entry is None:
        raise SystemExit(f"runtime_image: USER {user} is not in the image's /etc/passwd")
    uid, gid = int(entry[2]), int(entry[3])
    with open(os.path.join(base_root, "etc/group")) as f:
        groups = {int(g[2]) for g in (line.split(":") for line in f.read().splitlines())
                  if g[2] == str(gid) or entry[0] in g[3].split(",")}
    # /proc, /sys and /dev are the runtime's own mounts in a container, not the image's.
    layers_down = [(host, at, (0, 0)) for host, at in reversed(binds)]
    layers_down += [(copies, "/", (0, 0)), (base_root, "/", None)]
    user_may_write = writable(layers_down, (uid, groups | {gid}), {"/proc", "/sys", "/dev"})
    env = {"PATH": dockerfile.DEFAULT_PATH, **stage["env"]}
    env.setdefault("HOME", entry[5])  # as Docker does
    image = {
        "root": root,
        "from": stage["from"],
        "build_from": build["from"],
        "suite": meta["suite"],
        "debian_python": meta["python"],
        "user": entry[0],
        "uid": uid,
        "gid": gid,
        "lower": [copies, base_root],
        "binds": binds,
        "writable": user_may_write,
        "env": env,
        "workdir": stage["workdir"],
        "command": (stage["entrypoint"] or []) + (stage["cmd"] or []),
        "healthcheck": stage["healthcheck"],
        "volumes": stage["volumes"],
        "expose": stage["expose"],
        "stopsignal": stage["stopsignal"],
        "binary_rpath": image_rpath,
        "copies": [s["dest"] for s in stage["steps"] if "copy" in s],
        "layers": layers,
    }
    print(json.dumps(image, indent=1))


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1] == "base":
        print(base())
    elif len(sys.argv) == 4 and sys.argv[1] == "assemble":
        assemble(os.path.abspath(sys.argv[2]), os.path.abspath(sys.argv[3]))
    else:
        raise SystemExit(__doc__)
