//! The forwarder end to end: spool, socket and `send` in; the fake Events API out.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::{json, Value};

use crate::fake_api::Fault;
use crate::support::*;

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn drop_files_are_delivered_and_removed() {
    let env = TestEnv::new();
    let d = env.start();
    let rk = routing_key(1);
    env.drop_file("one.json", &trigger(&rk, "a", "disk full on web1"));
    env.drop_file("two.ndjson", &format!("{}\n\n{}\n", trigger(&rk, "b", "b1"), trigger(&rk, "c", "c1")));
    let got = env.fake.wait_accepted(3, WAIT);
    let keys: HashSet<&str> = got.iter().map(|r| r.body["dedup_key"].as_str().unwrap()).collect();
    assert_eq!(keys, HashSet::from(["a", "b", "c"]));
    assert!(got.iter().all(|r| r.path == "/v2/enqueue"));
    wait_until("spool files removed", WAIT, || env.spool_files().is_empty());
    drop(d);
}

#[test]
fn dotfiles_and_tmp_files_are_never_read() {
    let env = TestEnv::new();
    let _d = env.start();
    let rk = routing_key(1);
    std::fs::write(env.spool.join(".hidden.json"), trigger(&rk, "h", "hidden")).unwrap();
    std::fs::write(env.spool.join("partial.json.tmp"), trigger(&rk, "p", "partial")).unwrap();
    env.drop_file("real.json", &trigger(&rk, "r", "real"));
    env.fake.wait_accepted(1, WAIT);
    // Two more rescans (1 s each) pass with the other files untouched.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(env.fake.accepted().len(), 1);
    assert_eq!(env.spool_files(), vec![".hidden.json", "partial.json.tmp"]);
}

#[test]
fn invalid_drop_files_are_quarantined_with_a_reason() {
    let env = TestEnv::new();
    let _d = env.start();
    let rk = routing_key(1);
    env.drop_file("bad.json", "{not json");
    env.drop_file(
        "mixed.ndjson",
        &format!(
            "{}\n{{\"event_action\":\"trigger\",\"routing_key\":\"short\",\"payload\":{{\"summary\":\"x\"}}}}\n",
            trigger(&rk, "ok", "fine")
        ),
    );
    env.drop_file("empty.json", "");
    let rejected = env.spool.join("rejected");
    wait_until("three files quarantined", WAIT, || {
        ["bad.json", "mixed.ndjson", "empty.json"]
            .iter()
            .all(|n| rejected.join(n).exists() && rejected.join(format!("{n}.reason")).exists())
    });
    let reason = std::fs::read_to_string(rejected.join("mixed.ndjson.reason")).unwrap();
    assert_eq!(reason.trim(), "line 2: routing_key: must be 32 alphanumeric characters (an integration key)");
    assert_eq!(std::fs::read_to_string(rejected.join("bad.json")).unwrap(), "{not json");
    assert!(std::fs::read_to_string(rejected.join("bad.json.reason")).unwrap().starts_with("event: is not valid JSON"));
    // Nothing of the mixed file was sent: a file is all or nothing.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(env.fake.accepted().len(), 0);
    assert!(env.spool_files().is_empty());
}

