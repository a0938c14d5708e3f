#!/usr/bin/env bash
# Prints the path of a promtool binary (to check and unit-test the chart's
# alerting rules offline), installing it into the cache first if needed.
#
# promtool ships in Debian's `prometheus` package. Installing that package
# would also set up and start a Prometheus server, so the package is only
# downloaded (apt checks it against the signed archive index) and promtool
# alone is unpacked from it. A promtool already on PATH is used as it is.
#
# Environment:
#   PHXKV_CACHE  the cache directory (default ${XDG_CACHE_HOME:-~/.cache}/phxkv)
set -euo pipefail

cache=${PHXKV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/phxkv}

if command -v promtool >/dev/null; then
    command -v promtool
    exit 0
fi
for tool in apt-get apt-cache dpkg-deb; do
    command -v "$tool" >/dev/null || { echo "promtool is not installed and $tool is missing to fetch it" >&2; exit 1; }
done

version() { apt-cache policy prometheus 2>/dev/null | awk '/Candidate:/ {print $2}'; }
candidate=$(version)
if [[ -z $candidate || $candidate == "(none)" ]]; then
    # A fresh machine has no package lists yet.
    echo "promtool: apt-get update, to find the prometheus package" >&2
    apt-get update -qq >&2 || { echo "apt-get update failed (promtool comes from Debian's prometheus package)" >&2; exit 1; }
    candidate=$(version)
    [[ -n $candidate && $candidate != "(none)" ]] || { echo "no prometheus package in the apt sources" >&2; exit 1; }
fi

dir=$cache/promtool-$candidate
if [[ ! -x $dir/promtool ]]; then
    printf 'installing promtool from Debian prometheus %s into %s\n' "$candidate" "$dir" >&2
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    # Downloaded as the calling user: apt's sandbox user cannot write into a
    # private temporary directory (apt would warn and do the same).
    (cd "$work" && apt-get download -qq -o APT::Sandbox::User="$(id -un)" "prometheus=$candidate" >&2)
    dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
    mkdir -p "$dir"
    # Moved in under a temporary name first, so an interrupted install never
    # leaves a partial binary at the final path.
    mv "$work/root/usr/bin/promtool" "$dir/promtool.tmp"
    mv "$dir/promtool.tmp" "$dir/promtool"
fi
echo "$dir/promtool"
