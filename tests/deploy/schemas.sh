#!/usr/bin/env bash
# Makes the JSON schemas the manifests are validated against, offline
# afterwards, into build/deploy/schemas/ (kept until a version in
# tests/deploy/lib.sh changes):
#   kubernetes/  the Kubernetes API, from the PyPI package kubernetes-validate
#                (its bundled per-version schemas, made standalone by
#                k8s_schemas.py);
#   crds/        the CRDs, converted by crd2jsonschema.py:
#                  KEDA ScaledObject & co.: config/crd/bases of the Go module
#                    github.com/kedacore/keda/v2;
#                  ServiceMonitor & co.: example/prometheus-operator-crd of the
#                    Go module github.com/prometheus-operator/prometheus-operator;
#                  Strimzi KafkaTopic: generated from Strimzi's API model
#                    (io.strimzi:api) by Strimzi's CRD generator
#                    (io.strimzi:crd-generator), both from Maven Central.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$KB_ROOT"
py=build/venv/bin/python
go=$(go_bin)

want="k8s=$K8S_SCHEMA_PKG:$K8S_VERSIONS keda=$KEDA_VERSION promop=$PROMOP_VERSION strimzi=$STRIMZI_VERSION v2"
stamp=$KB_DEPLOY_SCHEMAS/.stamp
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        exit 0
fi
rm -rf "$KB_DEPLOY_SCHEMAS" "$KB_DEPLOY_BUILD/crd-src"
mkdir -p "$KB_DEPLOY_SCHEMAS/kubernetes" "$KB_DEPLOY_SCHEMAS/crds" \
         "$KB_DEPLOY_CACHE" "$KB_DEPLOY_BUILD/crd-src"

# Kubernetes API schemas.
kb_say "Kubernetes schemas from $K8S_SCHEMA_PKG"
wheel=$(ls "$KB_DEPLOY_CACHE"/kubernetes_validate-"${K8S_SCHEMA_PKG#*==}"-*.whl 2>/dev/null | head -1 || true)
if [ -z "$wheel" ]; then
        "$py" -m pip download -q --disable-pip-version-check --no-deps \
                -d "$KB_DEPLOY_CACHE" "$K8S_SCHEMA_PKG"
        wheel=$(ls "$KB_DEPLOY_CACHE"/kubernetes_validate-"${K8S_SCHEMA_PKG#*==}"-*.whl | head -1)
fi
# shellcheck disable=SC2086
"$py" tests/deploy/k8s_schemas.py "$wheel" "$KB_DEPLOY_SCHEMAS/kubernetes" $K8S_VERSIONS

# CRDs from Go modules (the module cache keeps the download).
crd_src=$KB_DEPLOY_BUILD/crd-src
gomod_dir() {   # MODULE@VERSION -> the module's directory in the module cache
        GOTOOLCHAIN=local GOFLAGS=-mod=mod "$go" mod download -json "$1" |
                "$py" -c 'import json,sys; d=json.load(sys.stdin); print(d["Dir"]) if "Dir" in d else sys.exit(d.get("Error","no Dir"))'
}
kb_say "KEDA CRDs from github.com/kedacore/keda/v2@$KEDA_VERSION"
keda=$(gomod_dir "github.com/kedacore/keda/v2@$KEDA_VERSION")
cp "$keda"/config/crd/bases/keda.sh_*.yaml "$crd_src/"
kb_say "prometheus-operator CRDs from @$PROMOP_VERSION"
promop=$(gomod_dir "github.com/prometheus-operator/prometheus-operator@$PROMOP_VERSION")
cp "$promop"/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml \
   "$promop"/example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml "$crd_src/"

# Strimzi's KafkaTopic CRD, generated as Strimzi's build does.
kb_say "Strimzi $STRIMZI_VERSION KafkaTopic CRD (Maven Central: io.strimzi:api, crd-generator)"
lib=$KB_DEPLOY_CACHE/strimzi-$STRIMZI_VERSION
if [ ! -f "$lib/.done" ]; then
        rm -rf "$lib"
        mvn -q -B -f tests/deploy/strimzi/pom.xml -Dstrimzi.version="$STRIMZI_VERSION" \
                dependency:copy-dependencies -DoutputDirectory="$lib" >/dev/null
        touch "$lib/.done"
fi
java -cp "$lib/*" io.strimzi.crdgenerator.CrdGenerator \
        --target-kube 1.16+ --crd-api-version v1 \
        --api-versions v1alpha1,v1beta1,v1beta2 --storage-version v1beta2 --yaml \
        "io.strimzi.api.kafka.model.topic.KafkaTopic=$crd_src/kafka.strimzi.io_kafkatopics.yaml" \
        2> >(grep -v '^SLF4J' >&2)
[ -s "$crd_src/kafka.strimzi.io_kafkatopics.yaml" ] ||
        { kb_say "error: the Strimzi CRD generator wrote nothing"; exit 1; }

"$py" tests/deploy/crd2jsonschema.py "$KB_DEPLOY_SCHEMAS/crds" "$crd_src"/*.yaml
echo "$want" > "$stamp"
