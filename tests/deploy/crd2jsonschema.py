#!/usr/bin/env python3
"""Turns CustomResourceDefinitions into JSON schemas for kubeconform, as
kubeconform's openapi2jsonschema.py does, strict:

    crd2jsonschema.py OUTDIR CRD.yaml...

writes OUTDIR/<group>/<kind>_<version>.json (lower case) for every served
version of every CRD in the files, the layout of kubeconform's
-schema-location template "{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json".

The OpenAPI v3 structural schema is made a JSON schema: `nullable` becomes a
"null" type, x-kubernetes-int-or-string becomes string-or-integer, objects
with declared properties and no x-kubernetes-preserve-unknown-fields reject
unknown ones (as the API server prunes them, a typo would be lost silently),
and apiVersion/kind must name this version. Needs PyYAML.
"""
import json
import os
import sys

import yaml


def convert(node):
    """The JSON-schema form of one OpenAPI v3 schema node (a new object)."""
    if isinstance(node, list):
        return [convert(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for k, v in node.items():
        if k in ("properties", "patternProperties", "definitions", "$defs"):
            out[k] = {name: convert(s) for name, s in v.items()}
        elif k in ("items", "additionalProperties", "not") and isinstance(v, dict):
            out[k] = convert(v)
        elif k in ("allOf", "anyOf", "oneOf"):
            out[k] = [convert(s) for s in v]
        elif k in ("nullable", "x-kubernetes-int-or-string"):
            continue
        else:
            out[k] = v
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["oneOf"] = out.get("oneOf", []) + [{"type": "string"}, {"type": "integer"}]
    if node.get("nullable") and "type" in out:
        t = out["type"]
        out["type"] = (t if isinstance(t, list) else [t]) + ["null"]
    if ("properties" in out and "additionalProperties" not in out
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def schemas(crd):
    spec = crd["spec"]
    group, kind = spec["group"], spec["names"]["kind"]
    for v in spec["versions"]:
        if not v.get("served", True):
            continue
        s = (v.get("schema") or spec.get("validation") or {}).get("openAPIV3Schema")
        if s is None:
            raise ValueError(f"{kind} {v['name']}: no openAPIV3Schema")
        js = convert(s)
        props = js.setdefault("properties", {})
        props["apiVersion"] = {"type": "string", "enum": [f"{group}/{v['name']}"]}
        props["kind"] = {"type": "string", "enum": [kind]}
        props.setdefault("metadata", {"type": "object"})
        js["$schema"] = "http://json-schema.org/draft-07/schema#"
        js["description"] = js.get("description", f"{kind} ({group}/{v['name']})")
        yield group, kind, v["name"], js


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    outdir, n = argv[1], 0
    for path in argv[2:]:
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if not doc or doc.get("kind") != "CustomResourceDefinition":
                    continue
                for group, kind, ver, js in schemas(doc):
                    d = os.path.join(outdir, group.lower())
                    os.makedirs(d, exist_ok=True)
                    with open(os.path.join(d, f"{kind.lower()}_{ver.lower()}.json"), "w") as o:
                        json.dump(js, o, indent=1, sort_keys=True)
                    n += 1
    if n == 0:
        print("crd2jsonschema: no CRD found", file=sys.stderr)
        return 1
    print(f"crd2jsonschema: {n} schemas", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