#[test]
fn send_is_delivered_through_the_daemon() {
    let env = TestEnv::new();
    let d = env.start();
    let rk = routing_key(2);
    let out = env.send(&[
        "-k",
        &rk,
        "-t",
        "trigger",
        "-d",
        "CPU high on db1",
        "-f",
        "load=12.5",
        "--severity",
        "warning",
        "--source",
        "db1",
        "--link",
        "https://runbook/cpu=Runbook",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let dedup = stdout.trim().split("dedup_key=").nth(1).unwrap().to_owned();
    assert_eq!(dedup.len(), 32, "a trigger without a dedup key gets one: {stdout}");
    assert!(stdout.starts_with("id="));
    let got = env.fake.wait_accepted(1, WAIT);
    let b = &got[0].body;
    assert_eq!(b["dedup_key"], dedup.as_str());
    assert_eq!(b["payload"]["summary"], "CPU high on db1");
    assert_eq!(b["payload"]["severity"], "warning");
    assert_eq!(b["payload"]["custom_details"]["load"], "12.5");
    assert_eq!(b["links"][0], json!({"href": "https://runbook/cpu", "text": "Runbook"}));
    assert!(env.spool_files().is_empty(), "went through the socket, not the spool");
    // The resolve finds its trigger by the printed key.
    let out = env.send(&["-k", &rk, "-t", "resolve", "-i", &dedup]);
    assert!(out.status.success());
    let got = env.fake.wait_accepted(2, WAIT);
    assert_eq!(got[1].body["event_action"], "resolve");
    assert_eq!(got[1].body["dedup_key"], dedup.as_str());
    drop(d);
}

#[test]
fn send_without_a_daemon_spools_and_is_delivered_once_it_starts() {
    let env = TestEnv::new();
    let rk = routing_key(3);
    let out = env.send(&["-k", &rk, "-t", "trigger", "-d", "queued while down", "-i", "down-1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let id = stdout.split_whitespace().next().unwrap().trim_start_matches("id=").to_owned();
    assert_eq!(env.spool_files(), vec![format!("{id}.json")]);
    let _d = env.start();
    let got = env.fake.wait_accepted(1, WAIT);
    assert_eq!(got[0].body["dedup_key"], "down-1");
    wait_until("drop-file removed", WAIT, || env.spool_files().is_empty());
    let d = _d;
    d.terminate(Duration::from_secs(10));
    let store = open_store(&env.state);
    assert_eq!(
        store.get_by_id(&id).unwrap().expect("the printed id is the stored id").event.dedup_key(),
        Some("down-1")
    );
}

#[test]
fn invalid_send_exits_2_and_stores_nothing() {
    let env = TestEnv::new();
    let cases: &[(&[&str], &str)] = &[
        (&["-k", "short", "-t", "trigger", "-d", "x"], "routing_key: must be 32 alphanumeric"),
        (&["--api", "v1", "-k", "short", "-t", "trigger", "-d", "x"], "service_key: must be 32 alphanumeric"),
        (&["-k", &routing_key(1), "-t", "trigger"], "payload.summary: is required"),
        (&["-k", &routing_key(1), "-t", "resolve"], "dedup_key: is required for resolve"),
        (&["-k", &routing_key(1), "-t", "explode", "-d", "x"], "invalid value 'explode'"),
        (
            &["-k", &routing_key(1), "-t", "trigger", "-d", "x", "--timestamp", "noon"],
            "payload.timestamp: must be an ISO 8601",
        ),
        (&["-t", "trigger", "-d", "x"], "routing_key: is required"),
    ];
    for (args, want) in cases {
        let out = env.send(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
    assert!(env.spool_files().is_empty());
}

#[test]
fn v1_and_change_events_reach_their_endpoints() {
    let env = TestEnv::new();
    let _d = env.start();
    let rk = routing_key(4);
    assert!(env
        .send(&["--api", "v1", "-k", &rk, "-t", "trigger", "-d", "v1 trigger", "-i", "v1-key", "-f", "a=b"])
        .status
        .success());
    let change = env.send(&["--change", "-k", &rk, "-d", "deployed build 42", "--source", "ci"]);
    assert!(change.status.success());
    // A change event has no dedup key: `id=...` alone, not an empty `dedup_key=`.
    let printed = String::from_utf8_lossy(&change.stdout);
    assert!(printed.starts_with("id=") && !printed.contains("dedup_key"), "{printed}");
    let pdagent = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/reference/pdagent-queue-samples/test_30_encoding.pdq1.txt"))
        .unwrap_or_else(|_| r#"{"description":"\u00e9","details":{},"event_type":"acknowledge","incident_key":"server.fire","service_key":"DUMMY_SERVICE_KEY"}"#.to_owned())
        .replace("DUMMY_SERVICE_KEY", &rk);
    env.drop_file("pdagent.json", &pdagent);
    let got = env.fake.wait_accepted(3, WAIT);
    let by_path: HashMap<&str, &Value> = got.iter().map(|r| (r.path.as_str(), &r.body)).collect();
    let v1s: Vec<&Value> =
        got.iter().filter(|r| r.path == "/generic/2010-04-15/create_event.json").map(|r| &r.body).collect();
    assert_eq!(v1s.len(), 2);
    assert!(v1s
        .iter()
        .any(|b| b["incident_key"] == "v1-key" && b["details"]["a"] == "b" && b["service_key"] == rk.as_str()));
    assert!(v1s
        .iter()
        .any(|b| b["description"] == "é" && b["event_type"] == "acknowledge" && b.get("agent").is_none()));
    let change = by_path["/v2/change/enqueue"];
    assert_eq!(change["payload"]["summary"], "deployed build 42");
    assert!(change.get("event_action").is_none());
}

#[test]
fn retryable_answers_are_retried_until_delivered() {
    let env = TestEnv::new();
    let _d = env.start();
    let rk = routing_key(5);
    for fault in [
        Fault::Status(500),
        Fault::Status(502),
        Fault::Status(503),
        Fault::Status(408),
        Fault::TooMany(Some(0)),
        Fault::TooMany(None),
        Fault::Reset,
        Fault::Hang(Duration::from_secs(4)),
    ] {
        env.fake.push_fault(fault);
    }
    env.drop_file("r.json", &trigger(&rk, "retry-me", "retried"));
    let got = env.fake.wait_accepted(1, Duration::from_secs(60));
    assert_eq!(got[0].body["dedup_key"], "retry-me");
    assert_eq!(env.fake.requests(), 9, "8 faults then the delivery");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(env.fake.accepted().len(), 1, "no duplicate");
}

#[test]
fn v1_403_is_throttling_and_is_retried() {
    let env = TestEnv::new();
    let _d = env.start();
    let rk = routing_key(6);
    env.fake.push_fault(Fault::Status(403));
    assert!(env.send(&["--api", "v1", "-k", &rk, "-t", "trigger", "-d", "throttled"]).status.success());
    env.fake.wait_accepted(1, WAIT);
    assert_eq!(env.fake.requests(), 2);
}

#[test]
fn a_429_pauses_only_its_routing_key() {
    let env = TestEnv::new();
    let _d = env.start();
    let (slow, fast) = (routing_key(7), routing_key(8));
    env.fake.push_fault_for(&slow, Fault::TooMany(Some(2)));
    env.drop_file("slow.json", &trigger(&slow, "s1", "slow"));
    wait_until("the 429 was answered", WAIT, || env.fake.requests() >= 1);
    let answered = std::time::Instant::now();
    env.drop_file("slow2.json", &trigger(&slow, "s2", "slow, other dedup key"));
    for i in 0..5 {
        env.drop_file(&format!("fast{i}.json"), &trigger(&fast, &format!("f{i}"), "fast"));
    }
    let got = env.fake.wait_accepted(7, WAIT);
    let first_slow = got.iter().position(|r| r.body["routing_key"] == slow.as_str()).unwrap();
    let fast_done = got.iter().filter(|r| r.body["routing_key"] == fast.as_str()).count();
    assert_eq!(fast_done, 5);
    assert!(got[..first_slow].iter().all(|r| r.body["routing_key"] == fast.as_str()));
    assert!(first_slow >= 5, "the other routing key went first while the slow one was paused: {first_slow}");
    // From when the test saw the 429 (a little after it was answered), not from the first fast
    // event, which a loaded machine may deliver late.
    let paused_for = got[first_slow].at.duration_since(answered);
    assert!(paused_for >= Duration::from_millis(1500), "Retry-After honoured: {paused_for:?}");
}

#[test]
fn a_paused_routing_key_does_not_starve_others_in_a_small_dispatch_window() {
    // A window of 5 and 20 events of a routing key paused for an hour: the paused key's events
    // must leave the window, or the other key's events behind them are never loaded.
    let env = TestEnv::with_config("[queue]\ndispatch_window = 5\n[retry]\nmax_retry_after = \"1h\"\n");
    let (paused, other) = (routing_key(12), routing_key(13));
    for _ in 0..20 {
        env.fake.push_fault_for(&paused, Fault::TooMany(Some(3600)));
    }
    let _d = env.start();
    // One file is stored in one commit, so the window fills with the paused key's first events
    // before its first 429 comes back.
    let mut lines: Vec<String> = (0..20).map(|i| trigger(&paused, &format!("p{i}"), "paused for an hour")).collect();
    lines.extend((0..10).map(|i| trigger(&other, &format!("o{i}"), "not paused")));
    env.drop_file("backlog.ndjson", &lines.join("\n"));
    let got = env.fake.wait_accepted(10, WAIT);
    assert!(got.iter().all(|r| r.body["routing_key"] == other.as_str()), "only the other key is delivered");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(env.fake.accepted().len(), 10);
    // Each request of the paused key was a 429; at most the window's first events were tried,
    // each once, and none again during the pause.
    let paused_requests = env.fake.requests() - 10;
    assert!((1..=5).contains(&paused_requests), "requests for the paused key: {paused_requests}");
}

#[test]
fn a_dispatch_window_of_3_keeps_order_per_dedup_key() {
    let env = TestEnv::with_config("[queue]\ndispatch_window = 3\n");
    for _ in 0..3 {
        env.fake.push_fault(Fault::Status(503));
    }
    let _d = env.start();
    let rk = routing_key(14);
    let mut c = env.connect();
    let mut sent: HashMap<String, Vec<u64>> = HashMap::new();
    for n in 0..30u64 {
        // An uneven mix, so that a line often holds several loaded events.
        let key = format!("key-{}", (n * n + n / 4) % 3);
        let line = json!({"routing_key": rk, "event_action": "trigger", "dedup_key": key,
            "payload": {"summary": format!("step {n}"), "source": "h", "severity": "info", "custom_details": {"n": n}}});
        c.send_line(&line.to_string());
        sent.entry(key).or_default().push(n);
    }
    for _ in 0..30 {
        assert_eq!(c.read_reply()["ok"], true);
    }
    assert_eq!(sent.len(), 3);
    let got = env.fake.wait_accepted(30, Duration::from_secs(60));
    let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
    for r in &got {
        seen.entry(r.body["dedup_key"].as_str().unwrap().to_owned())
            .or_default()
            .push(r.body["payload"]["custom_details"]["n"].as_u64().unwrap());
    }
    assert_eq!(seen, sent, "every event once, in the order enqueued per dedup key");
}

#[test]
fn a_400_moves_the_event_to_failed_with_pagerdutys_errors() {
    let env = TestEnv::new();
    let d = env.start();
    let rk = routing_key(9);
    env.fake.push_fault(Fault::Status(400));
    let mut c = env.connect();
    c.send_line(&trigger(&rk, "refused", "will be refused"));
    let reply = c.read_reply();
    assert_eq!(reply["ok"], true);
    let id = reply["id"].as_str().unwrap().to_owned();
    // The next event only once the first has met the 400, so the fault cannot fall on it.
    wait_until("the first event refused", WAIT, || env.queue_json(&["show", &id])["state"] == "failed");
    c.send_line(&trigger(&rk, "next", "goes through"));
    assert_eq!(c.read_reply()["ok"], true);
    env.fake.wait_accepted(1, WAIT);
    d.terminate(Duration::from_secs(10));
    let store = open_store(&env.state);
    let record = store.get_by_id(&id).unwrap().unwrap();
    assert_eq!(record.state, pdrelay::queue::State::Failed);
    assert_eq!(record.last_status, Some(400));
    assert_eq!(record.errors, vec!["injected".to_owned()]);
    assert_eq!(store.pending_count(), 0);
}

#[test]
fn per_key_order_is_kept_under_injected_failures() {
    let env = TestEnv::new();
    env.fake.chaos(0.3, 7);
    let _d = env.start();
    let keys = 8;
    let per_key = 15;
    let mut c = env.connect();
    for n in 0..per_key {
        for k in 0..keys {
            let line = json!({"routing_key": routing_key(k % 3), "event_action": "trigger", "dedup_key": format!("key-{k}"),
                "payload": {"summary": format!("step {n}"), "source": "h", "severity": "info", "custom_details": {"n": n}}});
            c.send_line(&line.to_string());
        }
    }
    for _ in 0..keys * per_key {
        assert_eq!(c.read_reply()["ok"], true);
    }
    let got = env.fake.wait_accepted((keys * per_key) as usize, Duration::from_secs(120));
    let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
    for r in &got {
        seen.entry(r.body["dedup_key"].as_str().unwrap().to_owned())
            .or_default()
            .push(r.body["payload"]["custom_details"]["n"].as_u64().unwrap());
    }
    for (key, ns) in seen {
        assert_eq!(ns, (0..per_key as u64).collect::<Vec<_>>(), "order of {key}");
    }
    assert!(env.fake.requests() > got.len() as u64, "faults were injected");
}

#[test]
fn kill_9_with_thousands_pending_loses_nothing() {
    let env = TestEnv::new();
    env.fake.set_down(true);
    let d = env.start();
    let total = 3000;
    let mut c = env.connect();
    let rk = routing_key(10);
    for n in 0..total {
        c.send_line(
            &json!({"routing_key": rk, "event_action": "trigger", "dedup_key": format!("k{}", n % 200),
            "payload": {"summary": "x", "source": "h", "severity": "info", "custom_details": {"n": n}}})
            .to_string(),
        );
    }
    for _ in 0..total {
        assert_eq!(c.read_reply()["ok"], true);
    }
    // Let deliveries start, then let half through and kill the daemon mid-drain.
    env.fake.set_down(false);
    wait_until("some delivered", WAIT, || env.fake.accepted().len() >= 300);
    d.kill9();
    let before = env.fake.accepted().len();
    let _d = env.start();
    let distinct = || -> HashSet<u64> {
        env.fake.accepted().iter().map(|r| r.body["payload"]["custom_details"]["n"].as_u64().unwrap()).collect()
    };
    // Duplicates count toward the fake's total, so wait for every distinct event, then for the
    // queue to be empty, before counting duplicates.
    wait_until("every acknowledged event delivered", Duration::from_secs(120), || distinct().len() == total);
    assert_eq!(distinct(), (0..total as u64).collect::<HashSet<u64>>());
    wait_until("queue drained", WAIT, || {
        let s = env.queue_json(&["status"]);
        s["total"]["pending"] == 0 && s["total"]["waiting"] == 0
    });
    let duplicates = env.fake.accepted().len() - total;
    eprintln!("kill -9 after {before} deliveries: {duplicates} duplicates (bounded by concurrency)");
    assert!(duplicates <= 8, "duplicates bounded by the in-flight deliveries: {duplicates}");
}

#[test]
fn sigterm_stops_within_the_bound_and_removes_the_socket() {
    let env = TestEnv::new();
    env.fake.push_fault(Fault::Hang(Duration::from_secs(60)));
    let d = env.start();
    env.drop_file("hang.json", &trigger(&routing_key(11), "h", "hangs"));
    wait_until("delivery in flight", WAIT, || env.fake.requests() >= 1);
    let (code, took, log) = d.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{log}");
    assert!(took < Duration::from_secs(6), "shutdown_timeout is 3s: {took:?}");
    assert!(!env.socket.exists());
    let store = open_store(&env.state);
    assert_eq!(store.pending_count(), 1, "the cut-off delivery stays queued");
}

#[test]
fn a_second_daemon_on_the_same_state_refuses_to_start() {
    let env = TestEnv::new();
    let _d = env.start();
    let out = env.command().arg("daemon").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("in use by another process"), "{stderr}");
    assert!(env.socket.exists(), "the running daemon's socket is left alone");
}

#[test]
fn check_config_reports_every_problem() {
    let env = TestEnv::new();
    let ok = env.command().arg("check-config").output().unwrap();
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stderr));
    let bad = env.dir.path().join("bad.toml");
    std::fs::write(&bad, "[pagerduty]\nconcurrency = 0\ndefault_routing_key = \"x\"\n").unwrap();
    let out = env.command().args(["check-config", "--config"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pagerduty.concurrency") && stderr.contains("pagerduty.default_routing_key"), "{stderr}");
    std::fs::write(&bad, "[ingest]\nspool = \"/x\"\n").unwrap();
    let out = env.command().args(["check-config", "--config"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field `spool`"));
}

#[test]
fn a_config_from_the_environment_is_not_shown_as_required_in_usage() {
    let env = TestEnv::new();
    let out = std::process::Command::new(BIN).arg("nagios").env("PDRELAY_CONFIG", &env.config).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Usage: pdrelay nagios") && !err.contains("--config"), "{err}");
    // ...and it is still the config used.
    std::fs::write(&env.config, "bogus = 1\n").unwrap();
    let out = std::process::Command::new(BIN).arg("check-config").env("PDRELAY_CONFIG", &env.config).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}
