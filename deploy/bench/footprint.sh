#!/usr/bin/env bash
# Resident memory of the daemon with many streams at the default configuration.
#
# Starts a private Mosquitto on a loopback port, the daemon with the compiled-in defaults
# (only the broker port overridden), and replays generated traffic for STREAMS sensor keys
# (three channels each, like fixtures/pump-bearing.jsonl) at SPEED × real time; then prints VmRSS
# and VmHWM of the daemon from /proc. Bounded: one replay of STREAMS × SAMPLES messages.
#
# Usage: deploy/bench/footprint.sh BINARY [STREAMS] [SAMPLES]
#   deploy/bench/footprint.sh target/release/sparsewatch 100 1000
#   BINARY may be a command with arguments, e.g. "qemu-aarch64 -L / path/to/sparsewatch".
set -euo pipefail

bin=${1:?usage: footprint.sh BINARY [STREAMS] [SAMPLES]}
streams=${2:-100}
samples=${3:-1000}
# Replay speed (multiple of real time; streams send 2 Hz): high enough to be quick, low enough
# that the workers keep up (drops in the final summary mean it was too high).
speed=${SPEED:-10}
# Channels per stream: 3 (current, temp, vib_rms), 2 (current, temp) or 1 (current).
channels=${CHANNELS:-3}
dir=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$dir/mosquitto.conf" <<CONF
listener $port 127.0.0.1
allow_anonymous true
max_queued_messages 0
max_inflight_messages 0
persistence false
CONF
/usr/sbin/mosquitto -c "$dir/mosquitto.conf" 2>"$dir/mosquitto.log" &
pids+=($!)

# STREAMS keys sensors/site<i%10>/pump<i>, 2 Hz each, a slow daily-like wave plus noise.
python3 - "$dir/load.jsonl" "$streams" "$samples" "$channels" <<'PY'
import json, math, random, sys
path, streams, samples, channels = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(7)
t0 = 1767600000000
with open(path, "w") as f:
    for n in range(samples):
        for i in range(streams):
            ts = t0 + n * 500 + i
            phase = 2 * math.pi * (n / 240.0) + i
            values = {
                "current": round(12 + math.sin(phase) + rng.gauss(0, 0.1), 3),
                "temp": round(45 + 2 * math.sin(phase / 7) + rng.gauss(0, 0.05), 3),
                "vib_rms": round(2 + 0.3 * math.sin(3 * phase) + rng.gauss(0, 0.05), 3),
            }
            values = dict(list(values.items())[:channels])
            payload = json.dumps({"ts": ts, "values": values})
            f.write(json.dumps({"time_ms": ts, "topic": f"sensors/site{i % 10}/pump{i}", "qos": 1, "payload": payload}) + "\n")
PY

for _ in $(seq 50); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done

# The daemon: compiled-in defaults, broker port from the environment.
# shellcheck disable=SC2086
SPARSEWATCH__MQTT__PORT=$port $bin run >"$dir/daemon.log" 2>&1 &
daemon=$!
pids+=($daemon)
# With a qemu command line the pid is qemu's, which is the emulated process itself.
sleep 2
status() { grep -E '^(VmRSS|VmHWM):' "/proc/$daemon/status" | tr -s ' \t' ' ' | tr '\n' ' '; }
echo "idle: $(status)"

start=$(date +%s.%N)
# shellcheck disable=SC2086
$bin replay --broker "127.0.0.1:$port" --speed "$speed" "$dir/load.jsonl" >"$dir/replay.log" 2>&1
end=$(date +%s.%N)
# Give the daemon a moment to drain what the broker still queues for it; its last summary
# (printed at shutdown, below) says how many messages it took.
sleep 3
echo "after $((streams * samples)) messages from $streams streams of $channels channels ($(python3 -c "print(round($end-$start,1))") s replay): $(status)"
kill -TERM "$daemon"
wait "$daemon" || true
tail -n 3 "$dir/daemon.log"
