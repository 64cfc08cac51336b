# pdrelay %pre: the pdrelay system user and group, before /etc/pdrelay/config.toml (group
# pdrelay) is laid down and %post makes the state and spool directories. Kept on erase,
# as RPM packages do (a uid reused by another account would inherit leftover files).
getent group pdrelay >/dev/null || groupadd -r pdrelay
getent passwd pdrelay >/dev/null || \
    useradd -r -g pdrelay -d /var/lib/pdrelay -M -s /sbin/nologin -c "pdrelay daemon" pdrelay
exit 0
