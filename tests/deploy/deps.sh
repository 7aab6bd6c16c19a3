#!/usr/bin/env bash
# Installs what `make test-deploy` needs, when missing; idempotent and quiet
# when everything is there:
#   - Debian packages: podman, runc, debootstrap (and the project's own, via
#     tests/deps.sh: compiler, libraries, Java + Maven, Python venv);
#   - PyYAML into build/venv (tests/deploy/requirements.txt);
#   - kustomize and kubeconform, pinned (tests/deploy/lib.sh), built with
#     `go install` from the Go module proxy into build/deploy/tools/bin.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$KB_ROOT"

tests/deps.sh

pkgs=(podman runc debootstrap uidmap)
missing=()
for p in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
        kb_say "installing ${missing[*]}"
        sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
                "${missing[@]}" >/dev/null
fi

# Python packages of these tests, next to the e2e ones.
venv=build/venv
req=tests/deploy/requirements.txt
stamp=$venv/.deploy-req-stamp
if [ ! -f "$stamp" ] || ! cmp -s "$req" "$stamp"; then
        kb_say "installing Python packages of tests/deploy"
        "$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
        cp "$req" "$stamp"
fi

# kustomize and kubeconform, from their Go modules.
go=$(go_bin) || { kb_say "error: no Go toolchain (go on PATH or /usr/local/go)"; exit 1; }
mkdir -p "$KB_DEPLOY_TOOLS"
install_go_tool() {   # NAME MODULE@VERSION
        local name=$1 mod=$2 stamp=$KB_DEPLOY_TOOLS/.$1.version
        if [ -x "$KB_DEPLOY_TOOLS/$name" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$mod" ]; then
                return 0
        fi
        kb_say "go install $mod (first time: a few minutes)"
        GOBIN=$KB_DEPLOY_TOOLS GOTOOLCHAIN=local GOFLAGS=-mod=mod "$go" install "$mod"
        echo "$mod" > "$stamp"
}
install_go_tool kustomize "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
install_go_tool kubeconform "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION"
