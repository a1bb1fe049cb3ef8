"""Checks a KServe manifest against KServe's own schema, offline: every field of the resource
must be one that KServe's Python SDK (its generated models of the CRD, and the Kubernetes
client's for the pod's parts) knows, with a value of the type it gives. Prints the resource as
JSON on success.

    python scripts/kserve_manifest.py FILE
"""

import json
import sys

import kserve
import kubernetes.client
import yaml

SCALARS = {"str": str, "int": int, "bool": bool, "float": (int, float)}


def model(name):
    return getattr(kserve, name, None) or getattr(kubernetes.client, name)


def check(value, kind, path, errors):
    # The generators write containers either way: list[X] or List[X], dict(str, X) or Dict[str, X].
    for opening in ("list[", "List["):
        if kind.startswith(opening):
            if not isinstance(value, list):
                errors.append(f"{path}: a list expected")
                return
            for i, item in enumerate(value):
                check(item, kind[len(opening):-1], f"{path}[{i}]", errors)
            return
    for opening in ("dict(", "Dict["):
        if kind.startswith(opening):
            inner = kind[len(opening):-1].split(", ", 1)[1]
            if not isinstance(value, dict):
                errors.append(f"{path}: a mapping expected")
                return
            for k, v in value.items():
                check(v, inner, f"{path}.{k}", errors)
            return
    if kind == "object":
        return
    if kind in SCALARS:
        if not isinstance(value, SCALARS[kind]) or (kind != "bool" and isinstance(value, bool)):
            errors.append(f"{path}: {kind} expected, not {value!r}")
    else:
        cls = model(kind)
        if not isinstance(value, dict):
            errors.append(f"{path}: a {kind} mapping expected")
            return
        fields = {json_name: attr for attr, json_name in cls.attribute_map.items()}
        for k, v in value.items():
            if k not in fields:
                errors.append(f"{path}.{k}: not a field of {kind}")
            else:
                check(v, cls.openapi_types[fields[k]], f"{path}.{k}", errors)


def main(path):
    with open(path, encoding="utf-8") as f:
        resource = yaml.safe_load(f)
    errors = []
    if resource.get("apiVersion") != "serving.kserve.io/v1beta1" or resource.get("kind") != "InferenceService":
        errors.append("not a serving.kserve.io/v1beta1 InferenceService")
    check(resource, "V1beta1InferenceService", resource.get("kind", "?"), errors)
    if errors:
        raise SystemExit("\n".join(errors))
    print(json.dumps(resource))


if __name__ == "__main__":
    main(sys.argv[1])
