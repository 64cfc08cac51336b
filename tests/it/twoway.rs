//! Two-way: reconciliation with a fake of PagerDuty's REST API (pagination, 429 with rate-limit
//! headers, 401), `pdrelay alerts` showing both sides and their disagreements, the one-command
//! repair, and ack-back to a Nagios command FIFO and a fake Icinga 2 API.

use std::io::BufRead;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::fake_rest::{FakeRest, GOOD_KEY};
use crate::nagios::wait_until_or;
use crate::support::*;

const WAIT: Duration = Duration::from_secs(30);
const SERVICE_KEY: &str = "event_source=service;host_name=web1;service_desc=Disk /var";

fn env_with_rest(rest: &FakeRest, key: &str, interval: &str, extra: &str) -> TestEnv {
    TestEnv::with_config(&format!(
        "[pagerduty]\nrest_api_key = \"{key}\"\nrest_api_url = \"{}\"\nreconcile_interval = \"{interval}\"\n{extra}",
        rest.url()
    ))
}

fn alerts(env: &TestEnv, args: &[&str]) -> Vec<Value> {
    let mut full = vec!["alerts"];
    full.extend_from_slice(args);
    env.queue_json_cmd(&full).as_array().cloned().unwrap_or_default()
}

fn find<'a>(alerts: &'a [Value], dedup: &str) -> Option<&'a Value> {
    alerts.iter().find(|a| a["dedup_key"] == dedup)
}

