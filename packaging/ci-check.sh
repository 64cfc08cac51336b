#!/usr/bin/env bash
# The package check (.ci/run calls it, as root, on a Debian machine where systemd is not PID 1):
#
#   1. builds the .deb and the .rpm with packaging/build.sh (installing cargo-deb and
#      cargo-generate-rpm if missing), and the fake Events API (examples/receiver);
#   2. installs the .deb with dpkg -i and checks files, modes, the pdrelay user and group, the
#      state and spool directories, the conffile, that the unit is enabled and nothing started;
#      runs `pdrelay check-config`, lints the man page and completions, and runs
#      `systemd-analyze verify` on the installed unit;
#   3. starts the installed daemon as the pdrelay user the way the unit does (setpriv, UMask 0007,
#      no new privileges, a clean environment, /run/pdrelay as RuntimeDirectory= would make it)
#      on a copy of the installed config whose events_url is a local receiver, and delivers
#      events sent by root over the socket, by a producer in the pdrelay group over the socket and
#      as a spool drop-file; checks that others cannot drop files and that the sticky spool stops
#      a producer deleting another's file; stops the daemon with SIGTERM;
#   4. upgrades to a -2 build of the same package with an undeliverable event queued and the
#      config changed: the config is kept without a prompt, owners, modes and enablement too,
#      nothing is started, and the queued event is delivered when the daemon runs again;
#   5. dpkg -r (binary gone, config and user kept) and dpkg -P: nothing is left (no user, group,
#      directory, file, enable symlink or deb-systemd-helper state; no file owned by the old uid);
#   6. checks the rpm's file list, config file, modes, scriptlets and relations with rpm -qp.
#
# Prints each check; exits non-zero on the first failure. Leaves the machine as it found it (it
# refuses to start if pdrelay is already installed or its user, group or directories exist, and
# purges what it installed on any exit). Tools it installs stay: cargo-deb, cargo-generate-rpm,
# and the Debian packages rpm (and systemd, for systemd-analyze, if it was missing).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
export CARGO_TERM_COLOR=never

