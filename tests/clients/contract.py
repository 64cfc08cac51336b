"""A contract test of pdrelay's local Events API endpoint, driven by PagerDuty's OpenAPI files.

Usage: contract.py ORIGIN ROUTING_KEY OPENAPI_DIR WORK_DIR

For events-v2.openapi.json (under ORIGIN/v2) and events-v1.openapi.json (under
ORIGIN/generic/2010-04-15), schemathesis runs twice with a fixed seed and these checks: no 5xx,
only documented status codes and content types, response bodies that match the schema. The first
pass generates valid and invalid requests as they come; the second only requests the schema
allows, each with a valid routing key (contract_hooks.py), and every 400 pdrelay answers them
with is collected. Prints one JSON object: each pass's exit status, and, for each field pdrelay
refused a schema-valid request for (`links[].href`), one example error.
"""

import json
import os
import pathlib
import re
import subprocess
import sys

import yaml

origin, key, openapi, work = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3]), pathlib.Path(sys.argv[4])
here = pathlib.Path(__file__).resolve().parent
schemathesis = pathlib.Path(sys.executable).parent / "schemathesis"
checks = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
out = {"passes": {}, "refused": {}}
for name, base in [("events-v2", "/v2"), ("events-v1", "/generic/2010-04-15")]:
    for mode in ["all", "positive"]:
        reports = work / f"{name}-{mode}"
        env = dict(os.environ, PDRELAY_CONTRACT_KEY=key)
        if mode == "positive":
            env["SCHEMATHESIS_HOOKS"] = "contract_hooks"
            env["PYTHONPATH"] = str(here)
        run = subprocess.run(
            [str(schemathesis), "run", str(openapi / f"{name}.openapi.json"), "--url", origin + base,
             "--checks", checks, "--mode", mode, "--max-examples", "60", "--seed", "14",
             "--workers", "1", "--report", "vcr", "--report-dir", str(reports)],
            env=env, capture_output=True, text=True, timeout=900, cwd=work,
        )
        out["passes"][f"{name} {mode}"] = {"exit": run.returncode, "tail": run.stdout[-3000:] + run.stderr[-2000:]}
        if mode != "positive":
            continue
        for cassette in reports.glob("*.yaml"):
            for interaction in yaml.safe_load(cassette.read_text())["http_interactions"]:
                if interaction["response"]["status"]["code"] != "400":
                    continue
                if interaction.get("generation", {}).get("mode") != "positive":
                    continue
                body = json.loads(interaction["response"]["body"]["string"])
                for error in body.get("errors", []):
                    field = re.sub(r"\[\d+\]", "[]", error.split(": ", 1)[0])
                    out["refused"].setdefault(field, error)
print(json.dumps(out))
