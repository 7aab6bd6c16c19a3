# shellcheck shell=bash disable=SC2034
# Sourced by the tests/deploy scripts: paths, pinned versions and the podman
# set-up this machine needs (no Docker engine; podman with runc, cgroupfs,
# vfs storage and no default ulimits, see DESIGN.md "container").
# Everything lives under build/deploy/ (git-ignored) so `make clean` removes it.

KB_ROOT=${KB_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
KB_DEPLOY_BUILD=${KB_DEPLOY_BUILD:-$KB_ROOT/build/deploy}
KB_DEPLOY_CACHE=$KB_DEPLOY_BUILD/cache          # downloads, base tarballs
KB_DEPLOY_TOOLS=$KB_DEPLOY_BUILD/tools/bin      # kustomize, kubeconform
KB_DEPLOY_SCHEMAS=$KB_DEPLOY_BUILD/schemas      # JSON schemas for kubeconform

# Pinned tool and schema versions (see docs/deploy.md, "Validation").
KUSTOMIZE_VERSION=v5.7.1          # Go module sigs.k8s.io/kustomize/kustomize/v5
KUBECONFORM_VERSION=v0.7.0        # Go module github.com/yannh/kubeconform
K8S_SCHEMA_PKG=kubernetes-validate==1.37.0   # PyPI wheel shipping the API schemas
K8S_VERSIONS="1.29.0 1.33.0"      # Kubernetes versions validated against
KEDA_VERSION=v2.16.1              # Go module github.com/kedacore/keda/v2 (CRDs)
PROMOP_VERSION=v0.85.0            # Go module github.com/prometheus-operator/prometheus-operator
STRIMZI_VERSION=0.45.0            # Maven io.strimzi:api + io.strimzi:crd-generator

# The image.
KB_IMAGE=${KB_IMAGE:-localhost/kbatch:test}
KB_BASE_BUILD=debian:bookworm      # FROM of the build stage
KB_BASE_RUNTIME=debian:bookworm-slim   # FROM of the runtime stage

go_bin() {
        if command -v go >/dev/null 2>&1; then command -v go
        elif [ -x /usr/local/go/bin/go ]; then echo /usr/local/go/bin/go
        else return 1; fi
}

# Writes the containers.conf / storage.conf and exports the variables that
# make every podman call of these scripts use them.
kb_podman_env() {
        local cdir=$KB_DEPLOY_BUILD/containers
        mkdir -p "$cdir/storage" "$cdir/run" "$cdir/tmp"
        cat > "$cdir/containers.conf" <<EOF
[containers]
default_ulimits = []
netns = "host"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$cdir/events.log"
image_copy_tmp_dir = "$cdir/tmp"
EOF
        cat > "$cdir/storage.conf" <<EOF
[storage]
driver = "vfs"
graphroot = "$cdir/storage"
runroot = "$cdir/run"
EOF
        export CONTAINERS_CONF=$cdir/containers.conf
        export CONTAINERS_STORAGE_CONF=$cdir/storage.conf
        export TMPDIR=${TMPDIR:-$cdir/tmp}
}

# The Debian mirror this machine's apt uses (first bookworm "deb" source),
# so debootstrap and the image's apt reach the same mirror as the host.
kb_debian_mirror() {
        local m=""
        if [ -f /etc/apt/sources.list.d/debian.sources ]; then
                m=$(awk '/^URIs:/ {u=$2} /^Suites:/ && / bookworm( |$)/ {print u; exit}' \
                        /etc/apt/sources.list.d/debian.sources)
        fi
        if [ -z "$m" ] && [ -f /etc/apt/sources.list ]; then
                m=$(awk '$1=="deb" && $3=="bookworm" {print $2; exit}' /etc/apt/sources.list)
        fi
        [ -n "$m" ] || { echo "deploy: no bookworm apt source found on this machine" >&2; return 1; }
        echo "$m"
}

kb_say() { printf 'deploy: %s\n' "$*" >&2; }
