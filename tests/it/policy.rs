//! Paging policy on the host: routes (`[[routes]]`, `pdrelay route test`) and flap damping
//! (`[flap_damping]`), through the binary against fake Events APIs.

use std::time::Duration;

use serde_json::{json, Value};

use crate::fake_api::FakeApi;
use crate::support::*;

const WAIT: Duration = Duration::from_secs(60);

fn resolve(rk: &str, dedup: &str) -> String {
    json!({"routing_key": rk, "event_action": "resolve", "dedup_key": dedup}).to_string()
}

fn trigger_from(rk: &str, dedup: &str, source: &str) -> String {
    json!({"routing_key": rk, "event_action": "trigger", "dedup_key": dedup,
        "payload": {"summary": format!("{dedup} down"), "source": source, "severity": "warning"}})
    .to_string()
}

fn send_lines(env: &TestEnv, lines: &[String]) {
    let mut c = env.connect();
    for line in lines {
        c.send_line(line);
        let reply = c.read_reply();
        assert_eq!(reply["ok"], true, "{line}: {reply}");
    }
}

/// Rewrites the test config, keeping everything up to the first `[[routes]]` or `[flap_damping]`
/// table and appending `tail`.
fn replace_policy(env: &TestEnv, tail: &str) {
    let text = std::fs::read_to_string(&env.config).unwrap();
    let mut doc: toml::Table = toml::from_str(&text).unwrap();
    doc.remove("routes");
    let more: toml::Table = toml::from_str(tail).unwrap();
    doc.extend(more);
    std::fs::write(&env.config, toml::to_string(&doc).unwrap()).unwrap();
}

fn records(env: &TestEnv) -> Vec<Value> {
    env.queue_json(&["list", "--limit", "1000"]).as_array().cloned().unwrap_or_default()
}

