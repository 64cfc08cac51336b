# pdrelay %postun. $1: 0 on erase, 1 or more on an upgrade.
# systemd forgets a removed unit (or reloads a changed one). On erase, the package's own
# directories go when empty (this package does not own them in its file list, so RPM leaves them);
# /etc/pdrelay, the queue, the spool directory and the user stay.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -eq 0 ]; then
    rmdir /usr/share/pdrelay/nagios /usr/share/pdrelay/icinga2 /usr/share/pdrelay \
        /usr/share/pdagent-integrations/bin /usr/share/pdagent-integrations \
        /usr/share/doc/pdrelay 2>/dev/null || :
fi
exit 0
