#!/usr/bin/env bash
# Median time of `docker run -d` until the container is running, on a secnet
# network and on a network of Docker's own bridge driver, measured in one go
# (runs interleaved so that both see the same machine load).
# Usage: scripts/time-run.sh [RUNS]   (default 10; needs the engine, image and plugin)
set -euo pipefail
RUNS=${1:-10}
IMAGE=${IMAGE:-secnet-busybox:latest}
TAG=timerun-$$
declare -A SUBNET=([secnet]=10.222.0.0/24 [bridge]=10.222.1.0/24)
declare -A TIMES=([secnet]="" [bridge]="")
names=()

cleanup() {
  [ ${#names[@]} -eq 0 ] || docker rm -f "${names[@]}" >/dev/null 2>&1 || true
  for d in secnet bridge; do docker network rm "$TAG-$d" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT INT TERM

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

for d in secnet bridge; do
  docker network create -d "$d" --subnet "${SUBNET[$d]}" "$TAG-$d" >/dev/null
done
docker run --rm --network none "$IMAGE" true >/dev/null   # warm the image cache

for i in $(seq 1 "$RUNS"); do
  for d in secnet bridge; do
    name=$TAG-$d-$i
    names+=("$name")
    t0=$(now_ms)
    docker run -d --name "$name" --network "$TAG-$d" "$IMAGE" sleep 600 >/dev/null
    until [ "$(docker inspect -f '{{.State.Running}}' "$name")" = true ]; do sleep 0.01; done
    TIMES[$d]+="$(( $(now_ms) - t0 )) "
  done
done

median() { tr ' ' '\n' | grep . | sort -n | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
for d in secnet bridge; do
  printf '%-7s median %6s ms over %d runs  (all: %s)\n' "$d" "$(echo "${TIMES[$d]}" | median)" "$RUNS" "${TIMES[$d]}"
done
