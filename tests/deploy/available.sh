#!/usr/bin/env bash
# Exit 0 when `make test-deploy` can run here: podman is installed, or it
# can be installed (apt-get, as root or with password-less sudo). `make test`
# runs test-deploy only then.
command -v podman >/dev/null 2>&1 && exit 0
command -v apt-get >/dev/null 2>&1 || exit 1
[ "$(id -u)" = 0 ] && exit 0
sudo -n true >/dev/null 2>&1
