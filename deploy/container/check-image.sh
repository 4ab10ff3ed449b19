#!/usr/bin/env bash
# The image's own binaries pass the README's SOS walk-through. Containers
# cannot run in every sandbox (crun needs to set rlimits), so the image is
# mounted (`podman image mount`), its root copied, and its binaries run
# with chroot as the image's user, on loopback ports that are free:
# seed the directory, start the server and a gateway, press SOS on a
# simulated button, see the alert in the dispatcher's queue with the
# resident's name, acknowledge it, and the button hears "help is coming".
#
#   deploy/container/check-image.sh [TAG]      # default localhost/anxin:dev
set -euo pipefail
cd "$(dirname "$0")/../.."
TAG=${1:-localhost/anxin:dev}
work=$(mktemp -d /var/tmp/anxin-image-check.XXXXXX)
root=$work/root
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  umount "$root/proc" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "image check FAILED: $*" >&2
  for log in "$root"/stack/*.log; do [[ -e $log ]] && { echo "--- $log" >&2; tail -15 "$log" >&2; }; done
  exit 1
}

mnt=$(podman image mount "$TAG")
mkdir -p "$root"
cp -a "$mnt"/. "$root"/
podman image unmount "$TAG" > /dev/null
mount -t proc proc "$root/proc"
for bin in anxin-server anxin-gateway anxin-sim; do
  [[ -x $root/usr/local/bin/$bin ]] || fail "/usr/local/bin/$bin is not in the image"
done
user=$(chroot "$root" id -u anxin) || fail "the image has no user anxin"
[[ $user != 0 ]] || fail "the image's user is root"

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
CHOSEN=" "
pick() {
  local port=$1
  while ! port_free "$port" || [[ $CHOSEN == *" $port "* ]]; do port=$((port + 1)); done
  CHOSEN+="$port "
  echo "$port"
}
HTTP=$(pick 18080); GRPC=$(pick 15051); MQTT=$(pick 11883); GW_HTTP=$(pick 19181)
SECRET=image-check-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
mkdir -p "$root/stack"
cat > "$root/stack/server.toml" <<TOML
[grpc]
listen = "127.0.0.1:$GRPC"
[http]
listen = "127.0.0.1:$HTTP"
[store]
path = "/stack/server-data"
min_free_bytes = 33554432
reserve_bytes = 8388608
[auth]
admin_token = "$SECRET-admin"
TOML
sed "s/CHANGE-ME/$SECRET/" deploy/config/seed.example.toml > "$root/stack/seed.toml"
cat > "$root/stack/gateway.toml" <<TOML
gateway_id = "gw-community-01"
[mqtt]
listen = "127.0.0.1:$MQTT"
[http]
listen = "127.0.0.1:$GW_HTTP"
[journal]
path = "/stack/gateway-journal"
min_free_bytes = 33554432
reserve_bytes = 8388608
[uplink]
servers = ["http://127.0.0.1:$GRPC"]
token = "$SECRET-gateway-gw-community-01"
[[devices]]
id = "btn-0001"
password = "$SECRET-device-btn-0001"
TOML
chown -R "$user:$user" "$root/stack"
# In the background (a subshell) it execs, so $! is the program itself and
# the cleanup's kill reaches it.
in_image() {
  if [[ $BASHPID != "$$" ]]; then
    exec chroot --userspec="$user:$user" "$root" env HOME=/stack "$@"
  fi
  chroot --userspec="$user:$user" "$root" env HOME=/stack "$@"
}

in_image /usr/local/bin/anxin-server --config /stack/server.toml --seed /stack/seed.toml \
  > "$root/stack/seed.log" 2>&1 || fail "seeding the directory"
healthy() { curl -fsS -o /dev/null "http://127.0.0.1:$1/healthz"; }
wait_healthy() {
  for _ in $(seq 1 300); do
    kill -0 "${pids[-1]}" 2>/dev/null || fail "$2 exited"
    healthy "$1" && return 0
    sleep 0.1
  done
  fail "$2 did not become healthy"
}
in_image /usr/local/bin/anxin-server --config /stack/server.toml > "$root/stack/server.log" 2>&1 &
pids+=($!)
wait_healthy "$HTTP" server
in_image /usr/local/bin/anxin-gateway --config /stack/gateway.toml > "$root/stack/gateway.log" 2>&1 &
pids+=($!)
wait_healthy "$GW_HTTP" gateway

in_image env ANXIN_SIM_PASSWORD="$SECRET-device-{id}" /usr/local/bin/anxin-sim \
  --gateway "127.0.0.1:$MQTT" press --device btn-0001 --until acknowledged > "$root/stack/sim.log" 2>&1 &
press=$!
pids+=("$press")
dispatcher="Authorization: Bearer $SECRET-dispatcher-zhang"
alert=""
for _ in $(seq 1 300); do
  alert=$(curl -fsS -H "$dispatcher" "http://127.0.0.1:$HTTP/api/v1/alerts" \
    | python3 -c 'import json,sys; a=json.load(sys.stdin)["alerts"]; print(json.dumps(a[0]) if a else "")')
  [[ -n $alert ]] && break
  sleep 0.1
done
[[ -n $alert ]] || fail "no alert reached the dispatcher's queue"
id=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["id"])' "$alert")
name=$(python3 -c 'import json,sys; a=json.loads(sys.argv[1]); print(a.get("residentName") or a.get("resident", {}).get("name", ""))' "$alert")
[[ -n $name ]] || fail "the queue's alert names no resident: $alert"
curl -fsS -o /dev/null -X POST -H "$dispatcher" "http://127.0.0.1:$HTTP/api/v1/alerts/$id/ack" \
  || fail "acknowledging alert $id"
for _ in $(seq 1 300); do
  kill -0 "$press" 2>/dev/null || break
  sleep 0.1
done
wait "$press" || fail "the button did not hear back"
grep -q "help is coming" "$root/stack/sim.log" || fail "the button's answer was not \"help is coming\""
echo "image check passed: $TAG — SOS from btn-0001 reached the queue as alert $id ($name), acknowledged, the button heard \"help is coming\""
