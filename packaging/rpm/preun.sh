# pdrelay %preun. $1: 0 on erase, 1 or more on an upgrade (then nothing here: %posttrans restarts
# the service if it was running). On erase: disable, and stop if systemd is running. The queue
# (/var/lib/pdrelay) and the spool directory stay, with the user and group.
if [ "$1" -eq 0 ] && command -v systemctl >/dev/null 2>&1; then
    systemctl --no-reload disable pdrelay.service >/dev/null 2>&1 || :
    if [ -d /run/systemd/system ]; then
        systemctl stop pdrelay.service >/dev/null 2>&1 || :
    fi
fi
exit 0