#[test]
fn a_route_by_source_sends_to_another_key_and_url_and_the_resolve_follows_after_the_rules_change() {
    let eu = FakeApi::start();
    let (producer, eu_key, other) = (routing_key(171), routing_key(172), routing_key(173));
    let metrics = tempfile::Builder::new().prefix("pdrelay-it-metrics").tempdir_in("/tmp").unwrap();
    let textfile = metrics.path().join("pdrelay.prom");
    let env = TestEnv::with_config(&format!(
        r#"[metrics]
textfile = "{textfile}"
textfile_interval = "1s"
[[routes]]
name = "eu-web"
match = {{ source = "glob:web*", intake = "socket" }}
routing_key = "{eu_key}"
events_url = "{eu_url}"
severity = "critical"
[[routes]]
name = "quiet-lab"
match = {{ source = "re:lab[0-9]+" }}
drop = true
"#,
        eu_url = eu.url(),
        textfile = textfile.display()
    ));
    let daemon = env.start();
    send_lines(
        &env,
        &[
            trigger_from(&producer, "web-disk", "web1"),
            trigger_from(&producer, "lab-disk", "lab7"),
            trigger_from(&producer, "db-disk", "db1"),
        ],
    );
    let sent = eu.wait_accepted(1, WAIT);
    assert_eq!(sent[0].body["routing_key"], eu_key.as_str());
    assert_eq!(sent[0].body["payload"]["severity"], "critical");
    assert_eq!(sent[0].body["dedup_key"], "web-disk");
    let us = env.fake.wait_accepted(1, WAIT);
    assert_eq!(
        (us[0].body["dedup_key"].as_str(), us[0].body["routing_key"].as_str()),
        (Some("db-disk"), Some(producer.as_str()))
    );
    let list = records(&env);
    let lab = list.iter().find(|r| r["dedup_key"] == "lab-disk").expect("the dropped event is listed");
    assert_eq!(lab["state"], "superseded", "{lab}");
    assert!(lab["last_error"].as_str().unwrap().contains("dropped by route \"quiet-lab\""), "{lab}");
    assert_eq!(lab["route"], "quiet-lab");
    wait_until("policy metrics", WAIT, || {
        let text = std::fs::read_to_string(&textfile).unwrap_or_default();
        text.contains("pdrelay_policy_events_total{action=\"routed\",name=\"eu-web\"} 1")
            && text.contains("pdrelay_policy_events_total{action=\"dropped\",name=\"quiet-lab\"} 1")
    });
    let (code, _, log) = daemon.terminate(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{log}");

    // The rules change: the producer's key now goes to a third key on the default URL. The open
    // alert's resolve still goes where its trigger went; a new alert takes the new rule.
    replace_policy(
        &env,
        &format!(
            "[[routes]]\nname = \"all-other\"\nmatch = {{ routing_key = \"{producer}\" }}\nrouting_key = \"{other}\"\n"
        ),
    );
    let _daemon = env.start();
    send_lines(&env, &[resolve(&producer, "web-disk"), trigger_from(&producer, "web-cpu", "web1")]);
    let sent = eu.wait_accepted(2, WAIT);
    assert_eq!(sent[1].body["event_action"], "resolve");
    assert_eq!(sent[1].body["routing_key"], eu_key.as_str(), "the resolve follows its trigger's key and URL");
    let us = env.fake.wait_accepted(2, WAIT);
    assert_eq!(
        (us[1].body["dedup_key"].as_str(), us[1].body["routing_key"].as_str()),
        (Some("web-cpu"), Some(other.as_str()))
    );
    assert_eq!(eu.accepted().len(), 2);
}

#[test]
fn route_test_shows_the_route_taken_and_the_event_as_it_would_be_sent() {
    let eu_key = routing_key(174);
    let env = TestEnv::with_config(&format!(
        "[[routes]]\nname = \"eu\"\nmatch = {{ \"custom_details.region\" = \"eu\" }}\nrouting_key = \"{eu_key}\"\n\
         events_url = \"https://events.eu.pagerduty.com\"\n[[routes]]\nname = \"nagios-drop\"\nmatch = {{ producer = \"nagios\" }}\ndrop = true\n"
    ));
    let event = json!({"routing_key": routing_key(175), "event_action": "trigger", "dedup_key": "d",
        "payload": {"summary": "disk \u{1b}[31m full", "source": "h", "severity": "info", "custom_details": {"region": "eu"}}});
    let path = env.dir.path().join("event.json");
    std::fs::write(&path, event.to_string()).unwrap();
    let out = env.command().args(["route", "test"]).arg(&path).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "route: eu (routes[1])");
    assert_eq!(lines[1], format!("routing_key: {}…", &eu_key[..6]));
    assert_eq!(lines[2], "url: https://events.eu.pagerduty.com/v2/enqueue");
    assert!(lines[3].starts_with("body: {") && lines[3].contains("\"dedup_key\":\"d\""), "{stdout}");
    assert!(!stdout.contains(&eu_key) && !stdout.contains('\u{1b}'), "keys redacted, controls escaped: {stdout}");
    let out = env
        .command()
        .args(["route", "test", "--intake", "nagios", "-"])
        .stdin(std::fs::File::open(&path).unwrap())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            "route: eu (routes[1])",
            &format!("routing_key: {}…", &eu_key[..6]),
            "url: https://events.eu.pagerduty.com/v2/enqueue",
            stdout.lines().nth(3).unwrap()
        ]
    );
    let plain =
        json!({"routing_key": routing_key(175), "event_action": "resolve", "dedup_key": "d", "client": "Nagios"});
    std::fs::write(&path, plain.to_string()).unwrap();
    let out = env.command().args(["route", "test"]).arg(&path).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "route: nagios-drop (routes[2])\naction: drop (kept as superseded, not sent)\n"
    );
}

