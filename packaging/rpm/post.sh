# pdrelay %post. $1: 1 on a first install, 2 or more on an upgrade.
#
# The state directory (the queue) is the daemon's alone; the spool directory is 3770: setgid, so
# dropped files get the pdrelay group and the daemon can read them; sticky, so a producer cannot
# delete or replace another's file; rwx for the pdrelay group (producers such as nagios join it),
# nothing for others. Made when missing; an admin's later changes are kept.
[ -d /var/lib/pdrelay ] || install -d -o pdrelay -g pdrelay -m 0750 /var/lib/pdrelay
[ -d /var/spool/pdrelay ] || install -d -o pdrelay -g pdrelay -m 3770 /var/spool/pdrelay

# A first install enables pdrelay.service as the presets say (the package's
# /usr/lib/systemd/system-preset/90-pdrelay.preset enables it; an admin preset saying
# "disable pdrelay.service" wins) and does not start it: configure /etc/pdrelay/config.toml,
# then `systemctl start pdrelay`. Without systemd running, only the enable symlink is made.
if [ "$1" -eq 1 ] && command -v systemctl >/dev/null 2>&1; then
    systemctl --no-reload preset pdrelay.service >/dev/null 2>&1 || :
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
exit 0
