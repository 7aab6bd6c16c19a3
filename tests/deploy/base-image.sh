#!/usr/bin/env bash
# Makes the Debian bookworm base images the Dockerfile builds FROM, without
# pulling from an image registry: debootstrap --variant=minbase bookworm into
# a directory, tar it, `podman import` it as debian:bookworm (build stage);
# the same tree with the documentation, man pages and locales removed (and
# dpkg told to keep them out, as the official slim images do) becomes
# debian:bookworm-slim (runtime stage).
#
# The tarballs are cached in build/deploy/cache/ (git-ignored): a rerun only
# imports them when the images are missing from podman's storage.
# --force makes new tarballs (e.g. to pick up Debian point releases).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
kb_podman_env

force=""
[ "${1:-}" = "--force" ] && force=1

full=$KB_DEPLOY_CACHE/bookworm-minbase.tar
slim=$KB_DEPLOY_CACHE/bookworm-slim.tar
mkdir -p "$KB_DEPLOY_CACHE"

if [ -n "$force" ] || [ ! -s "$full" ] || [ ! -s "$slim" ]; then
        mirror=$(kb_debian_mirror)
        root=$KB_DEPLOY_BUILD/rootfs
        rm -rf "$root"
        kb_say "debootstrap --variant=minbase bookworm (takes a few minutes)"
        t0=$(date +%s)
        debootstrap --variant=minbase bookworm "$root" "$mirror" \
                > "$KB_DEPLOY_BUILD/debootstrap.log" 2>&1 ||
                { tail -20 "$KB_DEPLOY_BUILD/debootstrap.log" >&2; exit 1; }
        # The same apt sources as the host (bookworm, -updates, -security)
        # when it has a deb822 file; else debootstrap's one line stays.
        if [ -f /etc/apt/sources.list.d/debian.sources ]; then
                rm -f "$root/etc/apt/sources.list"
                cp /etc/apt/sources.list.d/debian.sources "$root/etc/apt/sources.list.d/"
        fi
        # What container base images do: no recommends, no package cache.
        printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
                > "$root/etc/apt/apt.conf.d/90kbatch-container"
        rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
               "$root"/var/log/* "$root"/tmp/*
        tar --numeric-owner --xattrs -C "$root" -cf "$full.new" .
        mv "$full.new" "$full"
        # slim: as the official bookworm-slim images.
        cat > "$root/etc/dpkg/dpkg.cfg.d/90kbatch-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
EOF
        find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
        find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
        rm -rf "$root"/usr/share/man/* "$root"/usr/share/groff/* "$root"/usr/share/info/* \
               "$root"/usr/share/lintian/* "$root"/usr/share/locale/*
        tar --numeric-owner --xattrs -C "$root" -cf "$slim.new" .
        mv "$slim.new" "$slim"
        rm -rf "$root"
        kb_say "base tarballs made in $(( $(date +%s) - t0 ))s"
        # New tarballs: drop the old images so they are imported again.
        podman rmi -f "$KB_BASE_BUILD" "$KB_BASE_RUNTIME" >/dev/null 2>&1 || true
fi

import() {   # import TARBALL NAME
        if podman image exists "$2" 2>/dev/null; then
                return 0
        fi
        kb_say "podman import $(basename "$1") as $2"
        podman import -q --change 'CMD ["/bin/bash"]' "$1" "$2" >/dev/null
}
import "$full" "$KB_BASE_BUILD"
import "$slim" "$KB_BASE_RUNTIME"
