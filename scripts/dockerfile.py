"""Reads a Dockerfile into its stages, the way a builder would: continuation lines joined,
comments dropped, ARG and ENV substituted where Docker substitutes them, shell and exec forms
told apart. Used by scripts/runtime_image.py, which assembles the runtime stage without a
Docker engine, so that the test of the image follows the Dockerfile instead of repeating it.

    python3 scripts/dockerfile.py Dockerfile     # prints the stages as JSON
"""

import json
import re
import shlex
import sys

# What the debian images set in their configuration; a stage's ENV PATH would replace it.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_VAR = re.compile(r"\$(?:\{(\w+)(?::([-+])([^}]*))?\}|(\w+))")


def substitute(text, values):
    """Docker's word substitution: $NAME, ${NAME}, ${NAME:-default}, ${NAME:+alternative}."""

    def one(m):
        name = m.group(1) or m.group(4)
        value = values.get(name, "")
        if m.group(2) == "-":
            return value or m.group(3)
        if m.group(2) == "+":
            return m.group(3) if value else ""
        return value

    return _VAR.sub(one, text)


def logical_lines(text):
    """Instructions as single lines: comments out, backslash continuations joined."""
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#"):
            continue  # comments (and parser directives) may sit inside a continuation
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        if current.strip():
            lines.append(current.strip())
        current = ""
    if current.strip():
        lines.append(current.strip())
    return lines


def command_form(rest):
    """Exec form (a JSON array) as is; shell form as /bin/sh -c."""
    if rest.startswith("["):
        try:
            value = json.loads(rest)
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return value
        except json.JSONDecodeError:
            pass
    return ["/bin/sh", "-c", rest]


def flags(words):
    """Leading --name=value options of COPY and HEALTHCHECK, and the words after them."""
    opts = {}
    while words and words[0].startswith("--"):
        name, _, value = words.pop(0)[2:].partition("=")
        opts[name] = value
    return opts, words


def key_values(rest, values):
    """ENV and LABEL: k=v pairs (quoted as in a shell), or the legacy `ENV key value`."""
    words = shlex.split(rest)
    if words and "=" not in words[0]:
        return {words[0]: substitute(rest.split(None, 1)[1], values)}
    out = {}
    for word in words:
        key, _, value = word.partition("=")
        out[key] = substitute(value, values)
    return out


def parse(text):
    global_args, stages, stage = {}, [], None
    for line in logical_lines(text):
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            words = substitute(rest, global_args).split()
            stage = {
                "from": words[0],
                "name": words[2] if len(words) >= 3 and words[1].lower() == "as" else None,
                "args": {},
                "env": {},
                "steps": [],
                "user": None,
                "workdir": "/",
                "volumes": [],
                "expose": [],
                "entrypoint": None,
                "cmd": None,
                "healthcheck": None,
                "stopsignal": "SIGTERM",
            }
            stages.append(stage)
            continue
        if stage is None:
            if keyword == "ARG":
                name, _, default = rest.partition("=")
                global_args[name] = default
                continue
            raise ValueError(f"{keyword} before the first FROM")
        values = {**stage["args"], **stage["env"]}
        if keyword == "ARG":
            name, has_default, default = rest.partition("=")
            stage["args"][name] = (
                substitute(default, values) if has_default else global_args.get(name, "")
            )
        elif keyword == "ENV":
            stage["env"].update(key_values(rest, values))
        elif keyword == "RUN":
            # RUN sees the stage's ARGs and ENV as environment variables; the shell expands them.
            stage["steps"].append(
                {"run": command_form(rest), "env": {**stage["args"], **stage["env"]}}
            )
        elif keyword in ("COPY", "ADD"):
            opts, words = flags(shlex.split(substitute(rest, values)))
            if keyword == "ADD" or len(words) < 2:
                raise ValueError(f"unsupported: {line}")
            stage["steps"].append(
                {"copy": words[:-1], "dest": words[-1], "from": opts.get("from"),
                 "chown": opts.get("chown")}
            )
        elif keyword == "USER":
            stage["user"] = substitute(rest, values)
        elif keyword == "WORKDIR":
            stage["workdir"] = substitute(rest, values)
        elif keyword == "VOLUME":
            found = json.loads(rest) if rest.startswith("[") else rest.split()
            stage["volumes"] += [substitute(v, values) for v in found]
        elif keyword == "EXPOSE":
            stage["expose"] += substitute(rest, values).split()
        elif keyword == "ENTRYPOINT":
            stage["entrypoint"] = command_form(rest)
            stage["cmd"] = None  # Docker resets an inherited CMD when ENTRYPOINT is set
        elif keyword == "CMD":
            stage["cmd"] = command_form(rest)
        elif keyword == "STOPSIGNAL":
            stage["stopsignal"] = substitute(rest, values)
        elif keyword == "HEALTHCHECK":
            opts, body = {}, rest
            while (m := re.match(r"--(\w[\w-]*)=(\S*)\s+", body)):
                opts[m.group(1)] = m.group(2)
                body = body[m.end():]
            if body.upper() == "NONE":
                stage["healthcheck"] = None
                continue
            kind, _, command = body.partition(" ")
            if kind.upper() != "CMD":
                raise ValueError(f"unsupported: {line}")
            stage["healthcheck"] = {"options": opts, "test": command_form(command.strip())}
        elif keyword in ("LABEL", "SHELL", "ONBUILD", "MAINTAINER"):
            if keyword in ("SHELL", "ONBUILD"):
                raise ValueError(f"unsupported: {line}")
        else:
            raise ValueError(f"unknown instruction: {line}")
    return stages


def stage_named(stages, name):
    for stage in stages:
        if stage["name"] == name:
            return stage
    raise SystemExit(f"the Dockerfile has no stage named {name}")


if __name__ == "__main__":
    with open(sys.argv[1] if len(sys.argv) > 1 else "Dockerfile", encoding="utf-8") as f:
        print(json.dumps(parse(f.read()), indent=2))