target=${CARGO_TARGET_DIR:-target}
case $target in /*) ;; *) target=$repo/$target ;; esac
export CARGO_TARGET_DIR=$target
out=$target/packages
deb_version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
key=PDRELAYC1CHECK000000000000000000 # 32 letters and digits: the fake API takes any such key

started=$SECONDS
step() { printf '\n== %s  (%ds)\n' "$*" $((SECONDS - started)); }
ok() { printf 'ok   %s\n' "$*"; }
fail() {
  printf 'FAIL %s\n' "$*" >&2
  exit 1
}
# check DESCRIPTION COMMAND...: runs the command, quietly; fails with the description.
check() {
  local what=$1
  shift
  if "$@" >/dev/null 2>&1; then ok "$what"; else fail "$what   [$*]"; fi
}
# expect_stat PATH "MODE USER GROUP" (octal mode as stat %a prints it)
expect_stat() {
  local got
  got=$(stat -c '%a %U %G' "$1" 2>&1) || fail "$1: missing"
  [ "$got" = "$2" ] || fail "$1: mode/owner/group is '$got', want '$2'"
  ok "$1 is $2"
}
# wait_for SECONDS COMMAND...: polls the command every 0.1 s until it succeeds or time is up.
wait_for() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.1
  done
}
# Processes running the installed binary (other pdrelay daemons on this machine, e.g. from
# cargo test, run from the target dir and are not counted).
installed_daemons() {
  local p
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/exe" 2>/dev/null)" = /usr/bin/pdrelay ] && echo "${p#/proc/}"
  done
  return 0
}
# Everything on this file system named like the package, outside temp, home and build dirs.
snapshot() {
  find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /tmp -o -path /var/tmp \
    -o -path /root -o -path /home -o -path /work -o -path "$repo" -o -path "$target" \
    -o -path /var/lib/dpkg -o -path /var/cache -o -path /var/log \) -prune \
    -o \( -iname '*pdrelay*' -o -iname 'pd-*' -o -iname '*pdagent*' \) -print 2>/dev/null | sort
}

tmp=""
daemon_pid=""
receiver_pid=""
made_run_dir=""
installed=""
cleanup() {
  local rc=$?
  set +e
  [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
  [ -n "$receiver_pid" ] && kill "$receiver_pid" 2>/dev/null && wait "$receiver_pid" 2>/dev/null
  [ -n "$made_run_dir" ] && rm -rf "$made_run_dir"
  if [ -n "$installed" ] && dpkg-query -W pdrelay >/dev/null 2>&1; then
    echo "cleanup: purging the pdrelay package" >&2
    dpkg -P pdrelay >/dev/null 2>&1
  fi
  [ -n "$tmp" ] && rm -rf "$tmp"
  if [ "$rc" -eq 0 ]; then
    printf '\npackaging check passed in %ds\n' $((SECONDS - started))
  else
    printf '\npackaging check FAILED (exit %d) after %ds\n' "$rc" $((SECONDS - started)) >&2
  fi
}
trap cleanup EXIT

step "preconditions"
[ "$(id -u)" = 0 ] || fail "run as root (dpkg -i, users, setpriv)"
if dpkg-query -W -f='${db:Status-Abbrev}' pdrelay 2>/dev/null | grep -q '^[ic]'; then
  fail "the pdrelay package is already installed (or its config left): dpkg -P pdrelay first"
fi
for what in "passwd pdrelay" "group pdrelay"; do
  # shellcheck disable=SC2086
  if getent $what >/dev/null; then fail "a '$what' entry exists already: this check must own it"; fi
done
for d in /etc/pdrelay /var/lib/pdrelay /var/spool/pdrelay; do
  [ ! -e "$d" ] || fail "$d exists already: this check must own it"
done
ok "no pdrelay package, user, group or directory on this machine"
# The daemon's sockets go where the unit's RuntimeDirectory= puts them, /run/pdrelay, made here
# as systemd would; if something else made that directory already, it is left alone and the
# sockets go to a temp directory instead.
use_run_dir=""
if [ -e /run/pdrelay ]; then
  echo "/run/pdrelay exists (not made by this check): the daemon's sockets go to a temp directory"
else
  use_run_dir=1
fi

step "tools"
if ! command -v cargo-deb >/dev/null || ! command -v cargo-generate-rpm >/dev/null; then
  cargo install --locked cargo-deb@3.8.0 cargo-generate-rpm@0.21.1
fi
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  [ -n "${apt_updated:-}" ] || { apt-get update -q >/dev/null && apt_updated=1; }
  apt-get install -y -q --no-install-recommends "$@" >/dev/null
}
command -v rpm >/dev/null || apt_install rpm
command -v systemd-analyze >/dev/null || apt_install systemd
command -v setpriv >/dev/null || apt_install util-linux
cargo deb --version
cargo generate-rpm --version
rpm --version
systemd-analyze --version | head -n1

step "build the packages (packaging/build.sh)"
build_started=$SECONDS
packaging/build.sh "$out"
deb=$out/pdrelay_${deb_version}-1_$(dpkg --print-architecture).deb
rpmfile=$(ls "$out"/pdrelay-"$deb_version"-1.*.rpm)
[ -f "$deb" ] || fail "no $deb"
echo "built in $((SECONDS - build_started))s: $deb $rpmfile"
cargo build --release --locked --quiet --example receiver
receiver_bin=$target/release/examples/receiver

step "install the .deb"
before=$(snapshot)
installed=1
dpkg -i "$deb"
check "dpkg says pdrelay is installed" sh -c "dpkg-query -W -f='\${Status}' pdrelay | grep -qx 'install ok installed'"

step "files"
expect_stat /usr/bin/pdrelay "755 root root"
for f in pd-send pd-queue pd-nagios pd-zabbix pd-sensu; do
  expect_stat "/usr/bin/$f" "755 root root"
  check "/usr/bin/$f is packaging/bin/$f" cmp "/usr/bin/$f" "packaging/bin/$f"
done
for f in pd-nagios pd-zabbix pd-sensu; do
  check "pdagent-integrations' path /usr/share/pdagent-integrations/bin/$f leads to /usr/bin/$f" \
    test "$(readlink -f "/usr/share/pdagent-integrations/bin/$f")" = "/usr/bin/$f"
done
check "/usr/bin/pd-send runs /usr/bin/pdrelay (pd-send --help)" /usr/bin/pd-send --help
check "/lib/systemd/system/pdrelay.service is systemd/pdrelay.service" cmp /lib/systemd/system/pdrelay.service systemd/pdrelay.service
check "/etc/pdrelay/config.toml is config.example.toml" cmp /etc/pdrelay/config.toml config.example.toml
expect_stat /etc/pdrelay/config.toml "640 root pdrelay"
check "/etc/pdrelay/config.toml is a conffile" \
  sh -c "dpkg-query -W -f='\${Conffiles}' pdrelay | grep -q '^ /etc/pdrelay/config.toml [0-9a-f]\{32\}\$'"
check "/usr/share/pdrelay/nagios/pdrelay.cfg is packaging/nagios/pdrelay.cfg" cmp /usr/share/pdrelay/nagios/pdrelay.cfg packaging/nagios/pdrelay.cfg
check "/usr/share/pdrelay/icinga2/pdrelay.conf is packaging/icinga2/pdrelay.conf" cmp /usr/share/pdrelay/icinga2/pdrelay.conf packaging/icinga2/pdrelay.conf
check "/usr/share/doc/pdrelay/copyright" test -s /usr/share/doc/pdrelay/copyright
for f in /usr/share/man/man1/pdrelay.1.gz /usr/share/man/man1/pdrelay-send.1.gz /usr/share/man/man1/pdrelay-nagios.1.gz; do
  check "$f is gzipped and opens" gzip -t "$f"
done
check "bash completion /usr/share/bash-completion/completions/pdrelay parses" bash -n /usr/share/bash-completion/completions/pdrelay
# shellcheck disable=SC2016 # expanded by the inner bash
check "bash completion completes 'pdrelay che' to check-config" bash -c '
  . /usr/share/bash-completion/completions/pdrelay
  COMP_WORDS=(pdrelay che); COMP_CWORD=1; COMP_LINE="pdrelay che"; COMP_POINT=${#COMP_LINE}
  _pdrelay pdrelay che pdrelay; printf "%s\n" "${COMPREPLY[@]}" | grep -qx check-config'
check "zsh completion /usr/share/zsh/vendor-completions/_pdrelay" test -s /usr/share/zsh/vendor-completions/_pdrelay
if command -v zsh >/dev/null; then check "zsh completion parses" zsh -n /usr/share/zsh/vendor-completions/_pdrelay; fi
check "fish completion /usr/share/fish/vendor_completions.d/pdrelay.fish" test -s /usr/share/fish/vendor_completions.d/pdrelay.fish
if command -v fish >/dev/null; then check "fish completion parses" fish --no-execute /usr/share/fish/vendor_completions.d/pdrelay.fish; fi
if command -v man >/dev/null; then
  check "man -w pdrelay finds the installed page" sh -c 'man -w pdrelay | grep -q /usr/share/man/man1/pdrelay.1.gz'
  warnings=$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -l /usr/share/man/man1/pdrelay.1.gz 2>&1 >/dev/null || true)
  [ -z "$warnings" ] || fail "man page warnings: $warnings"
  ok "the man page renders without groff warnings"
else
  echo "skip man page rendering: man is not installed"
fi

step "user, group, directories, service state"
IFS=: read -r _ _ uid gid _ home shell < <(getent passwd pdrelay) || fail "no pdrelay user"
IFS=: read -r _ _ group_gid _ < <(getent group pdrelay) || fail "no pdrelay group"
[ "$uid" -lt 1000 ] || fail "pdrelay's uid $uid is not a system uid"
ok "pdrelay is a system user (uid $uid)"
if [ "$gid" != "$group_gid" ] || [ "$group_gid" -ge 1000 ]; then
  fail "pdrelay's primary gid is $gid; the pdrelay group's gid is $group_gid (want the same, under 1000)"
fi
ok "its primary group is the system group pdrelay (gid $gid)"
[ "$home" = /var/lib/pdrelay ] || fail "pdrelay's home is $home"
[ "$shell" = /usr/sbin/nologin ] || fail "pdrelay's shell is $shell"
ok "home /var/lib/pdrelay, shell /usr/sbin/nologin"
expect_stat /var/lib/pdrelay "750 pdrelay pdrelay"
expect_stat /var/spool/pdrelay "3770 pdrelay pdrelay"
check "pdrelay.service is enabled (systemctl is-enabled, offline)" sh -c 'systemctl is-enabled pdrelay.service | grep -qx enabled'
check "multi-user.target wants pdrelay.service" test -L /etc/systemd/system/multi-user.target.wants/pdrelay.service
[ -z "$(installed_daemons)" ] || fail "the package started /usr/bin/pdrelay: it must wait until configured"
ok "nothing was started"

step "check-config and systemd-analyze"
check "pdrelay --version" /usr/bin/pdrelay --version
check "pdrelay check-config (root, the installed config)" /usr/bin/pdrelay check-config
check "pdrelay check-config as the pdrelay user (it can read its config)" \
  setpriv --reuid=pdrelay --regid=pdrelay --init-groups /usr/bin/pdrelay check-config --config /etc/pdrelay/config.toml
# verify runs without systemd as PID 1 (it loads the unit in a test manager). It checks that
# ExecStart exists and, through man, that Documentation=man:pdrelay(1) resolves.
man_opt=()
command -v man >/dev/null || man_opt=(--man=no)
if verify=$(systemd-analyze verify "${man_opt[@]}" /lib/systemd/system/pdrelay.service 2>&1); then
  [ -z "$verify" ] || echo "$verify"
  ok "systemd-analyze verify /lib/systemd/system/pdrelay.service"
else
  echo "$verify" >&2
  fail "systemd-analyze verify /lib/systemd/system/pdrelay.service"
fi

step "run the installed daemon as the pdrelay user, deliver to a local receiver"
tmp=$(mktemp -d /tmp/pdrelay-pkg-check.XXXXXX)
chmod 755 "$tmp" # the pdrelay user and the producers read their configs in here
if [ -n "$use_run_dir" ]; then run=/run/pdrelay; else run=$tmp/run; fi

# start_receiver: the fake Events API on a free port; sets url. Appends to received.log.
start_receiver() {
  : >"$tmp/receiver.err"
  "$receiver_bin" 127.0.0.1:0 >>"$tmp/received.log" 2>"$tmp/receiver.err" &
  receiver_pid=$!
  wait_for 30 grep -q 'listening on http://' "$tmp/receiver.err" || fail "receiver did not start: $(cat "$tmp/receiver.err")"
  url=$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' "$tmp/receiver.err")
  ok "fake Events API at $url"
}
stop_receiver() {
  kill "$receiver_pid"
  wait "$receiver_pid" 2>/dev/null || true
  receiver_pid=""
}
# test_configs: the installed config with only events_url changed (and the socket paths, if
# /run/pdrelay was taken); state and spool stay the packaged ones, so the packaged ownership and
# modes are what is tested. spool.toml names a socket nobody answers on, so `send` falls back to
# a drop-file; public.toml is the same, readable by anyone.
test_configs() {
  local k
  for k in events_url socket admin_socket; do
    [ "$(grep -c "^$k = " /etc/pdrelay/config.toml)" = 1 ] || fail "expected one $k line in /etc/pdrelay/config.toml"
  done
  sed -e "s|^events_url = .*|events_url = \"$url\"|" \
    -e "s|^socket = \"/run/pdrelay/|socket = \"$run/|" -e "s|^admin_socket = \"/run/pdrelay/|admin_socket = \"$run/|" \
    /etc/pdrelay/config.toml >"$tmp/config.toml"
  grep -q "^socket = \"$run/pdrelay.sock\"" "$tmp/config.toml" || fail "the socket is not $run/pdrelay.sock in the test config"
  sed "s|^socket = .*|socket = \"$tmp/nobody-here.sock\"|" "$tmp/config.toml" >"$tmp/spool.toml"
  chown root:pdrelay "$tmp/config.toml" "$tmp/spool.toml"
  chmod 640 "$tmp/config.toml" "$tmp/spool.toml"
  install -m 644 "$tmp/spool.toml" "$tmp/public.toml"
}
# start_daemon: as the unit does: User=/Group=pdrelay, UMask=0007, NoNewPrivileges=, a clean
# environment, and the runtime directory as RuntimeDirectory=pdrelay with mode 0750 makes it.
start_daemon() {
  made_run_dir=$run
  install -d -o pdrelay -g pdrelay -m 0750 "$run"
  (
    umask 0007
    exec env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
      setpriv --reuid=pdrelay --regid=pdrelay --init-groups --no-new-privs \
      /usr/bin/pdrelay daemon --config "$tmp/config.toml"
  ) 2>>"$tmp/daemon.log" &
  daemon_pid=$!
  if ! wait_for 30 test -S "$run/pdrelay.sock"; then
    cat "$tmp/daemon.log" >&2
    fail "the daemon did not open $run/pdrelay.sock"
  fi
  kill -0 "$daemon_pid" || fail "the daemon exited: $(cat "$tmp/daemon.log")"
  ok "daemon running as $(ps -o user= -p "$(installed_daemons | head -n1)")"
}
# stop_daemon: SIGTERM, as systemctl stop; it must exit 0 and remove its socket.
stop_daemon() {
  local rc=0
  kill -TERM "$daemon_pid"
  wait "$daemon_pid" || rc=$?
  daemon_pid=""
  [ "$rc" = 0 ] || fail "the daemon exited $rc on SIGTERM: $(tail -n 20 "$tmp/daemon.log")"
  ok "SIGTERM: the daemon exited 0"
  check "the daemon removed its socket" test ! -e "$run/pdrelay.sock"
  rm -rf "$run" # as systemd removes the RuntimeDirectory= when the service stops
  made_run_dir=""
}
# delivered WHAT: waits for the event whose summary is "WHAT $mark" at the receiver.
delivered() {
  if ! wait_for 60 grep -q "$1 $mark" "$tmp/received.log"; then
    tail -n 30 "$tmp/daemon.log" >&2
    fail "the receiver did not get the '$1' event"
  fi
  ok "delivered: $1 ($(grep "$1 $mark" "$tmp/received.log" | cut -d' ' -f2))"
}

start_receiver
test_configs
start_daemon
expect_stat "$run/pdrelay.sock" "660 pdrelay pdrelay"
expect_stat "$run/admin.sock" "600 pdrelay pdrelay"
check "the queue (/var/lib/pdrelay/queue) belongs to pdrelay" test "$(stat -c %U:%G /var/lib/pdrelay/queue)" = pdrelay:pdrelay

mark=$$-$RANDOM
producer=(setpriv --reuid=65534 --regid=65534 "--groups=$gid" --)
outsider=(setpriv --reuid=65534 --regid=65534 --clear-groups --)

reply=$(/usr/bin/pdrelay send --config "$tmp/config.toml" -k "$key" -t trigger -d "root-socket $mark" --source pkg-check) ||
  fail "pdrelay send as root failed: $reply"
ok "root: pdrelay send over the socket: $reply"
reply=$("${producer[@]}" /usr/bin/pdrelay send --config "$tmp/config.toml" -k "$key" -t trigger -d "producer-socket $mark") ||
  fail "pdrelay send by a member of the pdrelay group failed: $reply"
ok "a producer (nobody, group pdrelay): pdrelay send over the socket: $reply"
reply=$("${producer[@]}" /usr/bin/pdrelay send --config "$tmp/spool.toml" -k "$key" -t trigger -d "producer-spool $mark" 2>&1) ||
  fail "a drop-file by a member of the pdrelay group failed: $reply"
ok "a producer: pdrelay send with no daemon answering wrote a drop-file: ${reply//$'\n'/; }"
if reply=$("${outsider[@]}" /usr/bin/pdrelay send --config "$tmp/public.toml" -k "$key" -t trigger -d "outsider $mark" 2>&1); then
  fail "a user outside the pdrelay group could drop a file into /var/spool/pdrelay: $reply"
fi
ok "a user outside the pdrelay group cannot drop files: $reply"
touch /var/spool/pdrelay/.pkg-check.tmp # a name the daemon never reads
check "a file made in the spool gets the pdrelay group (setgid)" test "$(stat -c %G /var/spool/pdrelay/.pkg-check.tmp)" = pdrelay
if "${producer[@]}" rm -f /var/spool/pdrelay/.pkg-check.tmp 2>/dev/null; then
  fail "a producer could delete another user's file in /var/spool/pdrelay (sticky bit missing)"
fi
ok "a producer cannot delete another user's file in the spool (sticky)"
rm -f /var/spool/pdrelay/.pkg-check.tmp

for what in root-socket producer-socket producer-spool; do delivered "$what"; done
if grep -q "outsider $mark" "$tmp/received.log"; then fail "the outsider's event arrived"; fi
check "pdrelay queue status (root, over the admin socket)" /usr/bin/pdrelay queue status --config "$tmp/config.toml"

step "upgrade with an event queued: the config, the queue and the enablement survive"
# The event is stored but cannot be delivered (receiver down), so it sits in /var/lib/pdrelay
# while the package is upgraded; a changed config must be kept as it is, without a prompt.
stop_receiver
reply=$(/usr/bin/pdrelay send --config "$tmp/config.toml" -k "$key" -t trigger -d "queued-over-upgrade $mark") ||
  fail "pdrelay send failed: $reply"
ok "stored while PagerDuty is unreachable: $reply"
stop_daemon
echo "# changed by the package check" >>/etc/pdrelay/config.toml
conf_sum=$(md5sum </etc/pdrelay/config.toml)
cargo deb --no-build --locked --quiet --fast --deb-version "${deb_version}-2" --output "$tmp/upgrade.deb"
dpkg -i "$tmp/upgrade.deb" </dev/null
check "dpkg says ${deb_version}-2 is installed" sh -c "dpkg-query -W -f='\${Version} \${Status}' pdrelay | grep -qx '${deb_version}-2 install ok installed'"
check "the changed /etc/pdrelay/config.toml was kept" test "$(md5sum </etc/pdrelay/config.toml)" = "$conf_sum"
check "no .dpkg-new/.dpkg-dist/.dpkg-old beside it" sh -c '! ls /etc/pdrelay/*.dpkg-* 2>/dev/null | grep -q .'
expect_stat /etc/pdrelay/config.toml "640 root pdrelay"
check "the pdrelay user kept its uid" test "$(id -u pdrelay)" = "$uid"
expect_stat /var/lib/pdrelay "750 pdrelay pdrelay"
expect_stat /var/spool/pdrelay "3770 pdrelay pdrelay"
check "pdrelay.service is still enabled" sh -c 'systemctl is-enabled pdrelay.service | grep -qx enabled'
postinst=/var/lib/dpkg/info/pdrelay.postinst
check "postinst restarts on upgrade only if running (deb-systemd-invoke try-restart)" grep -q 'deb-systemd-invoke try-restart pdrelay.service' "$postinst"
# shellcheck disable=SC2016 # a literal $_dh_action
if grep -v '^[[:space:]]*#' "$postinst" | grep -Eq 'deb-systemd-invoke (start|\$_dh_action)|systemctl (--system )?start'; then
  fail "postinst starts the service"
fi
ok "postinst never starts the service"
[ -z "$(installed_daemons)" ] || fail "the upgrade started /usr/bin/pdrelay"
ok "nothing was started"
start_receiver
test_configs
start_daemon
delivered queued-over-upgrade
stop_daemon
stop_receiver
rm -rf "$tmp"
tmp=""

step "dpkg -r"
dpkg -r pdrelay
check "dpkg says removed, config files kept" sh -c "dpkg-query -W -f='\${Status}' pdrelay | grep -qx 'deinstall ok config-files'"
for f in /usr/bin/pdrelay /usr/bin/pd-send /lib/systemd/system/pdrelay.service /usr/share/man/man1/pdrelay.1.gz; do
  check "$f is gone" test ! -e "$f"
done
check "/etc/pdrelay/config.toml is kept until purge" test -f /etc/pdrelay/config.toml
check "the pdrelay user is kept until purge" getent passwd pdrelay

step "dpkg -P"
dpkg -P pdrelay
installed=""
check "dpkg knows no pdrelay package" sh -c "! dpkg-query -W -f='\${db:Status-Abbrev}' pdrelay 2>/dev/null | grep -q '^[ic]'"
check "no pdrelay user" sh -c '! getent passwd pdrelay'
check "no pdrelay group" sh -c '! getent group pdrelay'
check "no pdrelay in /etc/passwd, /etc/group, /etc/shadow, /etc/gshadow" sh -c '! grep -qs "^pdrelay:" /etc/passwd /etc/group /etc/shadow /etc/gshadow'
for d in /etc/pdrelay /var/lib/pdrelay /var/spool/pdrelay /usr/share/pdrelay /usr/share/doc/pdrelay /usr/share/pdagent-integrations; do
  check "$d is gone" test ! -e "$d"
done
check "no enable symlink or mask left in /etc/systemd/system" sh -c '! find /etc/systemd/system -name "pdrelay*" | grep -q .'
check "no deb-systemd-helper state left" sh -c '! find /var/lib/systemd -name "*pdrelay*" 2>/dev/null | grep -q .'
after=$(snapshot)
if [ "$before" != "$after" ]; then
  diff <(echo "$before") <(echo "$after") >&2 || true
  fail "paths named pdrelay, pd-* or pdagent differ from before the install"
fi
ok "the file system has the same pdrelay/pd-*/pdagent paths as before the install"
left=$(find / -xdev \( -path /proc -o -path /sys -o -path /dev \) -prune -o \( -uid "$uid" -o -gid "$gid" \) -print 2>/dev/null | head -n 5)
[ -z "$left" ] || fail "files still owned by the old pdrelay uid $uid or gid $gid: $left"
ok "no file is owned by the old pdrelay uid $uid or gid $gid"