#[test]
fn check_config_refuses_unreachable_routes_bad_patterns_and_bad_durations_one_line_each() {
    let env = TestEnv::with_config(&format!(
        "[flap_damping]\nresolve_hold = \"2d\"\n\
         [[routes]]\nmatch = {{ intake = \"nagios\" }}\nrouting_key = \"{k}\"\n\
         [[routes]]\nmatch = {{ intake = \"nagios\", source = \"glob:web*\" }}\nrouting_key = \"{k}\"\n\
         [[routes]]\nmatch = {{ source = \"re:web(\" }}\ndrop = true\n\
         [[routes]]\nmatch = {{ colour = \"red\" }}\nevents_url = \"ftp://x\"\n",
        k = routing_key(176)
    ));
    let out = env.command().arg("check-config").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 5, "{stderr}");
    assert!(
        lines[0]
            .starts_with("pdrelay: config: routes[2]: unreachable: every event it matches is taken first by routes[1]"),
        "{stderr}"
    );
    assert!(lines[1].starts_with("pdrelay: config: routes[3].match.source: is not a valid pattern"), "{stderr}");
    assert!(lines[2].starts_with("pdrelay: config: routes[4].match.colour: is not a field to match"), "{stderr}");
    assert!(
        lines[3].starts_with("pdrelay: config: routes[4].events_url: must be an http or https base URL"),
        "{stderr}"
    );
    assert_eq!(lines[4], "pdrelay: config: flap_damping.resolve_hold: must be at most 24h (0 turns it off)");
    let bad_duration = TestEnv::with_config("[flap_damping]\nresolve_hold = \"soon\"\n");
    let out = bad_duration.command().arg("check-config").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!((out.status.code(), stderr.lines().count()), (Some(2), 1), "{stderr}");
    assert!(stderr.contains("resolve_hold"), "{stderr}");
}

