#!/usr/bin/env bash
# The check under a real systemd (.ci/run calls it, as root, after packaging/ci-check.sh): boots
# Debian 12 with systemd as PID 1 in a systemd-nspawn container on this machine, installs the
# .deb there and uses it as an operator would:
#
#   install (enabled, not started); check-config warns about an unwritable metrics textfile
#   directory; start (Type=notify: active only after READY=1); send as a member of the pdrelay
#   group; a drop-file; reload; restart; kill -9 with events pending (restarted by systemd,
#   nothing lost); the watchdog (pings for over twice its period; a stopped daemon is killed and
#   restarted); journal priorities (WARN at 4, INFO at 6, ERROR at 3, no leading space); the
#   metrics textfile; a config error stops without a restart loop; a root-run `queue status` and
#   `queue salvage` on the stopped daemon, then a start; stop; Nagios 4 notifying through the
#   shipped /usr/share/pdrelay/nagios/pdrelay.cfg; purge (nothing left).
#
# The stand-in for the Events API (examples/receiver) runs inside the container as a transient
# unit; nothing leaves the container's private network.
#
# Usage: packaging/systemd-check.sh [DEB]   (default: the .deb packaging/build.sh puts in
# <target>/packages, built if missing). The root file system (mmdebstrap, Debian packages) is
# cached as <target>/systemd-check/rootfs-*.tar, so a second run in the same target dir takes
# about a minute. Installs systemd-container and mmdebstrap on the host if missing.
# Prints each check; exits non-zero on the first failure, with the container's journal.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
export CARGO_TERM_COLOR=never
target=${CARGO_TARGET_DIR:-target}
case $target in /*) ;; *) target=$repo/$target ;; esac
export CARGO_TARGET_DIR=$target
deb_version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
deb=${1:-$target/packages/pdrelay_${deb_version}-1_$(dpkg --print-architecture).deb}
key=PDRELAYSYSTEMDCHECK0000000000000 # 32 letters and digits: the fake API takes any such key
port=18765                           # the fake Events API, inside the container's own network

started=$SECONDS
step() { printf '\n== %s  (%ds)\n' "$*" $((SECONDS - started)); }
ok() { printf 'ok   %s\n' "$*"; }
fail() {
  printf 'FAIL %s\n' "$*" >&2
  exit 1
}

[ "$(id -u)" = 0 ] || fail "run as root (systemd-nspawn, cgroups)"

step "tools and the package"
need=()
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v nsenter >/dev/null || need+=(util-linux)
command -v pgrep >/dev/null || need+=(procps)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi
if [ ! -f "$deb" ]; then
  [ -z "${1:-}" ] || fail "no $deb"
  packaging/build.sh "$target/packages"
fi
ok "package $deb"
cargo build --release --locked --quiet --example receiver
receiver_bin=$target/release/examples/receiver

step "root file system (cached in $target/systemd-check)"
packages=systemd,systemd-sysv,dbus,adduser,procps,iproute2,gpgv,ca-certificates,util-linux,nagios4-core
cache=$target/systemd-check/rootfs-bookworm-$(printf '%s' "$packages" | md5sum | cut -c1-8).tar
if [ ! -f "$cache" ]; then
  mkdir -p "$(dirname "$cache")"
  mmdebstrap --quiet --format=tar --variant=minbase --include="$packages" bookworm "$cache.part"
  mv "$cache.part" "$cache"
  ok "built $cache"
else
  ok "reusing $cache"
fi

work=$(mktemp -d /var/tmp/pdrelay-systemd-check.XXXXXX)
root=$work/root
cg=pdrelay-systemd-check-$$
# The host's cgroup trees nspawn uses: the named systemd hierarchy and cgroup2 when they are
# mounted side by side (hybrid, as on these CI machines), or cgroup2 alone (unified).
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
  cgroup_trees=/sys/fs/cgroup
else
  cgroup_trees=""
  for h in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified; do
    [ -d "$h" ] && cgroup_trees="$cgroup_trees $h"
  done
fi
nspawn_pid=""
ct=""
cleanup() {
  local rc=$?
  set +e
  if [ "$rc" != 0 ] && [ -n "$ct" ]; then
    echo "--- the container's journal (pdrelay, fakeapi, nagios4), last 80 lines:" >&2
    in_ct journalctl --no-pager -q -o short-monotonic -u pdrelay -u fakeapi -u nagios4 -n 80 >&2
  fi
  if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
    [ -n "$ct" ] && kill -RTMIN+4 "$ct" 2>/dev/null # systemd's power-off
    for _ in $(seq 300); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$nspawn_pid" 2>/dev/null
    wait "$nspawn_pid" 2>/dev/null
  fi
  for h in $cgroup_trees; do
    if [ -d "$h/$cg" ]; then
      find "$h/$cg" -depth -mindepth 1 -type d -exec rmdir {} + 2>/dev/null
      rmdir "$h/$cg" 2>/dev/null
    fi
  done
  rm -rf "$work"
  if [ "$rc" = 0 ]; then
    printf '\nsystemd check passed in %ds\n' $((SECONDS - started))
  else
    printf '\nsystemd check FAILED (exit %d) after %ds\n' "$rc" $((SECONDS - started)) >&2
  fi
}
trap cleanup EXIT

mkdir "$root"
tar --numeric-owner -xpf "$cache" -C "$root"
# The container gets a copy of the host's /dev/null; this makes its own right whatever the host's.
echo 'z /dev/null 0666 root root -' >"$root/etc/tmpfiles.d/zz-devnull.conf"
install -m 755 "$receiver_bin" "$root/usr/local/bin/fakeapi"
cp "$deb" "$root/root/pdrelay.deb"
cp packaging/nagios/pdrelay.cfg "$root/root/repo-pdrelay.cfg"

step "boot systemd in a container"
# With --keep-unit and no systemd on the host, nspawn puts its cgroups beside its own: give it
# cgroups of its own, so that nothing lands at the root of the host's trees.
(
  for h in $cgroup_trees; do
    mkdir -p "$h/$cg"
    echo $BASHPID >"$h/$cg/cgroup.procs"
  done
  exec systemd-nspawn -q -D "$root" -M "pdrelay-check-$$" --boot --register=no --keep-unit \
    --private-network --console=read-only
) >"$work/console.log" 2>&1 &
nspawn_pid=$!
deadline=$((SECONDS + 60))
while [ -z "$ct" ]; do
  kill -0 "$nspawn_pid" 2>/dev/null || fail "systemd-nspawn exited: $(tail -n 20 "$work/console.log")"
  [ "$SECONDS" -lt "$deadline" ] || fail "no systemd in the container after 60s"
  ct=$(pgrep -P "$nspawn_pid" -x systemd || true)
  sleep 0.1
done
# in_ct COMMAND...: runs a command inside the container, as root, with a clean environment.
in_ct() {
  nsenter -t "$ct" -a -r -w env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"
}
# wait_for SECONDS COMMAND...: polls the command (in the container) until it succeeds.
wait_for() {
  local deadline=$((SECONDS + $1))
  shift
  until in_ct "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}
# check DESCRIPTION COMMAND...: runs the command in the container, quietly.
check() {
  local what=$1
  shift
  if in_ct "$@" >"$work/out" 2>&1; then ok "$what"; else fail "$what   [$*]: $(tail -n 5 "$work/out")"; fi
}
wait_for 60 sh -c 'systemctl is-system-running | grep -Eqx "running|degraded"' ||
  fail "the container's systemd did not finish booting: $(in_ct systemctl is-system-running 2>&1)"
ok "systemd is PID 1 in the container ($(in_ct systemctl is-system-running))"
prop() { in_ct systemctl show -P "$2" "$1"; }

step "install the .deb"
in_ct dpkg -i /root/pdrelay.deb >"$work/out" 2>&1 || fail "dpkg -i: $(cat "$work/out")"
ok "dpkg -i pdrelay.deb"
check "pdrelay.service is enabled" sh -c 'systemctl is-enabled pdrelay | grep -qx enabled'
check "pdrelay.service was not started" sh -c 'systemctl is-active pdrelay | grep -qx inactive'
check "systemd loads the unit without complaint (systemd-analyze verify)" \
  sh -c '! systemd-analyze verify --man=no pdrelay.service 2>&1 | grep .'

step "configure: the fake Events API, the metrics textfile"
in_ct systemd-run -q --unit=fakeapi -p DynamicUser=yes /usr/local/bin/fakeapi "127.0.0.1:$port"
wait_for 30 sh -c 'journalctl -u fakeapi -o cat | grep -q "listening on"' || fail "the fake Events API did not start"
ok "fake Events API at http://127.0.0.1:$port (unit fakeapi)"
in_ct sed -i -e "s|^events_url = .*|events_url = \"http://127.0.0.1:$port\"|" \
  -e 's|^textfile = .*|textfile = "/var/lib/prometheus/node-exporter/pdrelay.prom"|' \
  -e 's|^textfile_interval = .*|textfile_interval = "1s"|' \
  -e 's|^log_level = .*|log_level = "info"|' /etc/pdrelay/config.toml
for k in 'events_url = "http://127.0.0.1' 'textfile = "/var/lib/prometheus' 'log_level = "info"'; do
  in_ct grep -q "^$k" /etc/pdrelay/config.toml || fail "could not set '$k' in /etc/pdrelay/config.toml"
done
# As Debian's prometheus-node-exporter leaves it: root's, not writable by pdrelay.
in_ct install -d -m 0755 /var/lib/prometheus/node-exporter
in_ct pdrelay check-config >"$work/out" 2>&1 || fail "check-config: $(cat "$work/out")"
grep -q 'warning: metrics.textfile: .*pdrelay' "$work/out" ||
  fail "check-config did not warn that the pdrelay user cannot write the textfile directory: $(cat "$work/out")"
ok "check-config warns: $(grep 'warning: metrics.textfile' "$work/out" | head -n1)"
# What the README says to do.
in_ct chgrp pdrelay /var/lib/prometheus/node-exporter
in_ct chmod g+w /var/lib/prometheus/node-exporter
in_ct pdrelay check-config >"$work/out" 2>&1 || fail "check-config: $(cat "$work/out")"
! grep -q 'warning' "$work/out" || fail "check-config still warns: $(cat "$work/out")"
ok "check-config is quiet once the directory is the pdrelay group's"

step "start"
mark=$$-$RANDOM
in_ct systemctl start pdrelay || fail "systemctl start pdrelay"
check "active (running) once systemctl start returns (Type=notify: after READY=1)" \
  sh -c 'test "$(systemctl show -P ActiveState pdrelay)/$(systemctl show -P SubState pdrelay)" = active/running'
[ "$(prop pdrelay Type)" = notify ] || fail "Type is $(prop pdrelay Type)"
check "the daemon runs as pdrelay" sh -c 'test "$(ps -o user= -p "$(systemctl show -P MainPID pdrelay)")" = pdrelay'
check "its socket is 660 pdrelay:pdrelay" sh -c 'test "$(stat -c "%a %U %G" /run/pdrelay/pdrelay.sock)" = "660 pdrelay pdrelay"'

# delivered WHAT [N]: waits until the fake API has printed the event "WHAT $mark" (N times).
delivered() {
  local n=${2:-1}
  if ! wait_for 60 sh -c "test \$(journalctl -u fakeapi -o cat | grep -c '$1 $mark') -ge $n"; then
    fail "the fake Events API did not get '$1 $mark'"
  fi
  ok "delivered: $1"
}

step "send as a member of the pdrelay group; a drop-file"
in_ct useradd --create-home --groups pdrelay alice
in_ct runuser -u alice -- pdrelay send -k "$key" -t trigger -d "group-member $mark" >"$work/out" 2>&1 ||
  fail "pdrelay send as a member of the pdrelay group: $(cat "$work/out")"
grep -q '^id=.* dedup_key=.' "$work/out" || fail "send printed $(cat "$work/out")"
ok "alice (group pdrelay): pdrelay send: $(cat "$work/out")"
delivered group-member
in_ct runuser -u alice -- sh -c "printf '%s\n' '{\"routing_key\":\"$key\",\"event_action\":\"trigger\",\"payload\":{\"summary\":\"drop-file $mark\",\"source\":\"ct\",\"severity\":\"info\"}}' >/var/spool/pdrelay/.a.tmp && mv /var/spool/pdrelay/.a.tmp /var/spool/pdrelay/a.json"
ok "alice dropped /var/spool/pdrelay/a.json"
delivered drop-file
check "the drop-file was consumed" test ! -e /var/spool/pdrelay/a.json

step "journal priorities"
# A file the daemon must refuse: a WARN.
in_ct sh -c 'echo "not json" >/var/spool/pdrelay/.bad.tmp && mv /var/spool/pdrelay/.bad.tmp /var/spool/pdrelay/bad.json'
wait_for 30 sh -c 'journalctl -u pdrelay -p warning..warning -o cat | grep -q bad.json' ||
  fail "the rejected drop-file's WARN is not in journalctl -p warning: $(in_ct journalctl -u pdrelay -o cat -n 5 --output-fields=PRIORITY)"
ok "WARN is priority 4: $(in_ct journalctl -u pdrelay -p warning..warning -o cat | grep bad.json | tail -n1)"
check "INFO lines are priority 6, not warnings" sh -c 'journalctl -u pdrelay -p info..info -o cat | grep -q "^INFO " && ! journalctl -u pdrelay -p warning -o cat | grep -q "^INFO "'
check "no line starts with a space" sh -c '! journalctl -u pdrelay -o cat | grep -q "^ "'
check "no <N> prefix is left in the text" sh -c '! journalctl -u pdrelay -o cat | grep -q "^<[0-9]>"'

step "metrics textfile"
wait_for 30 grep -q '^pdrelay_queue_pending_events' /var/lib/prometheus/node-exporter/pdrelay.prom ||
  fail "no /var/lib/prometheus/node-exporter/pdrelay.prom with pdrelay_queue_pending_events"
check "the textfile belongs to pdrelay" sh -c 'test "$(stat -c %U /var/lib/prometheus/node-exporter/pdrelay.prom)" = pdrelay'
wait_for 30 grep -Eq '^pdrelay_deliveries_total\{.*\} [1-9]' /var/lib/prometheus/node-exporter/pdrelay.prom ||
  fail "the textfile does not count the deliveries: $(in_ct grep deliveries_total /var/lib/prometheus/node-exporter/pdrelay.prom)"
ok "it counts the deliveries"
check "no 'cannot write the metrics file' in the journal" sh -c '! journalctl -u pdrelay -o cat | grep -q "cannot write the metrics file"'
ok "/var/lib/prometheus/node-exporter/pdrelay.prom is written"

step "reload"
pid=$(prop pdrelay MainPID)
check "systemctl reload pdrelay" systemctl reload pdrelay
wait_for 30 sh -c 'journalctl -u pdrelay -o cat | grep -q "configuration reloaded"' || fail "no 'configuration reloaded' in the journal"
[ "$(prop pdrelay MainPID)" = "$pid" ] || fail "reload replaced the process"
ok "reloaded in place (pid $pid)"

step "restart"
check "systemctl restart pdrelay" systemctl restart pdrelay
[ "$(prop pdrelay MainPID)" != "$pid" ] || fail "restart kept the process"
check "active (running)" sh -c 'test "$(systemctl show -P ActiveState pdrelay)" = active'
in_ct pdrelay send -k "$key" -t trigger -d "after-restart $mark" >/dev/null || fail "send after restart"
delivered after-restart

step "kill -9 with events pending: restarted, nothing lost"
check "stop the fake Events API" systemctl stop fakeapi
for i in 1 2 3; do
  in_ct pdrelay send -k "$key" -t trigger -d "pending-$i $mark" >/dev/null || fail "send pending-$i"
done
check "three events pending" sh -c 'pdrelay queue status --json | grep -Eq "\"(pending|waiting)\": *[1-9]"'
pid=$(prop pdrelay MainPID)
restarts=$(prop pdrelay NRestarts)
in_ct kill -KILL "$pid"
ok "kill -9 $pid"
wait_for 30 sh -c "test \$(systemctl show -P NRestarts pdrelay) -gt $restarts && systemctl is-active -q pdrelay" ||
  fail "systemd did not restart the killed daemon (NRestarts $(prop pdrelay NRestarts), $(prop pdrelay ActiveState))"
ok "restarted by systemd (pid $(prop pdrelay MainPID), NRestarts $(prop pdrelay NRestarts))"
in_ct systemd-run -q --unit=fakeapi -p DynamicUser=yes /usr/local/bin/fakeapi "127.0.0.1:$port"
for i in 1 2 3; do delivered "pending-$i"; done

step "watchdog"
wd=3
in_ct mkdir -p /run/systemd/system/pdrelay.service.d
in_ct sh -c "printf '[Service]\nWatchdogSec=${wd}s\nTimeoutAbortSec=2s\n' >/run/systemd/system/pdrelay.service.d/watchdog.conf"
in_ct systemctl daemon-reload
check "restart with WatchdogSec=${wd}s" systemctl restart pdrelay
pid=$(prop pdrelay MainPID)
restarts=$(prop pdrelay NRestarts)
since=$(prop pdrelay ExecMainStartTimestampMonotonic)
# systemd records each WATCHDOG=1 it gets: wait for one more than twice the period after the start.
wait_for $((4 * wd + 10)) sh -c "test \$(( \$(systemctl show -P WatchdogTimestampMonotonic pdrelay) - $since )) -gt $((2 * wd))000000" ||
  fail "no watchdog ping over twice the period after the start (last $(prop pdrelay WatchdogTimestamp))"
[ "$(prop pdrelay MainPID)" = "$pid" ] && [ "$(prop pdrelay NRestarts)" = "$restarts" ] ||
  fail "the watchdog restarted a healthy daemon"
ok "pinged more than $((2 * wd))s after its start, same process: the watchdog is fed"
in_ct kill -STOP "$pid"
wait_for 30 sh -c "test \$(systemctl show -P NRestarts pdrelay) -gt $restarts && systemctl is-active -q pdrelay" ||
  fail "a stopped daemon was not killed and restarted by the watchdog"
check "the journal names the watchdog" sh -c 'journalctl -u pdrelay -o cat | grep -qi "watchdog timeout"'
ok "a frozen daemon is killed by the watchdog and restarted"
in_ct rm -rf /run/systemd/system/pdrelay.service.d
in_ct systemctl daemon-reload
check "restart with the packaged unit" systemctl restart pdrelay

step "a config error: exit 2, no restart loop, an error in the journal"
in_ct cp /etc/pdrelay/config.toml /root/config.good
in_ct sh -c 'echo "no_such_key = 1" >>/etc/pdrelay/config.toml'
in_ct systemctl restart pdrelay 2>/dev/null && fail "systemctl restart succeeded with a broken config"
ok "systemctl restart fails"
# A restart to come shows as activating/auto-restart (for RestartSec=5s); no restart, as failed.
wait_for 30 sh -c 'systemctl show -P ActiveState pdrelay | grep -qx failed || systemctl show -P SubState pdrelay | grep -qx auto-restart' ||
  fail "no outcome after the config error: $(prop pdrelay ActiveState)/$(prop pdrelay SubState)"
[ "$(prop pdrelay ActiveState)" = failed ] ||
  fail "state is $(prop pdrelay ActiveState)/$(prop pdrelay SubState) after a config error, want failed (no restart)"
[ "$(prop pdrelay ExecMainStatus)" = 2 ] || fail "exit status $(prop pdrelay ExecMainStatus), want 2"
check "no restart after exit 2" sh -c 'test "$(systemctl show -P NRestarts pdrelay)" = 0'
check "the error is in journalctl -p err" sh -c 'journalctl -u pdrelay -p err -o cat | grep -q no_such_key'
ok "failed with exit 2, not restarted"
in_ct cp /root/config.good /etc/pdrelay/config.toml
in_ct systemctl reset-failed pdrelay
check "start with the config mended" systemctl start pdrelay

step "root runs queue status and queue salvage on the stopped daemon, then starts it"
check "systemctl stop pdrelay" systemctl stop pdrelay
check "pdrelay queue status (root, daemon stopped)" pdrelay queue status
check "pdrelay queue salvage (root)" pdrelay queue salvage
check "systemctl start pdrelay" systemctl start pdrelay
in_ct pdrelay send -k "$key" -t trigger -d "after-salvage $mark" >/dev/null || fail "send after salvage"
delivered after-salvage

step "stop"
pid=$(prop pdrelay MainPID)
check "systemctl stop pdrelay" systemctl stop pdrelay
check "inactive, result success (exit 0 on SIGTERM)" \
  sh -c 'test "$(systemctl show -P ActiveState pdrelay)/$(systemctl show -P Result pdrelay)" = inactive/success'
check "the socket and runtime directory are gone" test ! -e /run/pdrelay
check "the process is gone" sh -c "! kill -0 $pid"
check "systemctl start pdrelay (for Nagios)" systemctl start pdrelay

step "Nagios 4 notifies through the shipped config"
# README, "Let Nagios send through it".
in_ct usermod -aG pdrelay nagios
in_ct cp /usr/share/pdrelay/nagios/pdrelay.cfg /etc/nagios4/conf.d/pdrelay.cfg
in_ct sed -i "s/YOUR_32_CHARACTER_INTEGRATION_KEY/$key/" /etc/nagios4/conf.d/pdrelay.cfg
in_ct sh -c 'cat >/etc/nagios4/conf.d/pdrelay-check.cfg' <<'EOF'
define command {
    command_name    pdrelay-check-true
    command_line    /bin/true
}
define host {
    use                     generic-host
    host_name               ct-web1
    address                 127.0.0.1
    check_command           pdrelay-check-true
    max_check_attempts      1
    contacts                pagerduty
}
define service {
    use                     generic-service
    host_name               ct-web1
    service_description     Disk var
    check_command           pdrelay-check-true
    active_checks_enabled   0
    passive_checks_enabled  1
    max_check_attempts      1
    notification_interval   0
    contacts                pagerduty
}
EOF
check "nagios4 -v accepts the config" nagios4 -v /etc/nagios4/nagios.cfg
check "systemctl restart nagios4" systemctl restart nagios4
wait_for 30 test -p /var/lib/nagios4/rw/nagios.cmd || fail "no Nagios command pipe"
in_ct sh -c "printf '[%s] PROCESS_SERVICE_CHECK_RESULT;ct-web1;Disk var;2;DISK CRITICAL $mark\n' \$(date +%s) >/var/lib/nagios4/rw/nagios.cmd"
ok "a CRITICAL passive result for ct-web1/Disk var"
if ! wait_for 90 sh -c "journalctl -u fakeapi -o cat | grep -q 'DISK CRITICAL $mark'"; then
  in_ct tail -n 20 /var/log/nagios4/nagios.log >&2
  fail "Nagios's notification did not reach the fake Events API"
fi
check "as a PD-CEF trigger with pd-nagios's dedup key" sh -c \
  "journalctl -u fakeapi -o cat | grep 'DISK CRITICAL $mark' | grep -q 'event_source=service;host_name=ct-web1;service_desc=Disk var'"
ok "Nagios 4 paged through pdrelay"
check "systemctl stop nagios4" systemctl stop nagios4

step "purge"
check "dpkg -P pdrelay (stops the running service)" dpkg -P pdrelay
check "pdrelay.service is gone" sh -c '! systemctl cat pdrelay >/dev/null 2>&1'
check "no pdrelay process" sh -c '! pgrep -x pdrelay'
check "no pdrelay user or group" sh -c '! getent passwd pdrelay && ! getent group pdrelay'
for d in /etc/pdrelay /var/lib/pdrelay /var/spool/pdrelay /run/pdrelay /usr/bin/pdrelay /etc/systemd/system/multi-user.target.wants/pdrelay.service; do
  check "$d is gone" test ! -e "$d"
done
