//! PagerDuty's own client libraries against the local endpoint, over plain HTTP and over the
//! loopback TLS listener (the README's recipe): pdpyras and `pagerduty` from PyPI,
//! `@pagerduty/pdjs` from npm. Trigger, acknowledge, resolve, a change event with images and
//! links, and the timestamps the libraries and PagerDuty's documentation write.
//!
//! The libraries come from `PDRELAY_CLIENTS_PYTHON` (a Python that imports pdpyras and
//! pagerduty; default `python3`) and `PDRELAY_CLIENTS_NODE_PATH` (a `node_modules` directory with
//! @pagerduty/pdjs). `.ci/run` installs them and sets PDRELAY_REQUIRE_CLIENTS=1, so there missing
//! libraries fail the test; elsewhere it is skipped with a message.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{json, Value};

use crate::fake_api::Received;
use crate::http::{http_addr, http_env, TEST_CERT, TEST_KEY};
use crate::support::*;

const WAIT: Duration = Duration::from_secs(60);

struct Clients {
    python: PathBuf,
    node_path: Option<PathBuf>,
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients").join(name)
}

/// The client libraries, or `None` (skip) when they are not installed and not required.
fn clients() -> Option<Clients> {
    let python = PathBuf::from(std::env::var_os("PDRELAY_CLIENTS_PYTHON").unwrap_or_else(|| "python3".into()));
    let node_path = std::env::var_os("PDRELAY_CLIENTS_NODE_PATH").map(PathBuf::from);
    let python_ok =
        Command::new(&python).args(["-c", "import pdpyras, pagerduty"]).output().is_ok_and(|o| o.status.success());
    let mut node = Command::new("node");
    node.args(["-e", "require('@pagerduty/pdjs')"]);
    if let Some(p) = &node_path {
        node.env("NODE_PATH", p);
    }
    let node_ok = node.output().is_ok_and(|o| o.status.success());
    if python_ok && node_ok {
        return Some(Clients { python, node_path });
    }
    let missing = format!(
        "PagerDuty's client libraries are not installed (python {}: pdpyras and pagerduty {}; node: @pagerduty/pdjs {}); \
         .ci/run shows how",
        python.display(),
        if python_ok { "found" } else { "missing" },
        if node_ok { "found" } else { "missing" }
    );
    assert!(std::env::var("PDRELAY_REQUIRE_CLIENTS").is_err(), "{missing}");
    eprintln!("SKIPPED: {missing}");
    None
}

fn succeeded(what: &str, out: Output) -> Value {
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{what}: exit {:?}\nstdout: {stdout}\nstderr: {stderr}", out.status.code());
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{what}: {e}: {stdout}"))
}

/// What pdrelay sends for a timestamp a client wrote.
fn normal(timestamp: &Value) -> String {
    pdrelay::event::normalize_timestamp(timestamp.as_str().unwrap(), "timestamp").unwrap()
}

fn images() -> Value {
    json!([{"src": "https://graphs.example/disk.png", "href": "https://graphs.example/disk", "alt": "disk"}])
}

fn links() -> Value {
    json!([{"href": "https://runbook.example/disk", "text": "runbook"}])
}

