//! Delivery when PagerDuty comes back and during storms: outage probing and release, the
//! per-key rate limit against a fake that enforces PagerDuty's, send-now, stale pairs and the
//! acceptance timestamp.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use crate::fake_api::Fault;
use crate::support::*;

const WAIT: Duration = Duration::from_secs(60);

fn event(rk: &str, action: &str, dedup: &str, n: u64) -> String {
    json!({"routing_key": rk, "event_action": action, "dedup_key": dedup,
        "payload": {"summary": format!("event {n}"), "source": "h", "severity": "info", "custom_details": {"n": n}}})
    .to_string()
}

fn send_all(env: &TestEnv, lines: &[String]) {
    let mut c = env.connect();
    for line in lines {
        c.send_line(line);
    }
    for line in lines {
        let reply = c.read_reply();
        assert_eq!(reply["ok"], true, "{line}: {reply}");
    }
}

fn wall(rfc3339: &str) -> SystemTime {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339).unwrap();
    SystemTime::UNIX_EPOCH + Duration::from_nanos(t.unix_timestamp_nanos() as u64)
}

/// Numbers of the received events, per (routing key, dedup key), in the order received.
fn lines_of(received: &[crate::fake_api::Received]) -> HashMap<(String, String), Vec<u64>> {
    let mut lines: HashMap<(String, String), Vec<u64>> = HashMap::new();
    for r in received {
        let key =
            (r.body["routing_key"].as_str().unwrap().to_owned(), r.body["dedup_key"].as_str().unwrap().to_owned());
        lines.entry(key).or_default().push(r.body["payload"]["custom_details"]["n"].as_u64().unwrap());
    }
    lines
}

#[test]
fn after_an_outage_the_first_event_goes_within_a_probe_interval_and_the_backlog_follows_in_order() {
    // Backoff grows 1 s, 8 s, 60 s (its maximum): without outage handling, events would wait up
    // to a minute after PagerDuty is back. The first event's delay is bounded by a probe
    // interval, so the test has the machine to itself.
    let env = TestEnv::alone_with_config(
        "[retry]\ninitial_interval = \"1s\"\nmax_interval = \"60s\"\nmultiplier = 8.0\nrandomization_factor = 0.0\n\
         [delivery]\nprobe_interval = \"2s\"\noutage_after = 3\nrate_limit = 120\n",
    );
    env.fake.set_down(true);
    let _daemon = env.start();
    let keys = [routing_key(161), routing_key(162), routing_key(163)];
    let lines: Vec<String> =
        (0..30u64).map(|n| event(&keys[(n % 3) as usize], "trigger", &format!("d{}", n % 2), n)).collect();
    send_all(&env, &lines);

    // The outage is seen, and the probe event's own backoff reaches its maximum.
    let mut waiting = Value::Null;
    wait_until("an event with a backoff at its maximum", WAIT, || {
        waiting = env.queue_json(&["list", "--state", "waiting"]);
        waiting.as_array().unwrap().iter().any(|r| r["attempts"].as_u64().unwrap() >= 4)
    });
    let status = env.queue_json(&["status"]);
    assert!(status["outage_since"].is_string(), "status shows the outage: {status}");
    // Meanwhile only one probe per interval (2 s, jitter 20%) reaches PagerDuty.
    let (before, since) = (env.fake.requests(), Instant::now());
    wait_until("two more probes", WAIT, || env.fake.requests() >= before + 2);
    let probes = env.fake.requests() - before;
    let bound = since.elapsed().as_secs_f64() / 1.6 + 1.0;
    assert!(probes as f64 <= bound, "{probes} requests in {:?} while PagerDuty was down", since.elapsed());
    // The latest retry time an event holds now: what it would have waited for on its own.
    let own_timer =
        waiting.as_array().unwrap().iter().filter_map(|r| r["next_attempt_at"].as_str()).map(wall).max().unwrap();
    assert!(own_timer > SystemTime::now() + Duration::from_secs(20), "a backoff near its 60 s maximum");

    env.fake.set_down(false);
    let (up, up_wall) = (Instant::now(), SystemTime::now());
    let got = env.fake.wait_accepted(30, WAIT);
    let first = got[0].at.duration_since(up);
    assert!(first <= Duration::from_millis(2_400 + 1_500), "first event {first:?} after PagerDuty answered again");
    let last = got.last().unwrap().at.duration_since(up);
    assert!(up_wall + last < own_timer, "the backlog went at once, not at its own retry times");
    assert!(
        last - first < Duration::from_secs(10),
        "the backlog followed the first event at once ({first:?}..{last:?})"
    );
    assert_eq!(got.len(), 30, "each event once");
    for ((rk, dedup), numbers) in lines_of(&got) {
        assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{rk}/{dedup} out of order: {numbers:?}");
        assert_eq!(numbers.len(), 5);
    }
    wait_until("the outage is over in status", WAIT, || env.queue_json(&["status"])["outage_since"].is_null());
}

