#!/usr/bin/env bash
# Builds the .deb and .rpm and exercises them on this machine (CI runs it
# after tests/test.sh; it needs root and a Debian-like system):
#   - lintian on the .deb (no errors), the .rpm's files, dependencies and
#     scripts with Debian's rpm tool;
#   - dpkg -i of the .deb: version, unit (systemd-analyze verify), conffile,
#     the podkeeper group, directories and enablement;
#   - the installed /usr/bin/podkeeper runs a pod on a PRIVATE containerd
#     (own root, state and socket in a temp dir; a system containerd is never
#     touched) and tells a notify socket READY=1;
#   - the files of its first start in /var/lib/podkeeper (PKI, admin token,
#     kubeconfig) with their modes, kubectl over HTTPS with that kubeconfig,
#     401 without a token, and what a throwaway non-root user can read, in
#     the podkeeper group and out of it;
#   - dpkg -i of a rebuilt package with a bumped version while the pod runs,
#     then the agent restarted from the new files: the pod's task PIDs, the
#     CA, the admin token and the kubeconfig must not change;
#   - dpkg -r and dpkg -P: service disabled, state gone, manifests kept.
# It refuses to run where podkeeper is already installed or set up, and
# purges the package and removes everything it made on exit (the podkeeper
# group too, if it made it).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
    echo "$0 must run as root: it installs the package and starts containerd" >&2
    exit 1
fi
if dpkg-query -W -f='${Status}' podkeeper 2>/dev/null | grep -q installed ||
    [[ -e /etc/podkeeper || -e /var/lib/podkeeper ]]; then
    echo "$0: podkeeper is installed or set up here (/etc/podkeeper, /var/lib/podkeeper); refusing to touch it" >&2
    exit 1
fi
# Reads files as a user who is not root (and, later, in the podkeeper group).
test_user=pkpkgtest
if id "$test_user" >/dev/null 2>&1; then
    echo "$0: the user $test_user exists; refusing to touch it" >&2
    exit 1
fi
made_group=true
getent group podkeeper >/dev/null && made_group=false

started=$SECONDS
step() { echo "=== [$((SECONDS - started))s] $*"; }
fail() {
    echo "FAIL: $*" >&2
    exit 1
}

