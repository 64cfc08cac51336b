"""Schemathesis hooks for contract.py's second pass: every generated event gets a valid routing
key (service key for v1), so that the requests reach pdrelay's other intake rules."""

import os

import schemathesis

KEY = os.environ["PDRELAY_CONTRACT_KEY"]


@schemathesis.hook
def map_body(ctx, body):
    if isinstance(body, dict):
        body["service_key" if "create_event" in ctx.operation.path else "routing_key"] = KEY
    return body
