#!/usr/bin/env bash
# Push secnet's managed plugin to a registry: plugin-push.sh REGISTRY (host:port).
# Uses build/plugin (made by plugin-build.sh; built here when missing), creates
# the plugin as REGISTRY/secnet:TAG, pushes it and removes that local copy.
# The pushed rootfs carries /etc/secnet-plugin-ref (its reference): dockerd
# 20.10 refuses `docker plugin create` of a rootfs whose blob it already holds
# (e.g. from the plugin `make plugin` installed), so the two must differ.
# Install elsewhere with:
#   docker plugin install --grant-all-permissions --alias secnet REGISTRY/secnet:TAG
set -euo pipefail
cd "$(dirname "$0")/.."
REGISTRY=${1:-${REGISTRY:-}}
TAG=${TAG:-latest}
PLUGIN_DIR=build/plugin
if [ -z "$REGISTRY" ]; then
  echo "usage: $0 REGISTRY   (e.g. 127.0.0.1:5000; or make plugin-push REGISTRY=host:port)" >&2
  exit 2
fi
REF=$REGISTRY/secnet:$TAG
if [ ! -f "$PLUGIN_DIR/config.json" ] || [ ! -d "$PLUGIN_DIR/rootfs" ]; then
  bash scripts/plugin-build.sh rootfs
fi
if docker plugin inspect "$REF" >/dev/null 2>&1; then
  docker plugin rm -f "$REF" >/dev/null
fi
STAGE=build/push
rm -rf "$STAGE"
mkdir -p "$STAGE"
cp -al "$PLUGIN_DIR/rootfs" "$STAGE/rootfs"   # hard links: no copy of the data
cp "$PLUGIN_DIR/config.json" "$STAGE/config.json"
echo "$REF" >"$STAGE/rootfs/etc/secnet-plugin-ref"
trap 'docker plugin rm -f "$REF" >/dev/null 2>&1 || true; rm -rf "$STAGE"' EXIT
docker plugin create "$REF" "$STAGE" >/dev/null
docker plugin push "$REF"
echo "plugin-push: pushed $REF" >&2
