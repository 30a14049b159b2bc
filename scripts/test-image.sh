#!/usr/bin/env bash
# Build the offline test image secnet-busybox:latest from Debian's busybox-static.
set -euo pipefail
IMAGE=${IMAGE:-secnet-busybox:latest}
if docker image inspect "$IMAGE" >/dev/null 2>&1; then exit 0; fi
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/bin" "$dir/tmp" "$dir/etc" "$dir/proc" "$dir/sys" "$dir/dev"
cp /bin/busybox "$dir/bin/busybox"
for applet in $(/bin/busybox --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$dir/bin/$applet"
done
echo "root:x:0:0:root:/:/bin/sh" >"$dir/etc/passwd"
tar -C "$dir" -c . | docker import -c 'CMD ["sh"]' -c 'ENV PATH=/bin' - "$IMAGE" >/dev/null
echo "built $IMAGE"
