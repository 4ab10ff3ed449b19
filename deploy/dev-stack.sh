#!/usr/bin/env bash
# Runs the whole Anxin stack on this machine with embedded defaults:
# anxin-server, one anxin-gateway, and simulated devices pressing buttons.
# Prints the console URL. Ctrl-C stops everything.
#
# Ports can be set with ANXIN_HTTP_PORT, ANXIN_GRPC_PORT, ANXIN_MQTT_PORT,
# ANXIN_GATEWAY_HTTP_PORT. Where a default port (8080, 50051, 1883, 9181) is
# already taken — Mosquitto on 1883, say — the next free one is used and the
# banner says so. State lives in ANXIN_STACK_DIR (default .stack/; delete it
# to start over).
set -euo pipefail
cd "$(dirname "$0")/.."

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# pick NAME DEFAULT [explicit]: an explicit port must be free; a default
# that is taken moves up to the next free port.
CHOSEN=()
pick() {
  local name=$1 default=$2 explicit=${3:-} port
  if [[ -n $explicit ]]; then
    port_free "$explicit" || { echo "port $explicit ($name) is in use; choose another" >&2; exit 1; }
    echo "$explicit"; return
  fi
  port=$default
  while ! port_free "$port" || [[ " ${CHOSEN[*]:-} " == *" $port "* ]]; do port=$((port + 1)); done
  [[ $port == "$default" ]] || echo "note: port $default ($name) is taken; using $port" >&2
  echo "$port"
}
HTTP_PORT=$(pick "server http" 8080 "${ANXIN_HTTP_PORT:-}"); CHOSEN+=("$HTTP_PORT")
GRPC_PORT=$(pick "server grpc" 50051 "${ANXIN_GRPC_PORT:-}"); CHOSEN+=("$GRPC_PORT")
MQTT_PORT=$(pick "gateway mqtt" 1883 "${ANXIN_MQTT_PORT:-}"); CHOSEN+=("$MQTT_PORT")
GW_HTTP_PORT=$(pick "gateway http" 9181 "${ANXIN_GATEWAY_HTTP_PORT:-}"); CHOSEN+=("$GW_HTTP_PORT")
STATE=${ANXIN_STACK_DIR:-.stack}
# The residents' devices of deploy/config/seed.example.toml.
DEVICES=(btn-0001 btn-0002 btn-0003 wear-0001 wear-0002)
# Registered for `anxin-sim load --prefix load-` (README).
LOAD_DEVICES=(load-00000 load-00001 load-00002 load-00003 load-00004 load-00005 load-00006 load-00007 load-00008 load-00009)
# Registered for the README's scenario (firmware-sim/scenarios/household-12.toml).
SCENARIO_DEVICES=(btn-0012:call_button wear-0012:wearable room-0012:room_sensor)

echo "building (first run takes a few minutes)..."
cargo build --quiet --bins -p anxin-server -p anxin-gateway -p anxin-sim
BIN=target/debug

mkdir -p "$STATE"
# Secrets for this stack, made once: the example seed's CHANGE-ME tokens
# become "<secret>-<name>".
[[ -s "$STATE/secret" ]] || od -An -N16 -tx1 /dev/urandom | tr -d ' \n' > "$STATE/secret"
SECRET=$(cat "$STATE/secret")
token() { echo "$SECRET-$1"; }
cat > "$STATE/server.toml" <<TOML
[grpc]
listen = "127.0.0.1:$GRPC_PORT"
[http]
listen = "127.0.0.1:$HTTP_PORT"
[store]
path = "$STATE/server-data"
# Smaller than production's disk guard, so the stack also runs on a laptop
# with little room (docs/operations.md).
min_free_bytes = 33554432
reserve_bytes = 8388608
[auth]
admin_token = "$(token admin)"
TOML
sed "s/CHANGE-ME/$SECRET/" deploy/config/seed.example.toml > "$STATE/seed.toml"
"$BIN/anxin-server" --config "$STATE/server.toml" --seed "$STATE/seed.toml" > "$STATE/seed.log" 2>&1 \
  || { cat "$STATE/seed.log"; exit 1; }
{
  cat <<TOML
gateway_id = "gw-community-01"
[mqtt]
listen = "127.0.0.1:$MQTT_PORT"
[http]
listen = "127.0.0.1:$GW_HTTP_PORT"
[journal]
path = "$STATE/gateway-journal"
min_free_bytes = 33554432
reserve_bytes = 8388608
[uplink]
servers = ["http://127.0.0.1:$GRPC_PORT"]
token = "$(token gateway-gw-community-01)"
TOML
  # Every device logs in with its own password (the gateway requires it):
  # "<secret>-device-<id>", which anxin-sim derives from ANXIN_SIM_PASSWORD.
  for d in "${DEVICES[@]}" "${LOAD_DEVICES[@]}"; do
    printf '[[devices]]\nid = "%s"\npassword = "%s"\n' "$d" "$(token "device-$d")"
  done
  for entry in "${SCENARIO_DEVICES[@]}"; do
    d=${entry%%:*}
    printf '[[devices]]\nid = "%s"\nkind = "%s"\npassword = "%s"\n' "$d" "${entry#*:}" "$(token "device-$d")"
  done
} > "$STATE/gateway.toml"

