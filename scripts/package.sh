#!/bin/sh
# Lays out Myelin's installable files under DESTDIR, as the container image and a systemd
# install use them:
#
#   DESTDIR/usr/local/bin/myelin                      the server
#   DESTDIR/usr/local/bin/myelin-docker-entrypoint    the container's entry point
#   DESTDIR/usr/lib/systemd/system/myelin.service     the systemd unit
#   DESTDIR/usr/share/doc/myelin/                     README and docs
#
# Usage: scripts/package.sh DESTDIR   (MYELIN_BINARY: the binary to install, default
# target/release/myelin). The Dockerfile runs this; so does tests/blackbox/packaging.rs.
set -eu
dest="${1:?usage: scripts/package.sh DESTDIR}"
here="$(cd "$(dirname "$0")/.." && pwd)"
binary="${MYELIN_BINARY:-$here/target/release/myelin}"
[ -x "$binary" ] || { echo "package.sh: no binary at $binary (build it, or set MYELIN_BINARY)" >&2; exit 1; }
install -D -m 0755 "$binary" "$dest/usr/local/bin/myelin"
install -D -m 0755 "$here/packaging/docker-entrypoint.sh" "$dest/usr/local/bin/myelin-docker-entrypoint"
install -D -m 0644 "$here/packaging/myelin.service" "$dest/usr/lib/systemd/system/myelin.service"
install -d "$dest/usr/share/doc/myelin"
install -m 0644 "$here/README.md" "$here/ARCHITECTURE.md" "$dest/usr/share/doc/myelin/"
cp -R "$here/docs" "$dest/usr/share/doc/myelin/docs"
echo "package.sh: laid out in $dest"
