"""PagerDuty's Python client libraries against pdrelay's local Events API endpoint.

Usage: pagerduty_clients.py BASE_URL ROUTING_KEY [--https]

pdpyras (plain HTTP or HTTPS) and, with --https, the `pagerduty` package (which only speaks
HTTPS): a trigger with images, links, custom details and a timestamp, its acknowledge and resolve,
and a change event with images and links, each with a timestamp in a form the library or
PagerDuty's documentation uses. Prints one JSON object: what each call returned and the
timestamps sent. A failed call raises, so the exit status is not 0.
"""

import datetime
import json
import sys

import pagerduty
import pdpyras

base, key = sys.argv[1], sys.argv[2]
https = "--https" in sys.argv[3:]
images = [{"src": "https://graphs.example/disk.png", "href": "https://graphs.example/disk", "alt": "disk"}]
links = [{"href": "https://runbook.example/disk", "text": "runbook"}]
out = {"timestamps": {}}
prefix = "https" if https else "http"

# pdpyras: PagerDuty's own example timestamp (+0000), then the library's own change timestamp.
events = pdpyras.EventsAPISession(key)
events.url = base
dedup = f"pdpyras-{prefix}/disk"
stamp = "2015-07-17T08:42:58.315+0000"
out["timestamps"][dedup] = stamp
out["pdpyras_trigger"] = events.trigger(
    "Disk full on web1", "web1", dedup_key=dedup, severity="critical",
    payload={"timestamp": stamp, "component": "disk"}, custom_details={"free": "1%"},
    images=images, links=links)
out["pdpyras_acknowledge"] = events.acknowledge(dedup)
out["pdpyras_resolve"] = events.resolve(dedup)
out["pdpyras_trigger_without_key"] = events.trigger("Load high on web1", "web1")
changes = pdpyras.ChangeEventsAPISession(key)
changes.url = base
stamp = changes.event_timestamp
out["timestamps"][f"pdpyras-{prefix} change"] = stamp
changes.send_change_event(
    routing_key=key,
    payload={"summary": f"pdpyras-{prefix} change", "source": "ci", "timestamp": stamp,
             "custom_details": {"build": 42}},
    links=links, images=images)

if https:
    # pagerduty: Python's %z timestamp (+0000) and isoformat (+00:00).
    client = pagerduty.EventsApiV2Client(key, base_url=base)
    now = datetime.datetime.now(datetime.timezone.utc)
    dedup = "pagerduty/disk"
    stamp = now.strftime("%Y-%m-%dT%H:%M:%S.%f%z")
    out["timestamps"][dedup] = stamp
    out["pagerduty_trigger"] = client.trigger(
        "Disk full on web2", "web2", dedup_key=dedup, payload={"timestamp": stamp},
        custom_details={"free": "2%"}, images=images, links=links)
    out["pagerduty_acknowledge"] = client.acknowledge(dedup)
    out["pagerduty_resolve"] = client.resolve(dedup)
    stamp = now.isoformat()
    out["timestamps"]["pagerduty change"] = stamp
    client.send_change_event(
        payload={"summary": "pagerduty change", "source": "ci", "timestamp": stamp}, links=links, images=images)

print(json.dumps(out))
