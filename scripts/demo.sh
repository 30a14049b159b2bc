#!/usr/bin/env bash
# secnet demo: three segments (web, api, db) on one secnet network with the
# policy web->api:tcp/8080, api->db:tcp/5432, and a matrix of real TCP probes
# (rows: from, columns: to). Removes everything it made when it exits.
# Needs the engine, the test image and the plugin: run it as `make demo`.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-secnet-busybox:latest}
NET=secnet-demo
SUBNET=10.221.0.0/24
ALLOW='web->api:tcp/8080,api->db:tcp/5432'
SEGMENTS=(web api db)
declare -A PORT=([web]=80 [api]=8080 [db]=5432)
declare -A ADDR=()

cname() { echo "$NET-$1"; }

cleanup() {
  local names=()
  for s in "${SEGMENTS[@]}"; do names+=("$(cname "$s")"); done
  docker rm -f "${names[@]}" >/dev/null 2>&1 || true
  docker network rm "$NET" >/dev/null 2>&1 || true
}

# up to ~5 s until the container's own listener answers on loopback
wait_listening() {
  local c=$1 port=$2
  for _ in $(seq 1 25); do
    if docker exec "$c" sh -c "echo | nc -w1 127.0.0.1 $port" 2>/dev/null | grep -q .; then return 0; fi
    sleep 0.2
  done
  echo "demo: $c does not listen on tcp/$port" >&2
  return 1
}

# yes/no: does a TCP connection from $1 to segment $2's port get its answer?
probe() {
  local from to=$2
  from=$(cname "$1")
  if docker exec "$from" sh -c "echo | nc -w1 ${ADDR[$to]} ${PORT[$to]}" 2>/dev/null | grep -qx "$to"; then
    echo yes
  else
    echo no
  fi
}

cleanup   # leftovers of an interrupted run
trap cleanup EXIT INT TERM

docker network create -d secnet --subnet "$SUBNET" -o "secnet.allow=$ALLOW" "$NET" >/dev/null
for s in "${SEGMENTS[@]}"; do
  docker run -d --name "$(cname "$s")" --network "$NET" --label "secnet.segment=$s" \
    "$IMAGE" nc -ll -p "${PORT[$s]}" -e echo "$s" >/dev/null
done
for s in "${SEGMENTS[@]}"; do
  c=$(cname "$s")
  ADDR[$s]=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$NET\").IPAddress}}" "$c")
  [ "$(docker inspect -f '{{.State.Running}}' "$c")" = true ] || { echo "demo: $c is not running" >&2; exit 1; }
  wait_listening "$c" "${PORT[$s]}"
done
# segments are enforced within a second of a container starting: wait for the
# first allowed flow (bounded), so the matrix shows the policy, not start-up
for _ in $(seq 1 10); do [ "$(probe web api)" = yes ] && break; sleep 0.2; done

echo "secnet demo: network $NET ($SUBNET), -o secnet.allow='$ALLOW'"
echo "TCP probes (nc -w1) from each row's container to each column's listener:"
echo
printf '%-10s' 'from\to'
for to in "${SEGMENTS[@]}"; do printf '%-16s' "$to:${PORT[$to]}"; done
echo
for from in "${SEGMENTS[@]}"; do
  printf '%-10s' "$from"
  for to in "${SEGMENTS[@]}"; do
    if [ "$from" = "$to" ]; then printf '%-16s' '-'; else printf '%-16s' "$(probe "$from" "$to")"; fi
  done
  echo
done
echo
echo "Expected with the policy enforced: only web->api and api->db say yes."