step "the .rpm"
rpm_files=$(rpm -qpl "$rpmfile" 2>/dev/null)
echo "$rpm_files"
for f in /usr/bin/pdrelay /usr/bin/pd-send /usr/bin/pd-queue /usr/bin/pd-nagios /usr/bin/pd-zabbix /usr/bin/pd-sensu \
  /usr/share/pdagent-integrations/bin/pd-nagios /usr/share/pdagent-integrations/bin/pd-zabbix /usr/share/pdagent-integrations/bin/pd-sensu \
  /usr/lib/systemd/system/pdrelay.service /usr/lib/systemd/system-preset/90-pdrelay.preset /etc/pdrelay/config.toml \
  /usr/share/pdrelay/nagios/pdrelay.cfg /usr/share/pdrelay/icinga2/pdrelay.conf \
  /usr/share/man/man1/pdrelay.1.gz /usr/share/man/man1/pdrelay-send.1.gz \
  /usr/share/bash-completion/completions/pdrelay /usr/share/zsh/site-functions/_pdrelay \
  /usr/share/fish/vendor_completions.d/pdrelay.fish /usr/share/doc/pdrelay/README.md; do
  grep -qx "$f" <<<"$rpm_files" || fail "the rpm lacks $f"
done
ok "the rpm has the binary, wrappers, unit, preset, config, examples, man pages and completions"
check "the rpm marks /etc/pdrelay/config.toml %config(noreplace)" \
  sh -c "rpm -qp --qf '[%{FILENAMES} %{FILEFLAGS:fflags}\n]' '$rpmfile' 2>/dev/null | grep -qx '/etc/pdrelay/config.toml cn'"