#[test]
fn a_flapping_key_within_the_damping_time_opens_one_incident_that_resolves_once_it_settles() {
    let env = TestEnv::with_config("[flap_damping]\nresolve_hold = \"2s\"\n");
    let _daemon = env.start();
    let rk = routing_key(177);
    send_lines(&env, &[trigger_from(&rk, "svc", "web1")]);
    env.fake.wait_accepted(1, WAIT);
    // OK/OK/CRITICAL/OK/CRITICAL/OK within the hold: the resolves are held (a repeated one
    // replaces the earlier), each new trigger cancels the held resolve and itself, the last
    // resolve goes once it has settled.
    send_lines(
        &env,
        &[
            resolve(&rk, "svc"),
            resolve(&rk, "svc"),
            trigger_from(&rk, "svc", "web1"),
            resolve(&rk, "svc"),
            trigger_from(&rk, "svc", "web1"),
            resolve(&rk, "svc"),
        ],
    );
    let sent = env.fake.wait_accepted(2, WAIT);
    let actions: Vec<&str> = sent.iter().map(|r| r.body["event_action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["trigger", "resolve"]);
    wait_until("nothing pending", WAIT, || {
        records(&env).iter().all(|r| r["state"] != "pending" && r["state"] != "waiting")
    });
    let list = records(&env);
    let cancelled: Vec<&Value> = list.iter().filter(|r| r["state"] == "superseded").collect();
    assert_eq!(cancelled.len(), 5, "{list:?}");
    assert!(cancelled.iter().any(|r| r["last_error"].as_str().unwrap().contains("within the flap damping hold")));
    assert_eq!(env.fake.accepted().len(), 2);
}

fn silence_cmd(env: &TestEnv, args: &[&str]) -> Value {
    let out = env.command().arg("silence").args(args).arg("--json").output().unwrap();
    assert!(out.status.success(), "silence {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["result"].clone()
}

fn by_dedup<'a>(list: &'a [Value], dedup: &str, action: &str) -> &'a Value {
    list.iter()
        .find(|r| r["dedup_key"] == dedup && r["action"] == action)
        .unwrap_or_else(|| panic!("{dedup} {action} in {list:?}"))
}

#[test]
fn a_silence_holds_triggers_and_at_its_end_sends_the_still_open_ones_not_those_resolved_meanwhile() {
    let env = TestEnv::new();
    let _daemon = env.start();
    let rk = routing_key(178);
    send_lines(&env, &[trigger_from(&rk, "c", "web1")]);
    env.fake.wait_accepted(1, WAIT);
    let added = silence_cmd(
        &env,
        &["add", "--match", &format!("routing_key={rk}"), "--duration", "1h", "--comment", "db upgrade", "--by", "ops"],
    );
    let id = added[0]["id"].as_str().unwrap().to_owned();
    // a: still open at the end; b: resolved during the silence; c: open in PagerDuty before it.
    send_lines(
        &env,
        &[trigger_from(&rk, "a", "web1"), trigger_from(&rk, "b", "web1"), resolve(&rk, "b"), resolve(&rk, "c")],
    );
    let list = records(&env);
    for (dedup, action, state) in [
        ("a", "trigger", "waiting"),
        ("b", "trigger", "superseded"),
        ("b", "resolve", "superseded"),
        ("c", "resolve", "waiting"),
    ] {
        let r = by_dedup(&list, dedup, action);
        assert_eq!(r["state"], state, "{r}");
    }
    assert!(by_dedup(&list, "a", "trigger")["hold"].as_str().unwrap().contains(&format!("silence {id}")));
    assert!(by_dedup(&list, "b", "trigger")["last_error"].as_str().unwrap().contains("during the silence"));
    let listed = silence_cmd(&env, &["list"]);
    assert_eq!(
        (listed[0]["id"].as_str(), listed[0]["comment"].as_str(), listed[0]["created_by"].as_str()),
        (Some(id.as_str()), Some("db upgrade"), Some("ops"))
    );

    let expired = silence_cmd(&env, &["expire", &id]);
    assert_eq!(expired["released"], 2, "{expired}");
    let sent = env.fake.wait_accepted(3, WAIT);
    let mut got: Vec<(String, String)> = sent[1..]
        .iter()
        .map(|r| {
            (r.body["dedup_key"].as_str().unwrap().to_owned(), r.body["event_action"].as_str().unwrap().to_owned())
        })
        .collect();
    got.sort();
    assert_eq!(got, [("a".to_owned(), "trigger".to_owned()), ("c".to_owned(), "resolve".to_owned())]);
    wait_until("nothing pending", WAIT, || {
        records(&env).iter().all(|r| r["state"] != "pending" && r["state"] != "waiting")
    });
    assert_eq!(env.fake.accepted().len(), 3, "b was never sent");
}

#[test]
fn a_silence_survives_a_restart_and_a_maintenance_window_holds_too() {
    let env = TestEnv::with_config(
        "[[maintenance]]\nname = \"always\"\nmatch = { source = \"lab1\" }\n\
         days = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\", \"sat\", \"sun\"]\nstart = \"00:00\"\nduration = \"7d\"\n",
    );
    let rk = routing_key(179);
    // Added while the daemon is stopped: stored in the queue's database directly.
    let added = silence_cmd(&env, &["add", "-m", "source=glob:web*", "--duration", "2h", "-c", "window"]);
    let id = added[0]["id"].as_str().unwrap().to_owned();
    let daemon = env.start();
    send_lines(&env, &[trigger_from(&rk, "w", "web7"), trigger_from(&rk, "l", "lab1"), trigger_from(&rk, "x", "db1")]);
    let sent = env.fake.wait_accepted(1, WAIT);
    assert_eq!(sent[0].body["dedup_key"], "x");
    let (code, _, log) = daemon.terminate(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{log}");
    let _daemon = env.start();
    let list = records(&env);
    assert_eq!(by_dedup(&list, "w", "trigger")["state"], "waiting");
    assert!(by_dedup(&list, "l", "trigger")["hold"].as_str().unwrap().contains("maintenance always"));
    assert_eq!(silence_cmd(&env, &["list"])[0]["id"], id.as_str());
    send_lines(&env, &[trigger_from(&rk, "w2", "web8")]);
    assert_eq!(by_dedup(&records(&env), "w2", "trigger")["state"], "waiting", "the silence applies after the restart");
    silence_cmd(&env, &["expire", &id]);
    let sent = env.fake.wait_accepted(3, WAIT);
    let mut got: Vec<&str> = sent[1..].iter().map(|r| r.body["dedup_key"].as_str().unwrap()).collect();
    got.sort();
    assert_eq!(got, ["w", "w2"]);
    assert_eq!(by_dedup(&records(&env), "l", "trigger")["state"], "waiting", "the window still holds");
}

/// A dead man's switch on loopback: answers every request 200 and counts them.
struct Switch {
    addr: std::net::SocketAddr,
    hits: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Switch {
    fn start() -> Switch {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let h = hits.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 65536 {
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                if buf.starts_with(b"GET /ping/host1 ") {
                    h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nOK");
            }
        });
        Switch { addr, hits }
    }

    fn hits(&self) -> u64 {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[test]
fn the_heartbeat_url_is_pinged_while_deliveries_succeed_and_not_while_pagerduty_is_away() {
    let switch = Switch::start();
    let metrics = tempfile::Builder::new().prefix("pdrelay-it-metrics").tempdir_in("/tmp").unwrap();
    let textfile = metrics.path().join("pdrelay.prom");
    let env = TestEnv::with_config(&format!(
        "[heartbeat]\nurl = \"http://{}/ping/host1\"\ninterval = \"1s\"\n[delivery]\noutage_after = 2\n\
         [metrics]\ntextfile = \"{}\"\ntextfile_interval = \"1s\"\n",
        switch.addr,
        textfile.display()
    ));
    let _daemon = env.start();
    let rk = routing_key(180);
    send_lines(&env, &[trigger_from(&rk, "up", "web1")]);
    env.fake.wait_accepted(1, WAIT);
    wait_until("two heartbeats", WAIT, || switch.hits() >= 2);

    env.fake.set_down(true);
    send_lines(&env, &[trigger_from(&rk, "away", "web1")]);
    wait_until("the outage is seen", WAIT, || !env.queue_json(&["status"])["outage_since"].is_null());
    let at_outage = switch.hits();
    // Probes go every 200 ms: 15 more requests to PagerDuty are at least two heartbeat intervals.
    let requests = env.fake.requests();
    wait_until("15 probes", WAIT, || env.fake.requests() >= requests + 15);
    assert!(switch.hits() <= at_outage + 1, "pinged while PagerDuty was away: {} -> {}", at_outage, switch.hits());
    wait_until("skipped pings counted", WAIT, || {
        std::fs::read_to_string(&textfile)
            .unwrap_or_default()
            .contains("pdrelay_heartbeat_pings_total{outcome=\"skipped\"}")
    });

    env.fake.set_down(false);
    env.fake.wait_accepted(2, WAIT);
    let back = switch.hits();
    wait_until("heartbeats resume", WAIT, || switch.hits() >= back + 2);
}

#[test]
fn an_expected_sender_going_silent_triggers_and_its_return_resolves() {
    let alerts = routing_key(181);
    let env = TestEnv::with_config(&format!(
        "[heartbeat]\ncheck_interval = \"200ms\"\n\
         [[expected_senders]]\nname = \"db1\"\nmatch = {{ source = \"db1\" }}\nwithin = \"2s\"\nrouting_key = \"{alerts}\"\n"
    ));
    let _daemon = env.start();
    let rk = routing_key(182);
    send_lines(&env, &[trigger_from(&rk, "db1-load", "db1")]);
    let is_silent_alert = |r: &crate::fake_api::Received, action: &str| {
        r.body["routing_key"] == alerts.as_str()
            && r.body["dedup_key"] == "pdrelay-silent/db1"
            && r.body["event_action"] == action
    };
    wait_until("the silent-sender trigger", WAIT, || env.fake.accepted().iter().any(|r| is_silent_alert(r, "trigger")));
    let trigger = env.fake.accepted().into_iter().find(|r| is_silent_alert(r, "trigger")).unwrap();
    let summary = trigger.body["payload"]["summary"].as_str().unwrap();
    assert!(summary.starts_with("db1 has not been heard from for"), "{summary}");
    assert!(!env.fake.accepted().iter().any(|r| is_silent_alert(r, "resolve")));
    send_lines(&env, &[resolve(&rk, "db1-load"), trigger_from(&rk, "db1-back", "db1")]);
    wait_until("the resolve on its return", WAIT, || env.fake.accepted().iter().any(|r| is_silent_alert(r, "resolve")));
}