#[test]
fn the_ledger_follows_pagerduty_through_pages_and_429s() {
    let rest = FakeRest::start();
    let env = env_with_rest(&rest, GOOD_KEY, "1s", "");
    let d = env.start();
    let rk = routing_key(60);
    let mut c = env.connect();
    for dk in ["acked-1", "resolved-1"] {
        c.send_line(&trigger(&rk, dk, "disk full"));
        c.read_reply();
    }
    env.fake.wait_accepted(2, WAIT);
    wait_until("both in the ledger", WAIT, || alerts(&env, &[]).len() == 2);
    // An older incident of the same key, resolved long ago, comes first: the newest counts, and
    // it is on the second page (the fake pages by one).
    rest.add_incident("acked-1", "2025-01-01T00:00:00Z", "resolved", Some("Old Hand"));
    let acked = rest.add_incident("acked-1", "2026-06-01T09:00:00Z", "acknowledged", Some("Jane Doe"));
    rest.add_incident("resolved-1", "2026-06-01T09:00:00Z", "resolved", Some("Sam Roe"));
    rest.throttle_next(1);
    let out = env.command().args(["alerts", "--refresh", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = v["result"].as_array().unwrap().clone();
    let a = find(&list, "acked-1").expect("acked-1 listed");
    assert_eq!(a["pagerduty"], "acknowledged", "{a}");
    assert_eq!(a["pagerduty_by"], "Jane Doe");
    assert_eq!(a["pagerduty_at"], "2026-06-01T10:00:00Z");
    assert!(a.get("disagreement").is_none(), "{a}");
    let r = find(&list, "resolved-1").expect("resolved-1 listed");
    assert_eq!(r["pagerduty"], "resolved");
    assert_eq!(r["pagerduty_by"], "Sam Roe");
    assert_eq!(r["disagreement"], "open here, resolved in PagerDuty");
    assert!(rest.throttled() >= 1, "the 429 was answered");
    let requests = rest.requests();
    assert!(
        requests.iter().any(|(q, _)| q.contains("incident_key=acked-1") && q.contains("offset=1")),
        "paged: {requests:?}"
    );
    assert!(requests.iter().all(|(_, auth)| auth == &format!("Token token={GOOD_KEY}")));
    // The table shows both sides and the disagreement.
    let table = env.command().arg("alerts").output().unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("acknowledged by Jane Doe") && text.contains("! open here, resolved in PagerDuty"), "{text}");
    // The daemon's own loop follows a later change without --refresh.
    rest.set_status(&acked, "resolved", Some("Jane Doe"), "2026-06-01T11:00:00Z");
    wait_until("the daemon's pass sees the resolution", WAIT, || {
        find(&alerts(&env, &[]), "acked-1").is_some_and(|a| a["pagerduty"] == "resolved")
    });
    let log = d.log_text();
    assert!(!log.contains(GOOD_KEY), "the key is never logged");
}

#[test]
fn a_resolve_pagerduty_dropped_is_shown_and_sent_again_with_one_command() {
    let rest = FakeRest::start();
    let env = env_with_rest(&rest, GOOD_KEY, "1h", "");
    // PagerDuty has the incident from the trigger on, and took the resolve during a maintenance
    // window and did nothing with it.
    let id = rest.add_incident("lost-resolve", "2026-06-01T09:00:00Z", "triggered", None);
    let d = env.start();
    let rk = routing_key(61);
    let mut c = env.connect();
    c.send_line(&trigger(&rk, "lost-resolve", "disk full"));
    c.read_reply();
    c.send_line(
        &serde_json::json!({"routing_key": rk, "event_action": "resolve", "dedup_key": "lost-resolve"}).to_string(),
    );
    c.read_reply();
    env.fake.wait_accepted(2, WAIT);
    // With the daemon stopped, --refresh works on the queue directly.
    d.terminate(Duration::from_secs(10));
    let out = env.command().args(["alerts", "--refresh"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("resolved here, still open in PagerDuty: `pdrelay alerts --resend-resolves`"), "{text}");
    let d = env.start();
    let out = env.command().args(["alerts", "--resend-resolves"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1 resolve(s) queued again");
    wait_until_or("the resolve sent again", WAIT, || env.fake.accepted().len() >= 3, &|| d.log_text());
    let got = env.fake.accepted();
    assert_eq!(got[2].body["event_action"], "resolve");
    assert_eq!(got[2].body["dedup_key"], "lost-resolve");
    rest.set_status(&id, "resolved", Some("pdrelay"), "2026-06-01T12:00:00Z");
    wait_until("the alert leaves the list once both sides agree", WAIT, || {
        let out = env.command().args(["alerts", "--refresh", "--json"]).output().unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["result"].as_array().is_some_and(|a| a.is_empty())
    });
}

#[test]
fn a_bad_rest_key_is_one_clear_error_and_delivery_goes_on() {
    let rest = FakeRest::start();
    let bad = "WrongKeyWrongKey1234";
    let env = env_with_rest(&rest, bad, "1s", "");
    let d = env.start();
    let rk = routing_key(62);
    let mut c = env.connect();
    c.send_line(&trigger(&rk, "still-delivered", "disk full"));
    c.read_reply();
    env.fake.wait_accepted(1, WAIT);
    wait_until("several passes tried the key", WAIT, || rest.requests().len() >= 3);
    c.send_line(&trigger(&rk, "still-delivered-2", "disk full"));
    c.read_reply();
    env.fake.wait_accepted(2, WAIT);
    let log = d.log_text();
    let refusals = log.lines().filter(|l| l.contains("refused the key (401)")).count();
    assert_eq!(refusals, 1, "one error, not one per pass:\n{log}");
    assert!(log.contains("pagerduty.rest_api_key"), "the error names the setting:\n{log}");
    assert!(!log.contains(bad), "the key is never logged:\n{log}");
    let out = env.command().args(["alerts", "--refresh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("refused the key (401)") && !err.contains(bad), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("still-delivered"), "the list is still shown");
}

/// Reads lines written to a FIFO (opened read-write so that it never sees end-of-file).
fn read_fifo(path: &std::path::Path) -> Arc<Mutex<Vec<String>>> {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let file = std::fs::OpenOptions::new().read(true).write(true).custom_flags(0).open(path).unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(file).lines() {
            match line {
                Ok(line) => l.lock().unwrap().push(line),
                Err(_) => return,
            }
        }
    });
    lines
}

#[test]
fn an_acknowledgement_in_pagerduty_goes_to_the_nagios_fifo_and_icinga_once() {
    let rest = FakeRest::start();
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("nagios.cmd");
    let lines = read_fifo(&fifo);
    let extra = format!(
        "[ackback]\nnagios_command_file = \"{}\"\nicinga2_url = \"{}\"\nicinga2_user = \"pdrelay\"\nicinga2_password = \"s3cret\"\n",
        fifo.display(),
        rest.url()
    );
    let env = env_with_rest(&rest, GOOD_KEY, "1s", &extra);
    let d = env.start();
    let rk = routing_key(63);
    let mut c = env.connect();
    c.send_line(&trigger(&rk, SERVICE_KEY, "web1/Disk /var is CRITICAL"));
    c.read_reply();
    c.send_line(&trigger(&rk, "not-a-nagios-key", "other"));
    c.read_reply();
    env.fake.wait_accepted(2, WAIT);
    let id = rest.add_incident(SERVICE_KEY, "2026-06-01T09:00:00Z", "acknowledged", Some("Jane Doe"));
    rest.add_incident("not-a-nagios-key", "2026-06-01T09:00:00Z", "acknowledged", Some("Jane Doe"));
    wait_until("the acknowledgement in the FIFO", WAIT, || !lines.lock().unwrap().is_empty());
    let first = lines.lock().unwrap()[0].clone();
    let (stamp, command) = first.split_once("] ").unwrap();
    assert!(stamp.strip_prefix('[').unwrap().parse::<u64>().is_ok(), "{first}");
    assert_eq!(
        command,
        format!("ACKNOWLEDGE_SVC_PROBLEM;web1;Disk /var;2;0;0;pdrelay;Acknowledged in PagerDuty by Jane Doe (incident {id})")
    );
    // Icinga 2 is asked right after the FIFO took the line.
    wait_until("the acknowledgement at Icinga 2", WAIT, || !rest.icinga_acks().is_empty());
    let acks = rest.icinga_acks();
    assert_eq!(acks.len(), 1, "{acks:?}");
    let (auth, body) = &acks[0];
    assert_eq!(auth, "Basic cGRyZWxheTpzM2NyZXQ=", "basic auth pdrelay:s3cret");
    assert_eq!(body["type"], "Service");
    assert_eq!(body["filter_vars"]["pd_host"], "web1");
    assert_eq!(body["filter_vars"]["pd_service"], "Disk /var");
    assert_eq!(body["filter"], "host.name==pd_host && service.name==pd_service");
    assert!(body["comment"].as_str().unwrap().contains("Jane Doe"));
    // Once: more passes, no more commands.
    let seen = rest.requests().len();
    wait_until("three more passes", WAIT, || rest.requests().len() >= seen + 6);
    assert_eq!(lines.lock().unwrap().len(), 1, "{:?}", lines.lock().unwrap());
    assert_eq!(rest.icinga_acks().len(), 1);
    // Un-acknowledged, then acknowledged again by someone else: passed back again.
    rest.set_status(&id, "triggered", None, "2026-06-01T10:30:00Z");
    rest.set_status(&id, "acknowledged", Some("Raj Patel"), "2026-06-01T11:00:00Z");
    wait_until("the second acknowledgement", WAIT, || lines.lock().unwrap().len() == 2);
    assert!(lines.lock().unwrap()[1].contains("by Raj Patel"));
    let log = d.log_text();
    assert!(!log.contains("s3cret") && !log.contains(GOOD_KEY), "no secrets in the log");
}

#[test]
fn ack_back_needs_a_rest_key_and_secrets_stay_out_of_check_config() {
    let env = TestEnv::with_config("[ackback]\nnagios_command_file = \"/tmp/none.cmd\"\n");
    let out = env.command().arg("check-config").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ackback: needs pagerduty.rest_api_key"), "{err}");
    let env =
        TestEnv::with_config("[pagerduty]\nrest_api_key = \"has space in it 12345\"\nrest_api_key_file = \"/x\"\n");
    let out = env.command().arg("check-config").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("set one, not both") && err.contains("pagerduty.rest_api_key: must be"), "{err}");
    assert!(!err.contains("has space in it"), "the key is not echoed: {err}");
}

/// A real Nagios 4 core (Debian's nagios4, as in `nagios::a_real_nagios_pages_through_pdrelay`)
/// pages through pdrelay; the incident is acknowledged in the fake PagerDuty; pdrelay writes the
/// acknowledgement to Nagios's external command file, and Nagios's status file shows the service
/// acknowledged with the PagerDuty user's name in the comment.
#[test]
fn an_acknowledgement_in_pagerduty_acknowledges_the_service_in_a_real_nagios() {
    let nagios_bin = std::path::Path::new("/usr/sbin/nagios4");
    if !nagios_bin.exists() {
        assert!(
            std::env::var("PDRELAY_REQUIRE_NAGIOS").is_err(),
            "nagios4 is not installed (apt-get install nagios4-core)"
        );
        eprintln!("SKIPPED: /usr/sbin/nagios4 not installed");
        return;
    }
    let rest = FakeRest::start();
    let holder = tempfile::Builder::new().prefix("pdrelay-nagios").tempdir_in("/tmp").unwrap();
    let dir = holder.path().join("nagios");
    let extra = format!("[ackback]\nnagios_command_file = \"{}\"\n", dir.join("nagios.cmd").display());
    let env = env_with_rest(&rest, GOOD_KEY, "1s", &extra);
    let d = env.start();
    let rk = routing_key(64);
    let notify = format!(
        "{BIN} nagios --config {} -k {rk} -t $NOTIFICATIONTYPE$ -n service -f HOSTNAME=\"$HOSTNAME$\" -f SERVICEDESC=\"$SERVICEDESC$\" -f SERVICESTATE=\"$SERVICESTATE$\" -f SERVICEOUTPUT=\"$SERVICEOUTPUT$\"",
        env.config.display()
    );
    crate::nagios::write_nagios_config(&dir, &rk, &notify, false, true);
    let verify = std::process::Command::new(nagios_bin).arg("-v").arg(dir.join("nagios.cfg")).output().unwrap();
    assert!(verify.status.success(), "nagios -v:\n{}", String::from_utf8_lossy(&verify.stdout));
    let _core = KillOnDrop(
        std::process::Command::new(nagios_bin)
            .arg(dir.join("nagios.cfg"))
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let nagios_log = || std::fs::read_to_string(dir.join("nagios.log")).unwrap_or_default();
    let deadline = Duration::from_secs(90);
    wait_until_or("the trigger from Nagios", deadline, || !env.fake.accepted().is_empty(), &nagios_log);
    assert_eq!(env.fake.accepted()[0].body["dedup_key"], SERVICE_KEY);
    let id = rest.add_incident(SERVICE_KEY, "2026-06-01T09:00:00Z", "acknowledged", Some("Jane Doe"));
    // status.dat: the service block of "Disk /var" says acknowledged, and its comment names the user.
    let service_block = || {
        let status = std::fs::read_to_string(dir.join("status.dat")).unwrap_or_default();
        status
            .split("\n\n")
            .find(|b| b.trim_start().starts_with("servicestatus {") && b.contains("service_description=Disk /var"))
            .unwrap_or("")
            .to_owned()
    };
    wait_until_or(
        "Nagios's status file showing the service acknowledged",
        deadline,
        || service_block().contains("problem_has_been_acknowledged=1"),
        &|| format!("{}\n--- daemon log:\n{}", nagios_log(), d.log_text()),
    );
    let status = std::fs::read_to_string(dir.join("status.dat")).unwrap();
    assert!(
        status.contains(&format!("comment_data=Acknowledged in PagerDuty by Jane Doe (incident {id})")),
        "{status}"
    );
    assert!(status.contains("author=pdrelay"), "{status}");
    assert!(nagios_log().contains("EXTERNAL COMMAND: ACKNOWLEDGE_SVC_PROBLEM;web1;Disk /var;"), "{}", nagios_log());
}