listing=$(rpm -qplv "$rpmfile" 2>/dev/null)
grep -q '^-rwxr-xr-x .* root *root .* /usr/bin/pdrelay$' <<<"$listing" || fail "rpm: /usr/bin/pdrelay is not 755 root:root"
grep -q '^-rw-r----- .* root *pdrelay .* /etc/pdrelay/config.toml$' <<<"$listing" || fail "rpm: config.toml is not 640 root:pdrelay"
ok "rpm modes: /usr/bin/pdrelay 755 root:root, config.toml 640 root:pdrelay"
scripts=$(rpm -qp --scripts "$rpmfile" 2>/dev/null)
grep -q 'useradd -r' <<<"$scripts" || fail "rpm %pre does not create the pdrelay user"
grep -q 'install -d -o pdrelay -g pdrelay -m 3770 /var/spool/pdrelay' <<<"$scripts" || fail "rpm %post does not make the spool directory"
grep -q 'systemctl --no-reload preset pdrelay.service' <<<"$scripts" || fail "rpm %post does not enable by preset"
grep -q 'systemctl try-restart pdrelay.service' <<<"$scripts" || fail "rpm %posttrans does not restart a running service"
ok "rpm scriptlets: user, directories, preset, try-restart"
check "the rpm conflicts with and provides pdagent and pdagent-integrations" sh -c "
  rpm -qp --conflicts '$rpmfile' 2>/dev/null | grep -qx pdagent &&
  rpm -qp --conflicts '$rpmfile' 2>/dev/null | grep -qx pdagent-integrations &&
  rpm -qp --provides '$rpmfile' 2>/dev/null | grep -qx pdagent"