tools=(rpm lintian curl containerd runc busybox-static)
missing=()
for p in "${tools[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Any kubectl will do (this machine's may come from elsewhere than Debian).
command -v kubectl >/dev/null || missing+=(kubernetes-client)
if ((${#missing[@]})); then
    step "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

step "building the packages"
packages=target/packages
rm -rf "$packages"
packaging/build.sh --out "$packages"
base_version=$(dpkg-deb -f "$packages"/podkeeper_*.deb Version)
base_version=${base_version%-*}
upgrade_version="$base_version+upgradetest"
# The same binary, so that only the package changes (and no second build).
packaging/build.sh --no-build --only deb --version "$upgrade_version" --out "$packages/upgrade"
deb=$(echo "$packages"/podkeeper_*.deb)
rpm_file=$(echo "$packages"/podkeeper-*.rpm)
upgrade_deb=$(echo "$packages"/upgrade/podkeeper_*.deb)

step "lintian $deb"
# --fail-on error: warnings and infos are printed but do not fail CI.
lintian --fail-on error --tag-display-limit 0 "$deb" || fail "lintian reports errors"

step "checking the .deb's control fields"
depends=$(dpkg-deb -f "$deb" Depends)
echo "Depends: $depends"
[[ $depends == *"containerd (>= 1.6) | containerd.io"* && $depends == *runc* && $depends == *passwd* ]] || fail "Depends: $depends"
[[ $(dpkg-deb -f "$deb" Recommends) == containernetworking-plugins ]] || fail "Recommends"

expected_files=(
    /usr/bin/podkeeper
    /etc/podkeeper/config.yaml
    /usr/lib/tmpfiles.d/podkeeper.conf
    /usr/share/man/man1/podkeeper.1
    /usr/share/man/man1/podkeeper-run.1
    /usr/share/bash-completion/completions/podkeeper
    /usr/share/fish/vendor_completions.d/podkeeper.fish
)

step "checking the .rpm: files, dependencies, scripts"
rpm_files=$(rpm -qlp "$rpm_file")
echo "$rpm_files"
for f in "${expected_files[@]}" /usr/lib/systemd/system/podkeeper.service /usr/share/zsh/site-functions/_podkeeper; do
    # The rpm tool may list man pages compressed or not.
    grep -qx -e "$f" -e "$f.gz" <<<"$rpm_files" || fail "the rpm lacks $f"
done
[[ $(rpm -qp --configfiles "$rpm_file") == /etc/podkeeper/config.yaml ]] || fail "rpm config files"
requires=$(rpm -qp --requires "$rpm_file")
echo "$requires"
grep -qx '(containerd >= 1.6 or containerd.io)' <<<"$requires" || fail "rpm Requires: containerd"
grep -qx 'runc' <<<"$requires" || fail "rpm Requires: runc"
grep -qx 'shadow-utils' <<<"$requires" || fail "rpm Requires: shadow-utils (groupadd)"
rpm -qp --recommends "$rpm_file" | grep -qx containernetworking-plugins || fail "rpm Recommends"
scripts=$(rpm -qp --scripts "$rpm_file")
echo "$scripts"
grep -q 'systemctl --no-reload enable podkeeper.service' <<<"$scripts" || fail "rpm %post does not enable"
grep -q 'disable --now podkeeper.service' <<<"$scripts" || fail "rpm %preun does not stop and disable"
grep -q 'try-restart podkeeper.service' <<<"$scripts" || fail "rpm %postun does not restart on upgrade"
grep -q 'groupadd -r podkeeper' <<<"$scripts" || fail "rpm %post does not create the podkeeper group"
grep -q 'install -d -m 0710 -o root -g podkeeper /var/lib/podkeeper$' <<<"$scripts" || fail "rpm %post: state dir mode"

# Everything below is undone by cleanup, whatever fails.
tmp=$(mktemp -d /tmp/pkpkg.XXXXXX)
namespace=podkeeper-pkgtest
# Not the defaults (10250, 10255), which a kubelet here may hold.
api=127.0.0.1:10298
http=127.0.0.1:10299
# The package's state directory: the agent's first start fills it.
state=/var/lib/podkeeper
sock=$tmp/c.sock
agent_pid=""
containerd_pid=""
notify_pid=""
manifest_dir=$tmp/manifests

ctr_() { ctr --address "$sock" --connect-timeout 5s -n "$namespace" "$@"; }

stop_pid() {
    local pid=$1
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid"
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local status=$?
    set +e
    step "cleaning up"
    stop_pid "$agent_pid"
    stop_pid "$notify_pid"
    if [[ -n $containerd_pid ]] && kill -0 "$containerd_pid" 2>/dev/null; then
        for task in $(ctr_ tasks ls -q 2>/dev/null); do
            ctr_ tasks kill -s SIGKILL -a "$task" >/dev/null 2>&1
            ctr_ tasks delete -f "$task" >/dev/null 2>&1
        done
        for container in $(ctr_ containers ls -q 2>/dev/null); do
            ctr_ containers delete "$container" >/dev/null 2>&1
        done
        stop_pid "$containerd_pid"
    fi
    # Shims outliving their containerd (only ours: they name our socket dir).
    for pid in $(pgrep -f "containerd-shim.*$tmp"); do
        kill -KILL "$pid" 2>/dev/null
    done
    # Pod cgroups of this test, deepest first (rmdir only removes empty ones).
    find /sys/fs/cgroup -depth -type d -path '*/podkeeper-pkgtest*' -exec rmdir {} + 2>/dev/null
    rm -rf "/run/containerd/runc/$namespace"
    # Pod mounts (shm, volumes) left by a failure, so that purge can delete.
    grep -o -e " ${tmp}[^ ]*" -e " ${state}/[^ ]*" /proc/self/mountinfo | sort -r | while read -r mount; do
        umount -l "$mount"
    done
    # Installed, or removed with its configuration left.
    if [[ $(dpkg-query -W -f='${db:Status-Status}' podkeeper 2>/dev/null) =~ ^(installed|config-files|half-) ]]; then
        dpkg -P podkeeper >/dev/null
    fi
    # It did not exist before (or the script would have refused to run).
    rm -rf --one-file-system "$state"
    id "$test_user" >/dev/null 2>&1 && userdel "$test_user"
    $made_group && getent group podkeeper >/dev/null && groupdel podkeeper
    rm -f /etc/podkeeper/manifests/keep-me.yaml
    rmdir /etc/podkeeper/manifests /etc/podkeeper 2>/dev/null
    if ((status == 0)); then
        echo "=== packages: all checks passed in $((SECONDS - started))s"
    else
        for log in "$tmp"/*.log; do
            [[ -f $log ]] && { echo "--- tail of $log"; tail -n 40 "$log"; } >&2
        done
        echo "=== packages: FAILED after $((SECONDS - started))s" >&2
    fi
    rm -rf "$tmp"
    exit "$status"
}
trap cleanup EXIT

step "dpkg -i $deb"
dpkg -i "$deb" || DEBIAN_FRONTEND=noninteractive apt-get install -f -y -qq >/dev/null
dpkg-query -W -f='${Status}\n' podkeeper | grep -q "install ok installed" || fail "podkeeper is not installed"
[[ $(podkeeper version) == "podkeeper $base_version" ]] || fail "podkeeper version: $(podkeeper version)"
for f in "${expected_files[@]}"; do
    [[ -e $f || -e $f.gz ]] || fail "$f is not installed"
done
unit=$(dpkg -L podkeeper | grep '/systemd/system/podkeeper.service$')
verify_args=()
command -v man >/dev/null || verify_args+=(--man=no)
systemd-analyze verify "${verify_args[@]}" "$unit" || fail "systemd-analyze verify $unit"
dpkg-query -W -f='${Conffiles}\n' podkeeper | grep -q '/etc/podkeeper/config.yaml' || fail "config.yaml is not a conffile"
cmp /etc/podkeeper/config.yaml packaging/config.yaml || fail "the installed config.yaml differs"
check_dir() {
    local got
    got=$(stat -c '%a %U:%G' "$1")
    [[ $got == "$2" ]] || fail "$1 is $got, not $2"
}
getent group podkeeper >/dev/null || fail "the podkeeper group was not created"
check_dir /etc/podkeeper/manifests "755 root:root"
check_dir /var/lib/podkeeper "710 root:podkeeper"
check_dir /var/lib/podkeeper/images "700 root:root"
[[ -z $(ls -A /etc/podkeeper/manifests) ]] || fail "/etc/podkeeper/manifests is not empty"
[[ -L /etc/systemd/system/multi-user.target.wants/podkeeper.service ]] || fail "the service is not enabled"

step "starting a private containerd in $tmp"
# Others may pass through (not list) the temp dir, so that only the modes
# the agent gives the container logs keep the test user from them.
chmod 0711 "$tmp"
mkdir -p "$tmp/tmp" "$manifest_dir"
cat >"$tmp/config.toml" <<TOML
version = 2
root = "$tmp/root"
state = "$tmp/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$tmp/opt"
  [plugins."io.containerd.runtime.v1.linux"]
    runtime_root = "$tmp/runc-v1"
TOML
TMPDIR=$tmp/tmp containerd --config "$tmp/config.toml" >"$tmp/containerd.log" 2>&1 &
containerd_pid=$!
for _ in $(seq 200); do
    ctr_ version >/dev/null 2>&1 && break
    sleep 0.1
done
ctr_ version >/dev/null || fail "the private containerd did not start"

step "importing busybox"
examples/build-busybox-image.sh "$tmp/busybox.tar" podkeeper.local/busybox:pkgtest >/dev/null
ctr_ images import "$tmp/busybox.tar" >/dev/null
ctr_ images ls -q | grep -qx podkeeper.local/busybox:pkgtest || fail "busybox was not imported"

cat >"$manifest_dir/sleeper.yaml" <<'YAML'
apiVersion: v1
kind: Pod
metadata:
  name: sleeper
spec:
  hostNetwork: true
  terminationGracePeriodSeconds: 2
  containers:
    - name: sleeper
      image: podkeeper.local/busybox:pkgtest
      imagePullPolicy: Never
      command: ["sleep", "100000"]
YAML

# Receives the agent's sd_notify datagrams, as systemd would for Type=notify.
start_notify_listener() {
    rm -f "$tmp/notify.sock"
    python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
while True:
    print(s.recv(4096).decode().replace("\n", " "), flush=True)
' "$tmp/notify.sock" >>"$tmp/notify.log" 2>&1 &
    notify_pid=$!
    for _ in $(seq 50); do
        [[ -S $tmp/notify.sock ]] && return
        sleep 0.1
    done
    fail "the notify listener did not start"
}
have_python=false
command -v python3 >/dev/null && have_python=true

# The installed binary and the installed /etc/podkeeper/config.yaml (all
# defaults), with every path but the state directory moved into the temp dir.
start_agent() {
    local env=()
    if $have_python; then
        start_notify_listener
        env=(NOTIFY_SOCKET="$tmp/notify.sock")
    fi
    env "${env[@]}" /usr/bin/podkeeper run \
        --manifest-dir "$manifest_dir" \
        --containerd-address "$sock" \
        --containerd-namespace "$namespace" \
        --api-listen "$api" \
        --http-listen "$http" \
        --pod-log-dir "$tmp/logs" \
        --images-dir "$tmp/images" \
        --registry-config "$tmp/no-registry-config.json" \
        --cni-conf-dir "$tmp/cni" \
        --cgroup-root /podkeeper-pkgtest \
        --node-name pkgtest >>"$tmp/agent.log" 2>&1 &
    agent_pid=$!
}

wait_ready() {
    for _ in $(seq 600); do
        kill -0 "$agent_pid" 2>/dev/null || fail "the agent exited"
        if ! $have_python || grep -q "READY=1" "$tmp/notify.log"; then
            curl -fsS "http://$http/healthz" >/dev/null 2>&1 && return
        fi
        sleep 0.1
    done
    fail "the agent did not become ready (READY=1 and /healthz)"
}

# The admin token goes to curl in a file, never on a command line.
api_get() {
    [[ -f $tmp/auth.header ]] ||
        (umask 077 && printf 'Authorization: Bearer %s\n' "$(cat "$state/pki/admin.token")" >"$tmp/auth.header")
    curl -fsS --cacert "$state/pki/ca.crt" -H @"$tmp/auth.header" "https://$api$1"
}

wait_running() {
    for _ in $(seq 600); do
        api_get /pods 2>/dev/null | grep -q '"phase":"Running"' && return
        sleep 0.1
    done
    fail "the pod is not Running"
}

http_code() { curl -s -o /dev/null -w '%{http_code}' "$@"; }

check_file() {
    local got
    got=$(stat -c '%a %U:%G %F' "$1") || fail "$1 is missing"
    [[ $got == "$2 regular file" ]] || fail "$1 is $got, not $2"
}

as_test_user() { setpriv --reuid "$test_user" --regid "$(id -g "$test_user")" --init-groups "$@"; }

# Exactly the files and modes of the agent's first start.
check_first_start_files() {
    check_dir "$state" "710 root:podkeeper"
    check_dir "$state/pki" "700 root:root"
    check_file "$state/pki/ca.crt" "644 root:root"
    check_file "$state/pki/ca.key" "600 root:root"
    check_file "$state/pki/admin.token" "600 root:root"
    check_file "$state/kubeconfig" "640 root:podkeeper"
}

kept_sums() { (cd "$state" && sha256sum pki/ca.crt pki/admin.token kubeconfig); }

task_pids() { ctr_ tasks ls | tail -n +2 | awk '{print $1, $2, $3}' | sort; }

step "running the installed agent"
start_agent
wait_ready
wait_running
/usr/bin/podkeeper get pods
before=$(task_pids)
echo "tasks before the upgrade:"
echo "$before"
[[ $(grep -c RUNNING <<<"$before") -eq 2 ]] || fail "expected a running sandbox and container"

step "checking the API: first-start files, kubectl over HTTPS, 401 without a token"
check_first_start_files
cmp <(podkeeper kubeconfig) "$state/kubeconfig" || fail "podkeeper kubeconfig differs from $state/kubeconfig"
grep -q 'insecure-skip-tls-verify' "$state/kubeconfig" && fail "the kubeconfig skips TLS verification"
grep -qF "server: https://$api" "$state/kubeconfig" || fail "the kubeconfig does not name https://$api"
pods=$(kubectl --kubeconfig "$state/kubeconfig" get pods) || fail "kubectl get pods with the kubeconfig"
echo "$pods"
grep -q '^sleeper-pkgtest .* Running ' <<<"$pods" || fail "kubectl does not show sleeper-pkgtest Running"
[[ $(http_code "http://$http/healthz") == 200 ]] || fail "http://$http/healthz is not 200"
[[ $(http_code "http://$http/pods") == 401 ]] || fail "http://$http/pods is not 401"
[[ $(http_code --cacert "$state/pki/ca.crt" "https://$api/pods") == 401 ]] || fail "https://$api/pods without a token is not 401"
# systemd-tmpfiles at boot must agree with the modes of the package and agent.
if command -v systemd-tmpfiles >/dev/null; then
    systemd-tmpfiles --create /usr/lib/tmpfiles.d/podkeeper.conf || fail "systemd-tmpfiles --create"
    check_first_start_files
fi

step "checking what a non-root user can read"
useradd -M -r -s /usr/sbin/nologin "$test_user"
log_file=$(find "$tmp/logs" -type f -name '*.log' -print -quit)
[[ -n $log_file ]] || fail "no container log file in $tmp/logs"
# The control: the test user does reach into the temp dir.
printf 'control\n' >"$tmp/readable"
chmod 0644 "$tmp/readable"
as_test_user cat "$tmp/readable" >/dev/null || fail "$test_user cannot read $tmp/readable"
secrets=("$state/pki/ca.key" "$state/pki/admin.token")
for f in "$state/kubeconfig" "$state/pki/ca.crt" "${secrets[@]}" "$log_file"; do
    as_test_user cat "$f" >/dev/null 2>&1 && fail "$test_user can read $f"
done
# In the podkeeper group: the kubeconfig, and still no key, token or listing.
usermod -a -G podkeeper "$test_user"
as_test_user cat "$state/kubeconfig" >/dev/null || fail "a podkeeper group member cannot read the kubeconfig"
for f in "${secrets[@]}"; do
    as_test_user cat "$f" >/dev/null 2>&1 && fail "a podkeeper group member can read $f"
done
as_test_user ls "$state" >/dev/null 2>&1 && fail "a podkeeper group member can list $state"
userdel "$test_user"
kept=$(kept_sums)

step "upgrading to $upgrade_deb while the pod runs"
dpkg -i "$upgrade_deb"
[[ $(dpkg-query -W -f='${Version}' podkeeper) == "$upgrade_version-1" ]] || fail "the upgrade did not install"
check_dir "$state" "710 root:podkeeper"
stop_pid "$agent_pid"
if $have_python; then
    grep -q "STOPPING=1" "$tmp/notify.log" || fail "the agent did not send STOPPING=1"
    stop_pid "$notify_pid"
    : >"$tmp/notify.log"
fi
start_agent
wait_ready
wait_running
# Give adoption time to act if it wrongly were to restart something.
sleep 5
after=$(task_pids)
echo "tasks after the upgrade:"
echo "$after"
[[ $after == "$before" ]] || fail "task PIDs changed across the upgrade"
grep -q "Killing\|SandboxChanged" "$tmp/agent.log" && fail "the agent restarted the pod"
check_first_start_files
[[ $(kept_sums) == "$kept" ]] || fail "the CA, admin token or kubeconfig changed across the upgrade"
kubectl --kubeconfig "$state/kubeconfig" get pods >/dev/null || fail "kubectl after the upgrade"

step "removing the pod, then the package"
rm "$manifest_dir/sleeper.yaml"
for _ in $(seq 300); do
    [[ -z $(ctr_ tasks ls -q) ]] && break
    sleep 0.1
done
[[ -z $(ctr_ tasks ls -q) ]] || fail "the pod's tasks are still there"
stop_pid "$agent_pid"
printf 'operator data\n' >/etc/podkeeper/manifests/keep-me.yaml
dpkg -r podkeeper
[[ ! -e /usr/bin/podkeeper ]] || fail "/usr/bin/podkeeper survived dpkg -r"
[[ -f /etc/podkeeper/config.yaml && -d /var/lib/podkeeper ]] || fail "dpkg -r removed config or state"
[[ $(kept_sums) == "$kept" ]] || fail "dpkg -r changed the CA, admin token or kubeconfig"
[[ ! -e /etc/systemd/system/multi-user.target.wants/podkeeper.service ]] || fail "dpkg -r left the service enabled"
dpkg -P podkeeper
[[ ! -e /var/lib/podkeeper ]] || fail "dpkg -P left /var/lib/podkeeper (PKI, token, kubeconfig)"
getent group podkeeper >/dev/null || fail "dpkg -P removed the podkeeper group (system groups stay)"
[[ ! -e /etc/podkeeper/config.yaml ]] || fail "dpkg -P left the config"
[[ -f /etc/podkeeper/manifests/keep-me.yaml ]] || fail "dpkg -P removed a manifest"