export ANXIN_SIM_PASSWORD="$SECRET-device-{id}"

pids=()
cleanup() {
  trap - INT TERM EXIT
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  echo "stopped; logs are in $STATE/"
}
trap cleanup INT TERM EXIT

# healthz_answers PORT: an HTTP status line comes back from /healthz (bash
# alone, no curl needed).
HEALTH_LINE=""
healthz_answers() {
  local line=""
  { exec 3<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null || return 1
  printf 'GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
  read -r -t 2 line <&3 || true
  exec 3<&-
  HEALTH_LINE=$line
  [[ $line == HTTP/* ]]
}
# warn_if_degraded PORT NAME: a 503 from /healthz names what is wrong.
warn_if_degraded() {
  if healthz_answers "$1" && [[ $HEALTH_LINE == *" 503"* ]]; then
    echo "warning: the $2 reports trouble (disk space?): see http://127.0.0.1:$1/healthz and docs/operations.md" >&2
  fi
}
# wait_ready PID PORT NAME: the process must stay up and its /healthz answer
# (200 ok, or 503 with the reasons it is degraded).
wait_ready() {
  for _ in $(seq 1 300); do
    kill -0 "$1" 2>/dev/null || { echo "$3 exited; the end of $STATE/$3.log:" >&2; tail -5 "$STATE/$3.log" >&2; exit 1; }
    healthz_answers "$2" && return 0
    sleep 0.1
  done
  echo "$3 did not answer on port $2; see $STATE/$3.log" >&2
  exit 1
}

"$BIN/anxin-server" --config "$STATE/server.toml" > "$STATE/server.log" 2>&1 &
pids+=($!)
wait_ready "${pids[-1]}" "$HTTP_PORT" server
"$BIN/anxin-gateway" --config "$STATE/gateway.toml" > "$STATE/gateway.log" 2>&1 &
pids+=($!)
wait_ready "${pids[-1]}" "$GW_HTTP_PORT" gateway
warn_if_degraded "$HTTP_PORT" server
warn_if_degraded "$GW_HTTP_PORT" gateway

# Simulated residents: every so often one of them presses SOS (or falls).
(
  while true; do
    sleep $((20 + RANDOM % 20))
    device=${DEVICES[$((RANDOM % ${#DEVICES[@]}))]}
    kind=sos; [[ $device == wear-* ]] && kind=fall
    "$BIN/anxin-sim" --gateway "127.0.0.1:$MQTT_PORT" press --device "$device" --kind "$kind" --until acknowledged \
      >> "$STATE/sim.log" 2>&1 &
  done
) &
pids+=($!)
"$BIN/anxin-sim" --gateway "127.0.0.1:$MQTT_PORT" press --device btn-0001 --until acknowledged >> "$STATE/sim.log" 2>&1 &
pids+=($!)

cat <<INFO

  Anxin is running.
    Dispatcher console:  http://127.0.0.1:$HTTP_PORT/#token=$(token dispatcher-zhang)
    Alerts API:          curl -H 'Authorization: Bearer $(token dispatcher-zhang)' http://127.0.0.1:$HTTP_PORT/api/v1/alerts
    Other accounts:      carer-li $(token carer-li)
                         supervisor-wu $(token supervisor-wu)
                         admin $(token admin)
    Gateway MQTT:        127.0.0.1:$MQTT_PORT   (devices: ${DEVICES[*]};
                         username = device id, password = $SECRET-device-<id>)
    Gateway health:      http://127.0.0.1:$GW_HTTP_PORT/healthz

  Simulated residents press every 20-40 s; device output goes to $STATE/sim.log.
  Press a button yourself:
    ANXIN_SIM_PASSWORD='$SECRET-device-{id}' $BIN/anxin-sim --gateway 127.0.0.1:$MQTT_PORT press --device btn-0002
  Ctrl-C stops the stack.

INFO
wait