#[test]
fn a_storm_on_one_key_goes_at_its_limit_without_429s_while_other_keys_flow() {
    let (storm, calm) = (routing_key(171), routing_key(172));
    let env = TestEnv::with_config(&format!("[delivery]\nrate_limit = 0\n[delivery.rate_limits]\n{storm} = 10\n"));
    // The fake refuses an 11th event of a key within any 60 s, as PagerDuty would.
    env.fake.enforce_rate_limit(10, Duration::from_secs(60));
    let _daemon = env.start();
    // 25 events on 20 lines (dedup keys), five of them with two events: more lines wait than the
    // limit lets go in a minute, and order within a line must hold.
    let mut lines: Vec<String> = (0..25u64).map(|n| event(&storm, "trigger", &format!("s{}", n % 20), n)).collect();
    lines.extend((100..110u64).map(|n| event(&calm, "trigger", &format!("c{}", n % 2), n)));
    send_all(&env, &lines);
    let storm_received = || -> Vec<crate::fake_api::Received> {
        env.fake.accepted().into_iter().filter(|r| r.body["routing_key"] == storm.as_str()).collect()
    };
    let calm_count = || env.fake.accepted().iter().filter(|r| r.body["routing_key"] == calm.as_str()).count();
    wait_until("the other key's events", WAIT, || calm_count() == 10);
    assert_eq!(storm_received().len(), 10, "the storm key is held at its limit while the other key flows");
    // The next minute's ten follow (the last five would need a third minute).
    wait_until("the storm key's second minute", Duration::from_secs(120), || storm_received().len() >= 20);
    let got = storm_received();
    let gap = got[10].at.duration_since(got[0].at);
    assert!(gap >= Duration::from_secs(60), "the 11th storm event came {gap:?} after the first");
    assert!(env.fake.rate_limited().is_empty(), "429s from the enforced limit: {:?}", env.fake.rate_limited());
    for ((rk, dedup), numbers) in lines_of(&env.fake.accepted()) {
        assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{rk}/{dedup} out of order: {numbers:?}");
    }
}

#[test]
fn queue_retry_waiting_sends_waiting_events_now_and_lifts_pauses() {
    let (failing, paused) = (routing_key(181), routing_key(182));
    let env = TestEnv::with_config(
        "[retry]\ninitial_interval = \"1h\"\nmax_interval = \"1h\"\nmax_retry_after = \"1h\"\n[delivery]\noutage_after = 1000\n",
    );
    env.fake.push_fault_for(&failing, Fault::Status(500));
    env.fake.push_fault_for(&paused, Fault::TooMany(Some(3600)));
    let _daemon = env.start();
    send_all(&env, &[event(&failing, "trigger", "a", 1), event(&paused, "trigger", "b", 2)]);
    wait_until("both events waiting", WAIT, || {
        env.queue_json(&["list", "--state", "waiting"]).as_array().unwrap().len() == 2
    });
    assert_eq!(env.queue_json(&["status"])["paused"].as_array().unwrap().len(), 1);
    assert!(env.fake.accepted().is_empty());
    let changed = env.queue_json(&["retry", "--waiting"]);
    assert_eq!(changed, json!(2));
    let got = env.fake.wait_accepted(2, WAIT);
    assert_eq!(got.len(), 2);
    let status = env.queue_json(&["status"]);
    assert!(status["paused"].as_array().unwrap().is_empty(), "{status}");
    assert_eq!(status["total"]["waiting"], 0);
    // Nothing waits now: a second call changes nothing.
    assert_eq!(env.queue_json(&["retry", "--waiting"]), json!(0));
}

