"""The Kubernetes manifests in deploy/k8s, rendered and validated offline (tests/e2e/k8s.rs).

    python3 scripts/k8s_manifests.py render deploy/k8s/gpu       # the resources, as JSON
    python3 scripts/k8s_manifests.py commented FILE NAME         # a "# BEGIN NAME" block, as JSON
    python3 scripts/k8s_manifests.py validate deploy/k8s/base... # against Kubernetes' schemas

No kustomize binary can be installed where this project is built, so `render` applies the
kustomizations itself, for the features they use and nothing more (anything else in a
kustomization is refused, so that a new feature cannot be silently ignored):
- `resources`: files, or directories holding a kustomization.yaml (bases), in order;
- `patches` with a `path`: a strategic-merge patch, matched to a resource by kind and name:
  maps merge key by key, lists whose items all have a `name` (containers, env, volumes,
  volumeMounts) merge item by item on it, other lists and values replace;
- `images`: a container image named `name` becomes `newName:newTag`.
Validation uses the OpenAPI schemas of the `kubernetes-validate` package (no cluster, no
network), strict: an unknown field is an error.
"""

import json
import os
import sys

import yaml

# The oldest Kubernetes release the manifests are meant for, and the newest the package knows.
VERSIONS = ["1.30.0", "1.37.0"]
KNOWN = {"apiVersion", "kind", "resources", "patches", "images"}


def load_documents(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def merge(base, patch):
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = merge(base[key], value) if key in base else value
        return out
    named = lambda items: isinstance(items, list) and all(  # noqa: E731
        isinstance(i, dict) and "name" in i for i in items
    )
    if named(base) and named(patch):
        out = list(base)
        for item in patch:
            at = next((i for i, b in enumerate(out) if b["name"] == item["name"]), None)
            if at is None:
                out.append(item)
            else:
                out[at] = merge(out[at], item)
        return out
    return patch


def render(directory):
    (kustomization,) = load_documents(os.path.join(directory, "kustomization.yaml"))
    unknown = set(kustomization) - KNOWN
    if unknown:
        raise SystemExit(f"{directory}: kustomization fields not rendered here: {sorted(unknown)}")
    resources = []
    for entry in kustomization.get("resources", []):
        path = os.path.normpath(os.path.join(directory, entry))
        resources += render(path) if os.path.isdir(path) else load_documents(path)
    for patch_entry in kustomization.get("patches", []):
        if set(patch_entry) != {"path"}:
            raise SystemExit(f"{directory}: only patches with a path are rendered: {patch_entry}")
        for patch in load_documents(os.path.join(directory, patch_entry["path"])):
            key = (patch["kind"], patch["metadata"]["name"])
            matches = [i for i, r in enumerate(resources) if (r["kind"], r["metadata"]["name"]) == key]
            if len(matches) != 1:
                raise SystemExit(f"{directory}: patch {patch_entry['path']} matches {len(matches)} resources")
            resources[matches[0]] = merge(resources[matches[0]], patch)
    for image in kustomization.get("images", []):
        for resource in resources:
            pod = resource.get("spec", {}).get("template", {}).get("spec", {})
            for container in pod.get("containers", []) + pod.get("initContainers", []):
                if container["image"].split(":")[0] == image["name"]:
                    container["image"] = f"{image.get('newName', image['name'])}:{image.get('newTag', 'latest')}"
    return resources


def commented(path, name):
    """The YAML between `# BEGIN name` and `# END name`, comment marks removed."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    start, end = lines.index(f"# BEGIN {name}"), lines.index(f"# END {name}")
    body = [line[2:] if line.startswith("# ") else line.lstrip("#") for line in lines[start + 1:end]]
    return yaml.safe_load("\n".join(body))


def validate(directories):
    import kubernetes_validate

    failures, checked = [], 0
    hpa = commented(os.path.join(os.path.dirname(directories[0]), "base", "hpa.yaml"), "custom-metric HPA")
    resources = [("custom-metric HPA", hpa)]
    for directory in directories:
        resources += [(directory, r) for r in render(directory)]
    for where, resource in resources:
        for version in VERSIONS:
            checked += 1
            try:
                kubernetes_validate.validate(resource, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                failures.append(f"{where}: {resource['kind']}/{resource['metadata']['name']} "
                                f"(Kubernetes {version}): {'.'.join(map(str, e.path))}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                failures.append(f"{where}: no schema for {resource['kind']} {resource['apiVersion']} in {version}: {e}")
    print("\n".join(failures) or f"{checked} validations passed ({len(resources)} resources x {VERSIONS})")
    return not failures


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command == "render":
        print(json.dumps(render(args[0]), indent=1))
    elif command == "commented":
        print(json.dumps(commented(args[0], args[1]), indent=1))
    elif command == "validate":
        sys.exit(0 if validate(args) else 1)
    else:
        raise SystemExit(__doc__)
