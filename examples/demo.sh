#!/usr/bin/env bash
# The podkeeper demo: builds podkeeper, makes sure a containerd is running
# (starting a private one if none is), puts a locally built busybox image
# archive into the agent's images directory (no registry needed), and runs
# the agent on examples/manifests in the background. `examples/demo.sh stop` removes the demo's pods and stops what
# the demo started. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

work=/var/lib/podkeeper-demo
private_sock=/run/podkeeper-demo/containerd.sock
system_sock=/run/containerd/containerd.sock
namespace=podkeeper
api=127.0.0.1:10250
http=127.0.0.1:10255
bin=$repo/target/release/podkeeper

if [[ $(id -u) -ne 0 ]]; then
    echo "examples/demo.sh must run as root (it starts containerd and containers)" >&2
    exit 1
fi

ctr_at() { ctr --address "$1" --connect-timeout 2s "${@:2}"; }

# The agent in the background on manifest directory $1, with the demo's
# containerd, state and images, and its built-in network (an empty CNI
# config directory), whatever else configured CNI on this machine.
start_agent() {
    "$bin" run --config /dev/null \
        --manifest-dir "$1" \
        --containerd-address "$(cat "$work/containerd.address")" \
        --containerd-namespace "$namespace" \
        --api-listen "$api" \
        --http-listen "$http" \
        --state-dir "$work/state" \
        --pod-log-dir "$work/pods" \
        --images-dir "$work/images" \
        --cni-conf-dir "$work/cni" \
        >>"$work/agent.log" 2>&1 &
    echo $! >"$work/agent.pid"
}

stop_agent() {
    local pid
    pid=$(cat "$work/agent.pid" 2>/dev/null || true)
    rm -f "$work/agent.pid"
    [[ -n $pid ]] || return 0
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
}

# Stopping the agent leaves its pods running (that is what lets an upgrade
# keep them). To remove them with everything they hold (network namespace,
# CNI address and port mappings, mounts), the agent runs once more on an
# empty manifest directory: it removes pods whose manifests are gone.
stop_demo() {
    stop_agent
    local sock
    sock=$(cat "$work/containerd.address" 2>/dev/null || true)
    if [[ -n $sock ]] && ctr_at "$sock" version >/dev/null 2>&1 && [[ -x $bin ]]; then
        mkdir -p "$work/no-manifests"
        start_agent "$work/no-manifests"
        # Done when no container is left and the pods' state (files,
        # checkpoints: removed last) is gone.
        for _ in $(seq 600); do
            [[ -z $(ctr_at "$sock" -n "$namespace" containers ls -q) ]] &&
                [[ -z $(ls -A "$work/state/pods" 2>/dev/null) ]] && break
            sleep 0.1
        done
        stop_agent
    fi
    if [[ -f $work/containerd.pid ]]; then
        kill "$(cat "$work/containerd.pid")" 2>/dev/null || true
        rm -f "$work/containerd.pid"
    fi
    rm -f "$work/containerd.address"
    echo "demo stopped"
}

if [[ ${1:-} == stop ]]; then
    stop_demo
    exit 0
fi

examples/install-deps.sh
echo "building podkeeper (release)…"
cargo build --release --locked
mkdir -p "$work" "$work/cni"
[[ -f $work/agent.pid ]] && stop_demo >/dev/null

if ctr_at "$system_sock" version >/dev/null 2>&1; then
    sock=$system_sock
    echo "using the running containerd at $sock (namespace $namespace)"
else
    sock=$private_sock
    mkdir -p "$(dirname "$sock")" "$work/containerd"
    cat >"$work/containerd/config.toml" <<TOML
version = 2
root = "$work/containerd/root"
state = "/run/podkeeper-demo/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$work/containerd/opt"
TOML
    containerd --config "$work/containerd/config.toml" >"$work/containerd.log" 2>&1 &
    echo $! >"$work/containerd.pid"
    for _ in $(seq 100); do ctr_at "$sock" version >/dev/null 2>&1 && break; sleep 0.1; done
    ctr_at "$sock" version >/dev/null
    echo "started a private containerd at $sock (log: $work/containerd.log)"
fi
echo "$sock" >"$work/containerd.address"

# The air-gap way: drop an image archive into the images directory and the
# agent imports it (here before it starts; it also picks up later arrivals).
mkdir -p "$work/images"
examples/build-busybox-image.sh "$work/images/busybox.tar" podkeeper.local/busybox:latest >/dev/null
echo "podkeeper.local/busybox:latest is in $work/images/busybox.tar"

: >"$work/agent.log"
start_agent "$repo/examples/manifests"
for _ in $(seq 100); do curl -fs "http://$http/healthz" >/dev/null && break; sleep 0.1; done
curl -fs "http://$http/healthz" >/dev/null || { cat "$work/agent.log"; exit 1; }
for _ in $(seq 100); do
    "$bin" get pods --state-dir "$work/state" 2>/dev/null | grep -q Running && break
    sleep 0.1
done

cat <<TEXT

podkeeper is running the pods in examples/manifests.

  curl 127.0.0.1:8080          # the page the sidecar rewrites every second
  $bin get pods --state-dir $work/state
  $bin describe pod web --state-dir $work/state
  $bin logs web -c writer --state-dir $work/state
  $bin events --state-dir $work/state
  $bin image ls --state-dir $work/state

The API over HTTPS, with the kubeconfig and admin token the agent made at
its first start (plain http://$http serves only health checks):

  kubectl --kubeconfig $work/state/kubeconfig get pods -o wide
  kubectl --kubeconfig $work/state/kubeconfig describe pod web
  curl -s --cacert $work/state/pki/ca.crt -H "Authorization: Bearer \$(cat $work/state/pki/admin.token)" https://$api/api/v1/pods

  agent log: $work/agent.log

Add, edit or remove files in examples/manifests and watch the pods follow.
Stop everything with: examples/demo.sh stop
TEXT
"$bin" get pods --state-dir "$work/state"
