#!/usr/bin/env bash
# tests/rdkafka.sh [PREFIX] - builds librdkafka 2.8.0 (Debian 13 "trixie"'s
# source package) and installs it into PREFIX (default build/rdkafka).
#
# Debian 12 ships librdkafka 2.0.2, whose bugs (librdkafka#4059: a commit
# racing a cooperative rebalance drops the whole assignment; #3297/#4849:
# INVALID_TXN_STATE after a transaction timed out during a broker outage)
# cost duplicate model calls (docs/reliability.md). The Makefile links
# against PREFIX through pkg-config, with an rpath to PREFIX/lib.
#
# The upstream tarball comes from Debian's package archive, the registry the
# project already uses; its sha256 is the one of trixie's
# librdkafka_2.8.0-1.dsc (pinned below), checked before anything is built.
# Build dependencies are Debian 12 packages, installed with apt-get when
# missing. Cached: nothing is done when PREFIX already holds 2.8.0; the
# download is kept in tests/rdkafka/cache/ (also what deploy/Dockerfile
# copies into the image build, so the image ships the same library).
# Only the C library is built (no C++ wrapper, no examples).
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=2.8.0
TARBALL=librdkafka_${VERSION}.orig.tar.gz
SHA256=5bd1c46f63265f31c6bfcedcde78703f77d28238eadf23821c2b43fc30be3e25
MIRROR=${KB_DEBIAN_MIRROR:-http://deb.debian.org/debian}
URL=$MIRROR/pool/main/libr/librdkafka/$TARBALL
CACHE=tests/rdkafka/cache
PREFIX=${1:-build/rdkafka}
case $PREFIX in /*) ;; *) PREFIX=$PWD/$PREFIX ;; esac

log() { printf 'rdkafka: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

pc=$PREFIX/lib/pkgconfig/rdkafka.pc
if [ -f "$pc" ] && [ "$(PKG_CONFIG_PATH=$PREFIX/lib/pkgconfig pkg-config --modversion rdkafka)" = "$VERSION" ] &&
    [ -e "$PREFIX/lib/librdkafka.so.1" ]; then
    exit 0
fi

# Build dependencies (all in Debian 12).
deps=(build-essential pkg-config python3 libssl-dev libsasl2-dev zlib1g-dev libzstd-dev
      liblz4-dev libcurl4-openssl-dev curl)
missing=()
for p in "${deps[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

mkdir -p "$CACHE"
if ! echo "$SHA256  $CACHE/$TARBALL" | sha256sum -c --status 2>/dev/null; then
    log "fetching $URL"
    curl -fsSL --retry 3 -o "$CACHE/$TARBALL.part" "$URL" || die "cannot fetch $URL"
    echo "$SHA256  $CACHE/$TARBALL.part" | sha256sum -c --status ||
        die "$TARBALL: sha256 is $(sha256sum "$CACHE/$TARBALL.part" | cut -d' ' -f1), expected $SHA256"
    mv "$CACHE/$TARBALL.part" "$CACHE/$TARBALL"
fi

t0=$(date +%s)
src=$(mktemp -d "${TMPDIR:-/tmp}/rdkafka.XXXXXX")
trap 'rm -rf "$src"' EXIT
tar -xzf "$CACHE/$TARBALL" -C "$src" --strip-components=1
log "building librdkafka $VERSION into $PREFIX"
(
    cd "$src"
    # mklove's configure: --install-deps is off by default (it never
    # downloads anything); every feature comes from the Debian packages.
    ./configure --prefix="$PREFIX" --disable-debug-symbols >build.log 2>&1 ||
        { tail -40 build.log >&2; exit 1; }
    make -C src -j"$(nproc)" >>build.log 2>&1 || { tail -40 build.log >&2; exit 1; }
    # PREFIX may be shared (/usr/local in deploy/Dockerfile): only
    # librdkafka's own files are replaced.
    rm -rf "$PREFIX"/include/librdkafka "$PREFIX"/lib/librdkafka.* "$PREFIX"/lib/pkgconfig/rdkafka.pc
    make -C src install >>build.log 2>&1 || { tail -40 build.log >&2; exit 1; }
)
# A static archive would let a forgotten rpath link silently; only the .so.
rm -f "$PREFIX"/lib/librdkafka.a "$PREFIX"/lib/librdkafka-static.a \
    "$PREFIX"/lib/pkgconfig/rdkafka-static.pc
got=$(PKG_CONFIG_PATH=$PREFIX/lib/pkgconfig pkg-config --modversion rdkafka)
[ "$got" = "$VERSION" ] || die "built $got, expected $VERSION"
log "librdkafka $VERSION built in $(($(date +%s) - t0)) s, $(du -sh "$PREFIX" | cut -f1) in $PREFIX"
