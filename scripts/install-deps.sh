#!/bin/sh
# Installs the Debian packages the build and the test suite need
# (util-linux-extra: fincore, for the page-cache test of --warm-weights).
set -e
PKGS="build-essential clang pkg-config libcjson-dev libpcre2-dev libedit-dev liburing-dev libmicrohttpd-dev libssl-dev python3 util-linux-extra"
missing=""
for p in $PKGS; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO=sudo
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends $missing
