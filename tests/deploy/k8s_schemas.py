#!/usr/bin/env python3
"""Makes kubeconform's "standalone-strict" JSON schemas for the Kubernetes
API from the schemas the PyPI package kubernetes-validate ships.

kubernetes-validate's "-local-strict" schemas hold one file per type and
refer to a shared _definitions.json by an absolute URI that kubeconform would
try to fetch. For every top-level kind (a schema with
x-kubernetes-group-version-kind) this writes one self-contained file: the
kind's schema with the definitions it reaches under $defs and every $ref
made local.

    k8s_schemas.py WHEEL OUTDIR VERSION...

writes OUTDIR/v<VERSION>-standalone-strict/<kind>[-<group>]-<version>.json,
the layout of kubeconform's -schema-location template
"{{ .NormalizedKubernetesVersion }}-standalone{{ .StrictSuffix }}/
{{ .ResourceKind }}{{ .KindSuffix }}.json". Standard library only.
"""
import json
import os
import re
import sys
import zipfile

PREFIX = "kubernetes_validate/kubernetes-json-schema/"
REF = re.compile(r"^(?:[^#]*_definitions\.json)?#/\$defs/(.+)$")


def localize(node, reached, defs, todo):
    """Rewrites refs to _definitions.json as local ones, in place; records
    the definitions reached."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                m = REF.match(v)
                if not m:
                    raise ValueError(f"unexpected $ref {v!r}")
                name = m.group(1)
                node[k] = "#/$defs/" + name
                if name not in reached:
                    if name not in defs:
                        raise ValueError(f"$ref to unknown definition {name}")
                    reached.add(name)
                    todo.append(name)
            else:
                localize(v, reached, defs, todo)
    elif isinstance(node, list):
        for v in node:
            localize(v, reached, defs, todo)


def standalone(schema, defs):
    reached, todo = set(), []
    localize(schema, reached, defs, todo)
    out_defs = {}
    while todo:
        name = todo.pop()
        d = json.loads(json.dumps(defs[name]))
        localize(d, reached, defs, todo)
        out_defs[name] = d
    schema.pop("$id", None)
    if out_defs:
        schema["$defs"] = dict(sorted(out_defs.items()))
    return schema


def main(argv):
    if len(argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    wheel, outdir, versions = argv[1], argv[2], argv[3:]
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        for ver in versions:
            src = f"{PREFIX}v{ver}-local-strict/"
            files = [n for n in names if n.startswith(src) and n.endswith(".json")]
            if not files:
                print(f"k8s_schemas: {wheel} has no schemas for v{ver}", file=sys.stderr)
                return 1
            defs = json.loads(z.read(src + "_definitions.json"))["$defs"]
            dst = os.path.join(outdir, f"v{ver}-standalone-strict")
            os.makedirs(dst, exist_ok=True)
            count = 0
            for n in files:
                base = os.path.basename(n)
                if base in ("_definitions.json", "all.json"):
                    continue
                schema = json.loads(z.read(n))
                if "x-kubernetes-group-version-kind" not in schema:
                    continue   # not a top-level kind
                with open(os.path.join(dst, base), "w") as f:
                    json.dump(standalone(schema, defs), f, separators=(",", ":"))
                count += 1
            print(f"k8s_schemas: v{ver}: {count} kinds", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