/// The trigger, acknowledge and resolve of `dedup`, in that order, the trigger with its images,
/// links and timestamp.
fn check_alert(got: &[Received], rk: &str, dedup: &str, timestamp: &str) {
    let events: Vec<&Value> =
        got.iter().filter(|r| r.path == "/v2/enqueue" && r.body["dedup_key"] == dedup).map(|r| &r.body).collect();
    let actions: Vec<&str> = events.iter().map(|e| e["event_action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["trigger", "acknowledge", "resolve"], "{dedup}");
    assert!(events.iter().all(|e| e["routing_key"] == rk));
    let trigger = events[0];
    assert_eq!(trigger["images"], images(), "{dedup}");
    assert_eq!(trigger["links"], links(), "{dedup}");
    assert_eq!(trigger["payload"]["timestamp"], timestamp, "{dedup}");
    assert_eq!(trigger["payload"]["severity"], "critical");
}

/// The change event with `summary`, with its images, links and timestamp.
fn check_change(got: &[Received], summary: &str, timestamp: &str) {
    let change = got
        .iter()
        .find(|r| r.path == "/v2/change/enqueue" && r.body["payload"]["summary"] == summary)
        .unwrap_or_else(|| panic!("no change event {summary:?}"));
    assert_eq!(change.body["images"], images(), "{summary}");
    assert_eq!(change.body["links"], links(), "{summary}");
    assert_eq!(change.body["payload"]["timestamp"], timestamp, "{summary}");
}

#[test]
fn pagerdutys_client_libraries_over_http_and_loopback_tls() {
    let Some(clients) = clients() else { return };
    let rk = routing_key(61);

    // Plain HTTP: pdpyras (the `pagerduty` package and pdjs refuse anything but https://).
    let env = http_env("");
    let _d = env.start();
    let addr = http_addr(&env);
    let out = Command::new(&clients.python)
        .arg(script("pagerduty_clients.py"))
        .args([&format!("http://{addr}"), &rk])
        .output()
        .unwrap();
    let py = succeeded("pdpyras over http", out);
    assert_eq!(py["pdpyras_trigger"], "pdpyras-http/disk");
    let made_up = py["pdpyras_trigger_without_key"].as_str().unwrap().to_owned();
    let got = env.fake.wait_accepted(5, WAIT);
    check_alert(&got, &rk, "pdpyras-http/disk", "2015-07-17T08:42:58.315Z");
    check_change(&got, "pdpyras-http change", &normal(&py["timestamps"]["pdpyras-http change"]));
    assert!(got.iter().any(|r| r.body["dedup_key"] == made_up.as_str()), "the key pdrelay answered is sent");
    assert_eq!(env.fake.accepted().len(), 5);

    // The loopback TLS listener, the README's recipe: a certificate for 127.0.0.1 that the
    // clients are told to trust.
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = (certs.path().join("local.pem"), certs.path().join("local.key"));
    std::fs::write(&cert, TEST_CERT).unwrap();
    std::fs::write(&key, TEST_KEY).unwrap();
    let env = http_env(&format!("tls_cert = \"{}\"\ntls_key = \"{}\"\n", cert.display(), key.display()));
    let _d = env.start();
    let addr = http_addr(&env);
    let out = Command::new(&clients.python)
        .arg(script("pagerduty_clients.py"))
        .args([&format!("https://{addr}"), &rk, "--https"])
        .env("REQUESTS_CA_BUNDLE", &cert)
        .env("SSL_CERT_FILE", &cert)
        .output()
        .unwrap();
    let py = succeeded("pdpyras and pagerduty over https", out);
    assert_eq!(py["pagerduty_trigger"], "pagerduty/disk");
    let mut node = Command::new("node");
    node.arg(script("pdjs_client.js")).args([&addr.to_string(), &rk]).env("NODE_EXTRA_CA_CERTS", &cert);
    if let Some(p) = &clients.node_path {
        node.env("NODE_PATH", p);
    }
    let js = succeeded("pdjs over https", node.output().unwrap());
    assert_eq!(
        js["trigger"]["data"],
        json!({"status": "success", "message": "Event processed", "dedup_key": "pdjs/disk"})
    );
    let got = env.fake.wait_accepted(13, WAIT);
    let ts = &py["timestamps"];
    check_alert(&got, &rk, "pdpyras-https/disk", "2015-07-17T08:42:58.315Z");
    check_alert(&got, &rk, "pagerduty/disk", &normal(&ts["pagerduty/disk"]));
    check_alert(&got, &rk, "pdjs/disk", &normal(&js["timestamp"]));
    check_change(&got, "pdpyras-https change", &normal(&ts["pdpyras-https change"]));
    check_change(&got, "pagerduty change", &normal(&ts["pagerduty change"]));
    check_change(&got, "pdjs change", &normal(&js["timestamp"]));
    assert_eq!(env.fake.accepted().len(), 13);
}

/// The contract test: schemathesis drives the local endpoint from PagerDuty's OpenAPI files
/// (`tests/clients/contract.py`): no 5xx, only documented status codes, response bodies that
/// match the schema; every field for which pdrelay refuses a request the schema allows is named
/// in the README's list of such refusals.
#[test]
fn the_local_endpoint_keeps_pagerdutys_openapi_contract() {
    let Some(clients) = clients() else { return };
    let has_schemathesis = Command::new(&clients.python)
        .args(["-c", "import schemathesis, yaml"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_schemathesis {
        let missing = format!("schemathesis is not installed for {}; .ci/run shows how", clients.python.display());
        assert!(std::env::var("PDRELAY_REQUIRE_CLIENTS").is_err(), "{missing}");
        eprintln!("SKIPPED: {missing}");
        return;
    }
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let listed = readme
        .split("Requests PagerDuty's schema allows that pdrelay refuses")
        .nth(1)
        .expect("README: the list of requests PagerDuty's schema allows that pdrelay refuses")
        .split("\n\n")
        .nth(1)
        .unwrap()
        .to_owned();
    let env = http_env("");
    let _d = env.start();
    let addr = http_addr(&env);
    let work = tempfile::tempdir().unwrap();
    let openapi = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/reference/pagerduty-openapi");
    let out = Command::new(&clients.python)
        .arg(script("contract.py"))
        .args([&format!("http://{addr}"), &routing_key(62)])
        .arg(&openapi)
        .arg(work.path())
        .output()
        .unwrap();
    let report = succeeded("schemathesis", out);
    for (pass, result) in report["passes"].as_object().unwrap() {
        assert_eq!(result["exit"], 0, "schemathesis {pass}:\n{}", result["tail"].as_str().unwrap_or_default());
    }
    let refused = report["refused"].as_object().unwrap();
    assert!(refused.contains_key("payload.summary"), "the positive pass reached the intake rules: {refused:?}");
    for (field, example) in refused {
        assert!(
            listed.contains(&format!("`{field}`")),
            "README must list `{field}` among the requests PagerDuty's schema allows that pdrelay refuses \
             (pdrelay answered: {example})"
        );
    }
}
