"""`docker exec` for the containers tests/e2e/container.rs runs, without root.

    python3 scripts/container_exec.py PID UID GID [NAME=VALUE ...] -- ARGV...

runs ARGV in the container whose process is PID: in its network and mount namespaces and its
root, as UID:GID, with exactly the environment given. The container runs in two user
namespaces (see LAUNCH in tests/common/image.rs): the outer one maps the caller to root and
owns the mount and network namespaces; the inner one, the process's own, maps the caller to the
image's user. nsenter (util-linux 2.38) cannot name the outer one, which has no process of its
own, so this does what nsenter would, taking it as the inner one's parent (NS_GET_PARENT).
"""

import ctypes
import fcntl
import os
import sys
import warnings  # noqa: F401  os.execvpe imports it, and after the chroot it cannot

NS_GET_PARENT = 0xB702  # _IO(0xb7, 0x2), linux/nsfs.h
CLONE_NEWUSER = 0x10000000

libc = ctypes.CDLL(None, use_errno=True)


def setns(fd, kind, what):
    if libc.setns(fd, kind) != 0:
        err = ctypes.get_errno()
        raise SystemExit(f"container_exec: entering the container's {what} namespace: {os.strerror(err)}")


def main(args):
    if len(args) < 5 or "--" not in args:
        raise SystemExit(__doc__)
    split = args.index("--")
    pid, uid, gid = args[0], int(args[1]), int(args[2])
    env = dict(a.split("=", 1) for a in args[3:split])
    argv = args[split + 1:]
    ns = f"/proc/{pid}/ns"
    inner = os.open(f"{ns}/user", os.O_RDONLY)
    outer = fcntl.ioctl(inner, NS_GET_PARENT)
    net, mnt = os.open(f"{ns}/net", os.O_RDONLY), os.open(f"{ns}/mnt", os.O_RDONLY)
    root = os.open(f"/proc/{pid}/root", os.O_RDONLY | os.O_DIRECTORY)
    setns(outer, CLONE_NEWUSER, "outer user")
    setns(net, 0, "network")
    setns(mnt, 0, "mount")
    os.fchdir(root)
    os.chroot(".")
    setns(inner, CLONE_NEWUSER, "user")
    os.setgid(gid)
    os.setuid(uid)
    os.chdir("/")
    os.execvpe(argv[0], argv, env)


if __name__ == "__main__":
    main(sys.argv[1:])
