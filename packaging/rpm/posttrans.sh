# pdrelay %posttrans, once the new files are in place: restart the service if it was running
# (try-restart leaves a stopped service stopped, so a first install is not started). Queued
# events are in /var/lib/pdrelay and survive the restart.
if [ -d /run/systemd/system ]; then
    systemctl try-restart pdrelay.service >/dev/null 2>&1 || :
fi
exit 0