/// Delivers an open alert for dedup key `z`, stops the daemon, queues a batch with stale pairs
/// in one spool file, starts the daemon again and returns what PagerDuty received from the
/// batch (action and dedup key, in order) and the number of superseded records.
fn stale_pairs(drop_stale_pairs: bool) -> (Vec<(String, String)>, usize) {
    let rk = routing_key(190);
    let env = TestEnv::with_config(&format!("[delivery]\ndrop_stale_pairs = {drop_stale_pairs}\n"));
    let daemon = env.start();
    send_all(&env, &[event(&rk, "trigger", "z", 0)]);
    env.fake.wait_accepted(1, WAIT);
    let (code, _, log) = daemon.terminate(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{log}");
    let batch = [
        event(&rk, "trigger", "x", 1),
        event(&rk, "acknowledge", "x", 2),
        event(&rk, "resolve", "x", 3),
        event(&rk, "trigger", "y", 4),
        event(&rk, "trigger", "z", 5),
        event(&rk, "resolve", "z", 6),
    ];
    env.drop_file("batch.ndjson", &(batch.join("\n") + "\n"));
    let _daemon = env.start();
    wait_until("the batch taken in and settled", WAIT, || {
        let s = env.queue_json(&["status"]);
        let t = &s["total"];
        env.spool_files().is_empty()
            && t["pending"] == 0
            && t["waiting"] == 0
            && t["delivered"].as_u64().unwrap() + t["superseded"].as_u64().unwrap_or(0) == 7
    });
    let received = env.fake.accepted()[1..]
        .iter()
        .map(|r| {
            (r.body["event_action"].as_str().unwrap().to_owned(), r.body["dedup_key"].as_str().unwrap().to_owned())
        })
        .collect();
    let superseded = env.queue_json(&["list", "--state", "superseded"]).as_array().unwrap().len();
    (received, superseded)
}

#[test]
fn stale_pairs_are_sent_by_default_and_kept_as_superseded_when_asked() {
    let pairs = |v: &[(&str, &str)]| v.iter().map(|(a, d)| (a.to_string(), d.to_string())).collect::<Vec<_>>();
    let (sent, superseded) = stale_pairs(false);
    let all = [
        ("trigger", "x"),
        ("acknowledge", "x"),
        ("resolve", "x"),
        ("trigger", "y"),
        ("trigger", "z"),
        ("resolve", "z"),
    ];
    let mut sorted = sent.clone();
    sorted.sort();
    let mut want = pairs(&all);
    want.sort();
    assert_eq!(sorted, want, "off: everything is sent");
    for dedup in ["x", "z"] {
        let order: Vec<&str> = sent.iter().filter(|(_, d)| d == dedup).map(|(a, _)| a.as_str()).collect();
        assert_eq!(order.last(), Some(&"resolve"), "{dedup}: {order:?}");
    }
    assert_eq!(superseded, 0);
    // On: x opened and closed while undelivered: nothing sent. z was open at PagerDuty: its
    // resolve is still sent, the trigger before it is not.
    let (mut sent, superseded) = stale_pairs(true);
    sent.sort();
    assert_eq!(sent, pairs(&[("resolve", "z"), ("trigger", "y")]));
    assert_eq!(superseded, 4);
}

#[test]
fn a_trigger_without_a_timestamp_carries_its_acceptance_time() {
    let env = TestEnv::new();
    let _daemon = env.start();
    let rk = routing_key(195);
    let given = json!({"routing_key": rk, "event_action": "trigger", "dedup_key": "t2",
        "payload": {"summary": "s", "source": "h", "severity": "info", "timestamp": "2020-01-02T03:04:05Z"}});
    let before = SystemTime::now() - Duration::from_millis(1);
    send_all(&env, &[event(&rk, "trigger", "t1", 1), given.to_string(), event(&rk, "resolve", "t1", 2)]);
    let after = SystemTime::now() + Duration::from_millis(1);
    let got = env.fake.wait_accepted(3, WAIT);
    let by_dedup = |d: &str, action: &str| {
        got.iter().find(|r| r.body["dedup_key"] == d && r.body["event_action"] == action).unwrap().body.clone()
    };
    let stamped = by_dedup("t1", "trigger");
    let at = wall(stamped["payload"]["timestamp"].as_str().expect("a timestamp"));
    assert!(before <= at && at <= after, "{stamped}");
    assert_eq!(by_dedup("t2", "trigger")["payload"]["timestamp"], "2020-01-02T03:04:05Z");
    assert!(by_dedup("t1", "resolve")["payload"].get("timestamp").is_none());
}

#[test]
fn a_restart_after_failing_deliveries_probes_and_releases_the_waiting_events() {
    // Each event waits an hour after a failure, and no outage is declared while running.
    let env = TestEnv::with_config(
        "[retry]\ninitial_interval = \"1h\"\nmax_interval = \"1h\"\n[delivery]\noutage_after = 1000\nprobe_interval = \"200ms\"\n",
    );
    env.fake.set_down(true);
    let daemon = env.start();
    let rk = routing_key(197);
    send_all(&env, &[event(&rk, "trigger", "a", 1), event(&rk, "trigger", "b", 2), event(&rk, "trigger", "a", 3)]);
    wait_until("the events waiting an hour", WAIT, || env.queue_json(&["status"])["total"]["waiting"] == 2);
    let (code, _, log) = daemon.terminate(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{log}");
    env.fake.set_down(false);
    let daemon = env.start();
    let got = env.fake.wait_accepted(3, WAIT);
    assert_eq!(lines_of(&got)[&(rk.clone(), "a".to_owned())], vec![1, 3]);
    assert!(daemon.log_text().contains("probes PagerDuty"), "{}", daemon.log_text());
}
