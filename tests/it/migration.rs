//! Moving from pdagent: the pd-send, pd-nagios, pd-zabbix, pd-sensu and pd-queue wrappers in
//! `packaging/bin/` run with the old tools' arguments against the real binary and the fake Events
//! API (golden inputs and outputs from pdagent's and pdagent-integrations' own test suites), and a
//! pdagent queue directory built from those suites' queue files is imported with
//! `pdrelay import-pdagent`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::fake_api::{Fault, Received};
use crate::support::*;

const WAIT: Duration = Duration::from_secs(30);
const V1_PATH: &str = "/generic/2010-04-15/create_event.json";
const V2_PATH: &str = "/v2/enqueue";

// Golden files from PagerDuty/pdagent's and PagerDuty/pdagent-integrations' test suites (as in
// shared/reference/pdagent-queue-samples), verbatim: pdagent queue entries, one v1 event each.
/// `test_10_zabbix.pdq1.txt`
const ZABBIX_PDQ1: &str = r#"{"agent":{"agent_id":"SOME_ID","queued_at":"SOME_TIME","queued_by":"pd-zabbix"},"client":"","client_url":"","description":"Zabbix server: just restarted : PROBLEM for Zabbix server","details":{"event_id":"70","hostname":"Zabbix server","id":"13502","ip":"127.0.0.1","name":"Zabbix server: just restarted","severity":"High","status":"PROBLEM","value":"1"},"event_type":"trigger","incident_key":"13502-Zabbix server","service_key":"DUMMY_SERVICE_KEY"}"#;
/// `test_10_zabbix.pdq2.txt`
const ZABBIX_PDQ2: &str = r#"{"agent":{"agent_id":"SOME_ID","queued_at":"SOME_TIME","queued_by":"pd-zabbix"},"client":"","client_url":"","description":"Zabbix server: just restarted : OK for Zabbix server","details":{"event_id":"126","hostname":"Zabbix server","id":"13502","ip":"127.0.0.1","name":"Zabbix server: just restarted","severity":"High","status":"OK","value":"0"},"event_type":"resolve","incident_key":"13502-Zabbix server","service_key":"DUMMY_SERVICE_KEY"}"#;
/// `test_20_nagios.host.trigger.txt`
const NAGIOS_HOST_TRIGGER: &str = r#"{"agent":{"agent_id":"SOME_ID","queued_at":"SOME_TIME","queued_by":"pd-nagios"},"client":"","client_url":"","description":"HOSTNAME=host.test.local; HOSTSTATE=critical","details":{"HOSTNAME":"host.test.local","HOSTSTATE":"critical","pd_nagios_object":"host"},"event_type":"trigger","incident_key":"event_source=host;host_name=host.test.local","service_key":"DUMMY_SERVICE_KEY"}"#;
/// `test_20_nagios.host.resolve.txt`
const NAGIOS_HOST_RESOLVE: &str = r#"{"agent":{"agent_id":"SOME_ID","queued_at":"SOME_TIME","queued_by":"pd-nagios"},"client":"","client_url":"","description":"HOSTNAME=host.test.local; HOSTSTATE=critical","details":{"HOSTNAME":"host.test.local","HOSTSTATE":"critical","pd_nagios_object":"host"},"event_type":"resolve","incident_key":"event_source=host;host_name=host.test.local","service_key":"DUMMY_SERVICE_KEY"}"#;
/// `test_20_nagios.service.trigger.txt`
const NAGIOS_SERVICE_TRIGGER: &str = r#"{"agent":{"agent_id":"SOME_ID","queued_at":"SOME_TIME","queued_by":"pd-nagios"},"client":"","client_url":"","description":"SERVICEDESC=service=test-service; SERVICESTATE=critical; HOSTNAME=service.test.local","details":{"HOSTNAME":"service.test.local","SERVICEDESC":"service=test-service","SERVICESTATE":"critical","pd_nagios_object":"service"},"event_type":"trigger","incident_key":"event_source=service;host_name=service.test.local;service_desc=service=test-service","service_key":"DUMMY_SERVICE_KEY"}"#;
/// `test_20_nagios.service.resolve.txt`
const NAGIOS_SERVICE_RESOLVE: &str = r#"{"agent":{"agent_id":"SOME_ID","queued_at":"SOME_TIME","queued_by":"pd-nagios"},"client":"","client_url":"","description":"SERVICEDESC=service=test-service; SERVICESTATE=critical; HOSTNAME=service.test.local","details":{"HOSTNAME":"service.test.local","SERVICEDESC":"service=test-service","SERVICESTATE":"critical","pd_nagios_object":"service"},"event_type":"resolve","incident_key":"event_source=service;host_name=service.test.local;service_desc=service=test-service","service_key":"DUMMY_SERVICE_KEY"}"#;
/// `test_30_encoding.pdq1.txt`
const ENCODING_PDQ1: &str = r#"{"agent":{"agent_id":"SOME_ID","queued_at":"SOME_TIME","queued_by":"pd-send"},"description":"\u00e9","details":{},"event_type":"acknowledge","incident_key":"server.fire","service_key":"DUMMY_SERVICE_KEY"}"#;
/// `test_30_sensu.generic.json`
const SENSU_TEMPLATE: &str = r#"{"client":{"name":"{{clientname}}","address":"127.0.0.1","environment":"development","subscriptions":["production","client:{{checkname}}"],"socket":{"bind":"127.0.0.1","port":3030},"version":"0.26.5","timestamp":1485537856},"check":{"command":"/etc/sensu/plugins/checkhost.py","subscribers":["production"],"interval":20,"standalone":true,"handlers":["pagerduty"],"name":"{{checkname}}","issued":1485537846,"executed":1485537856,"duration":"0.25E-1","output":"{{output}}","status":2,"type":"standard","history":["1"],"total_state_change":1},"occurrences":1,"occurrences_watermark":1,"action":"{{action}}","timestamp":1485537856,"id":"c6ad4f14-5dce-45a0-a4ee-9b0c0631087b","last_state_change":1485537856,"last_ok":1485537856,"silenced":false,"silenced_by":[]}"#;

/// A wrapper script from `packaging/bin`, run with `pdrelay` (the binary under test) on PATH.
fn wrapper(env: &TestEnv, name: &str) -> Command {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/bin").join(name);
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let mut c = Command::new(script);
    c.env("PDRELAY_CONFIG", &env.config).env("PATH", path).env_remove("RUST_LOG").stdin(Stdio::null());
    c
}

fn run(mut c: Command, stdin: Option<&str>) -> Output {
    match stdin {
        None => c.output().unwrap(),
        Some(text) => {
            let mut child = c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
            child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
            child.wait_with_output().unwrap()
        }
    }
}

fn wrap(env: &TestEnv, name: &str, args: &[&str]) -> Output {
    let mut c = wrapper(env, name);
    c.args(args);
    run(c, None)
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// A golden queue file with its placeholder key replaced.
fn with_key(golden: &str, key: &str) -> String {
    golden.replace("DUMMY_SERVICE_KEY", key)
}

/// The Events API v1 body pdrelay sends for a golden queue file: the file without pdagent's
/// `agent` object and without empty optional fields (pd-zabbix and pd-nagios queued empty
/// `client` and `client_url`).
fn sent_body(golden: &str, key: &str) -> Value {
    let mut v: Value = serde_json::from_str(&with_key(golden, key)).unwrap();
    let obj = v.as_object_mut().unwrap();
    obj.remove("agent");
    obj.retain(|_, value| value != "");
    v
}

fn find<'a>(got: &'a [Received], field: &str, value: &str) -> Vec<&'a Received> {
    got.iter().filter(|r| r.body[field] == value).collect()
}

#[test]
fn pd_send_wrapper_sends_v1_events_and_prints_the_incident_key() {
    let env = TestEnv::new();
    let _d = env.start();
    let rk = routing_key(80);
    let out = wrap(
        &env,
        "pd-send",
        &[
            "-k",
            &rk,
            "-t",
            "trigger",
            "-d",
            "Disk /var 97% on web1",
            "-i",
            "disk/web1",
            "-c",
            "nagios",
            "-u",
            "http://nagios.example/",
            "-f",
            "mount=/var",
            "-f",
            "pct=97",
            "-x",
            "link:href=https://runbook.example/disk,text=Runbook",
            "-x",
            "image:src=https://graph.example/disk.png,alt=usage",
        ],
    );
    assert_eq!(ok(&out), "Event processed. Incident Key: disk/web1\n");
    // Without -i, pd-send printed the key the agent made up; so does the wrapper.
    let out = wrap(&env, "pd-send", &["--service-key", &rk, "--event-type", "trigger", "--description", "no key"]);
    let printed = ok(&out);
    let made_up = printed.strip_prefix("Event processed. Incident Key: ").unwrap().trim_end().to_owned();
    assert_eq!(made_up.len(), 32, "{printed}");
    // -q: nothing at all.
    let out = wrap(&env, "pd-send", &["-q", "-k", &rk, "-t", "resolve", "-i", "disk/web1"]);
    assert_eq!(ok(&out), "");
    assert!(out.stderr.is_empty());
    // pd-send refused a resolve without an incident key; so does the wrapper, with exit 2.
    let out = wrap(&env, "pd-send", &["-k", &rk, "-t", "resolve"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("incident_key"));

    let got = env.fake.wait_accepted(3, WAIT);
    assert!(got.iter().all(|r| r.path == V1_PATH), "pd-send sent Events API v1");
    let disk = find(&got, "incident_key", "disk/web1");
    assert_eq!(disk.len(), 2);
    assert_eq!(
        disk[0].body,
        json!({
            "service_key": rk,
            "event_type": "trigger",
            "incident_key": "disk/web1",
            "description": "Disk /var 97% on web1",
            "details": {"mount": "/var", "pct": "97"},
            "client": "nagios",
            "client_url": "http://nagios.example/",
            "contexts": [
                {"type": "link", "href": "https://runbook.example/disk", "text": "Runbook"},
                {"type": "image", "src": "https://graph.example/disk.png", "alt": "usage"}
            ]
        })
    );
    assert_eq!(disk[1].body, json!({"service_key": rk, "event_type": "resolve", "incident_key": "disk/web1"}));
    let other = find(&got, "incident_key", &made_up);
    assert_eq!(other.len(), 1);
    assert_eq!(other[0].body["description"], "no key");
    assert_eq!(env.fake.accepted().len(), 3);
}

#[test]
fn pd_nagios_wrapper_keeps_pd_nagios_keys_and_output() {
    let env = TestEnv::new();
    let _d = env.start();
    let rk = routing_key(81);
    let service = ["-f", "HOSTNAME=service.test.local", "-f", "SERVICEDESC=service=test-service"];
    // pd-nagios's long options: --event-type is the notification type, --notification-type the object.
    let mut args = vec!["--service-key", &rk, "--event-type", "PROBLEM", "--notification-type", "service"];
    args.extend(service);
    args.extend(["-f", "SERVICESTATE=critical"]);
    let service_key = serde_json::from_str::<Value>(NAGIOS_SERVICE_TRIGGER).unwrap()["incident_key"].clone();
    let want = format!("Event processed. Incident Key: {}\n", service_key.as_str().unwrap());
    assert_eq!(ok(&wrap(&env, "pd-nagios", &args)), want);
    let mut args = vec!["-k", &rk, "-t", "RECOVERY", "-n", "service"];
    args.extend(service);
    args.extend(["-f", "SERVICESTATE=OK"]);
    assert_eq!(ok(&wrap(&env, "pd-nagios", &args)), want);
    let args = [
        "-k",
        &rk,
        "-tPROBLEM",
        "--notification-type=host",
        "-f",
        "HOSTNAME=host.test.local",
        "-f",
        "HOSTSTATE=critical",
    ];
    let host_key = serde_json::from_str::<Value>(NAGIOS_HOST_TRIGGER).unwrap()["incident_key"].clone();
    assert_eq!(
        ok(&wrap(&env, "pd-nagios", &args)),
        format!("Event processed. Incident Key: {}\n", host_key.as_str().unwrap())
    );

    let got = env.fake.wait_accepted(3, WAIT);
    assert!(got.iter().all(|r| r.path == V2_PATH));
    let services = find(&got, "dedup_key", service_key.as_str().unwrap());
    let actions: Vec<&Value> = services.iter().map(|r| &r.body["event_action"]).collect();
    assert_eq!(actions, [&json!("trigger"), &json!("resolve")]);
    // Every detail pd-nagios queued is among the custom details.
    for (golden, received) in [
        (NAGIOS_SERVICE_TRIGGER, services[0]),
        (NAGIOS_HOST_TRIGGER, find(&got, "dedup_key", host_key.as_str().unwrap())[0]),
    ] {
        let golden: Value = serde_json::from_str(golden).unwrap();
        let details = &received.body["payload"]["custom_details"];
        for (k, v) in golden["details"].as_object().unwrap() {
            assert_eq!(&details[k], v, "{k}");
        }
        assert_eq!(received.body["payload"]["severity"], "critical");
    }
}

/// pd-zabbix's message body for a golden queue file's details, in PagerDuty's guide's order.
fn zabbix_body(golden: &str) -> String {
    let v: Value = serde_json::from_str(golden).unwrap();
    ["name", "id", "status", "hostname", "ip", "value", "event_id", "severity"]
        .iter()
        .map(|k| format!("{k}:{}", v["details"][k].as_str().unwrap()))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn pd_zabbix_wrapper_sends_what_pd_zabbix_queued() {
    let env = TestEnv::new();
    let _d = env.start();
    let rk = routing_key(82);
    for (subject, golden) in [("trigger", ZABBIX_PDQ1), ("resolve", ZABBIX_PDQ2)] {
        let out = wrap(&env, "pd-zabbix", &[&rk, subject, &zabbix_body(golden)]);
        assert_eq!(ok(&out), "", "pd-zabbix printed nothing");
    }
    let got = env.fake.wait_accepted(2, WAIT);
    for (received, golden, severity) in [(&got[0], ZABBIX_PDQ1, "critical"), (&got[1], ZABBIX_PDQ2, "critical")] {
        let golden: Value = serde_json::from_str(golden).unwrap();
        assert_eq!(received.path, V2_PATH);
        let b = &received.body;
        assert_eq!(b["routing_key"], rk.as_str());
        assert_eq!(b["event_action"], golden["event_type"]);
        assert_eq!(b["dedup_key"], golden["incident_key"], "same incident key: open incidents keep deduplicating");
        assert_eq!(b["payload"]["summary"], golden["description"]);
        assert_eq!(b["payload"]["custom_details"], golden["details"]);
        assert_eq!(b["payload"]["source"], "Zabbix server");
        assert_eq!(b["payload"]["severity"], severity);
    }
    // With --api v1, the event is pd-zabbix's queue entry itself.
    let rk1 = routing_key(83);
    let out =
        env.command().args(["zabbix", "--api", "v1", &rk1, "trigger", &zabbix_body(ZABBIX_PDQ1)]).output().unwrap();
    ok(&out);
    // Zabbix's "Escalation cancelled" note on a trigger resolves the incident.
    let cancelled = format!("{}\nNOTE: Escalation cancelled: action \"PagerDuty\" disabled.", zabbix_body(ZABBIX_PDQ1));
    ok(&wrap(&env, "pd-zabbix", &[&rk, "trigger", &cancelled]));
    // A body without id and hostname has no dedup key: exit 2, nothing stored.
    let out = wrap(&env, "pd-zabbix", &[&rk, "trigger", "name:x\nstatus:PROBLEM"]);
    assert_eq!(out.status.code(), Some(2));
    let got = env.fake.wait_accepted(4, WAIT);
    let v1 = find(&got, "service_key", &rk1);
    assert_eq!(v1.len(), 1);
    assert_eq!(v1[0].path, V1_PATH);
    assert_eq!(v1[0].body, sent_body(ZABBIX_PDQ1, &rk1));
    let cancelled = &find(&got, "routing_key", &rk)[2].body;
    assert_eq!(cancelled["event_action"], "resolve");
    assert_eq!(cancelled["dedup_key"], "13502-Zabbix server");
    assert_eq!(env.fake.accepted().len(), 4);
}

fn sensu_input(action: &str, output: &str) -> String {
    SENSU_TEMPLATE
        .replace("{{action}}", action)
        .replace("{{clientname}}", "DUMMY_CLIENT")
        .replace("{{checkname}}", "DUMMY_CHECK")
        .replace("{{output}}", output)
}

#[test]
fn pd_sensu_wrapper_reads_the_check_result_on_stdin() {
    let env = TestEnv::new();
    let _d = env.start();
    let rk = routing_key(84);
    for (action, output) in [("create", "SERVERS ON FIRE"), ("resolve", "SERVERS SMOKIN")] {
        let mut c = wrapper(&env, "pd-sensu");
        c.args(["-k", &rk]);
        assert_eq!(ok(&run(c, Some(&sensu_input(action, output)))), "", "pd-sensu printed nothing");
    }
    // pdagent-integrations' test_30_sensu.sh expectation, as a v1 event.
    let rk1 = routing_key(85);
    let mut c = env.command();
    c.args(["sensu", "--api", "v1", "--integration-key", &rk1]);
    ok(&run(c, Some(&sensu_input("create", "SERVERS ON FIRE"))));
    let mut c = wrapper(&env, "pd-sensu");
    c.args(["-k", &rk]);
    let out = run(c, Some("not json"));
    assert_eq!(out.status.code(), Some(2));

    let got = env.fake.wait_accepted(3, WAIT);
    let v2 = find(&got, "routing_key", &rk);
    assert_eq!(v2.len(), 2);
    for (received, action, output, want_action) in
        [(v2[0], "create", "SERVERS ON FIRE", "trigger"), (v2[1], "resolve", "SERVERS SMOKIN", "resolve")]
    {
        let b = &received.body;
        assert_eq!(b["event_action"], want_action);
        assert_eq!(b["dedup_key"], "DUMMY_CLIENT/DUMMY_CHECK");
        assert_eq!(b["payload"]["summary"], format!("DUMMY_CLIENT/DUMMY_CHECK : {output}"));
        assert_eq!(b["payload"]["severity"], "critical");
        let input: Value = serde_json::from_str(&sensu_input(action, output)).unwrap();
        assert_eq!(b["payload"]["custom_details"], input);
    }
    let v1 = find(&got, "service_key", &rk1);
    assert_eq!(v1.len(), 1);
    let input: Value = serde_json::from_str(&sensu_input("create", "SERVERS ON FIRE")).unwrap();
    assert_eq!(
        v1[0].body,
        json!({
            "details": input,
            "incident_key": "DUMMY_CLIENT/DUMMY_CHECK",
            "description": "DUMMY_CLIENT/DUMMY_CHECK : SERVERS ON FIRE",
            "service_key": rk1,
            "event_type": "trigger",
        })
    );
}

#[test]
fn pd_queue_wrapper_status_and_retry() {
    let env = TestEnv::new();
    let _d = env.start();
    // Keys that differ in their first 6 characters, which is how status shows them.
    let (a, b) = (format!("KeyAAA{}", "0".repeat(26)), format!("KeyBBB{}", "0".repeat(26)));
    env.fake.push_fault_for(&b, Fault::Status(400));
    ok(&wrap(&env, "pd-send", &["-k", &a, "-t", "trigger", "-d", "a", "-i", "a"]));
    ok(&wrap(&env, "pd-send", &["-k", &b, "-t", "trigger", "-d", "b", "-i", "b"]));
    env.fake.wait_accepted(1, WAIT);
    wait_until("one delivered, one failed", WAIT, || {
        let s = env.queue_json(&["status"]);
        s["total"]["failed"] == 1 && s["total"]["delivered"] == 1
    });
    let header = "Service Key                           Pending   Success  In Error\n\
                  =================================================================\n";
    let row_a = "KeyAAA…                                     0         1         0\n";
    let row_b = "KeyBBB…                                     0         0         1\n";
    assert_eq!(ok(&wrap(&env, "pd-queue", &["status"])), format!("{header}{row_a}{row_b}"));
    assert_eq!(ok(&wrap(&env, "pd-queue", &["status", "-k", &b])), format!("{header}{row_b}"));
    assert_eq!(ok(&wrap(&env, "pd-queue", &["status", "--service-key", &a])), format!("{header}{row_a}"));
    assert_eq!(ok(&wrap(&env, "pd-queue", &["status", "-k", &routing_key(1)])), "Nothing to report.\n");
    // pdrelay's own status takes the same filter.
    let s = env.queue_json(&["status", "--routing-key", &b]);
    assert_eq!(s["total"], json!({"pending": 0, "waiting": 0, "failed": 1, "delivered": 0}));
    // pd-queue retry needed -k or -a, not both.
    assert_eq!(wrap(&env, "pd-queue", &["retry"]).status.code(), Some(2));
    assert_eq!(wrap(&env, "pd-queue", &["retry", "-a", "-k", &b]).status.code(), Some(2));
    assert_eq!(ok(&wrap(&env, "pd-queue", &["retry", "-k", &a])), "0 event(s) set up for retry.\n");
    assert_eq!(ok(&wrap(&env, "pd-queue", &["retry", "--service-key", &b])), "1 event(s) set up for retry.\n");
    let got = env.fake.wait_accepted(2, WAIT);
    assert!(got.iter().any(|r| r.body["service_key"] == b.as_str()));
    assert_eq!(ok(&wrap(&env, "pd-queue", &["retry", "--all-keys"])), "0 event(s) set up for retry.\n");
}

/// A pdagent queue directory holding every golden queue file, in the order written, named as
/// pdagent names them, with `key` as the service key.
fn pdagent_queue(dir: &Path, key: &str) -> Vec<(PathBuf, &'static str)> {
    std::fs::create_dir_all(dir).unwrap();
    let files = [
        ZABBIX_PDQ1,
        ZABBIX_PDQ2,
        NAGIOS_HOST_TRIGGER,
        NAGIOS_HOST_RESOLVE,
        NAGIOS_SERVICE_TRIGGER,
        NAGIOS_SERVICE_RESOLVE,
        ENCODING_PDQ1,
    ];
    files
        .iter()
        .enumerate()
        .map(|(i, golden)| {
            let path = dir.join(format!("14800000000000{i:02}_{key}.txt"));
            std::fs::write(&path, with_key(golden, key)).unwrap();
            (path, *golden)
        })
        .collect()
}

fn imported(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}.imported", path.display()))
}

fn sorted(mut v: Vec<Value>) -> Vec<Value> {
    v.sort_by_key(|x| x.to_string());
    v
}

#[test]
fn a_pdagent_queue_is_imported_whole_and_each_file_renamed() {
    let env = TestEnv::new();
    let _d = env.start();
    let rk = routing_key(86);
    let dir = env.dir.path().join("outqueue/pdq");
    let files = pdagent_queue(&dir, &rk);
    let bad = dir.join(format!("1480000000000099_{rk}.txt"));
    std::fs::write(&bad, r#"{"event_type":"trigger","service_key":"#).unwrap();
    std::fs::write(dir.join("dequeue.lock"), "").unwrap();

    let out = env.command().args(["import-pdagent"]).arg(&dir).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "an invalid file: exit 2\n{stdout}\n{stderr}");
    assert!(
        stdout.ends_with(&format!(
            "imported 7 event(s); 1 invalid file(s) left in place; 0 skipped; from {}\n",
            dir.display()
        )),
        "{stdout}"
    );
    assert!(stderr.contains(&format!("{}: not a valid event", bad.display())), "{stderr}");
    for (path, _) in &files {
        assert!(!path.exists() && imported(path).exists(), "{} renamed", path.display());
    }
    assert!(bad.exists(), "the invalid file is left as it was");

    let got = env.fake.wait_accepted(7, WAIT);
    assert!(got.iter().all(|r| r.path == V1_PATH));
    let want: Vec<Value> = files.iter().map(|(_, golden)| sent_body(golden, &rk)).collect();
    assert_eq!(sorted(got.iter().map(|r| r.body.clone()).collect()), sorted(want));
    // The \u00e9 escape arrives as the character.
    assert_eq!(find(&got, "incident_key", "server.fire")[0].body["description"], "é");
    // Per incident key, the queue's order: trigger before resolve.
    for key in ["13502-Zabbix server", "event_source=host;host_name=host.test.local"] {
        let types: Vec<&Value> = find(&got, "incident_key", key).iter().map(|r| &r.body["event_type"]).collect();
        assert_eq!(types, [&json!("trigger"), &json!("resolve")], "{key}");
    }

    // Run again: nothing more is imported; without the bad file, exit 0.
    std::fs::remove_file(&bad).unwrap();
    let out = env.command().args(["import-pdagent"]).arg(&dir).output().unwrap();
    assert!(ok(&out).ends_with(&format!(
        "imported 0 event(s); 0 invalid file(s) left in place; 0 skipped; from {}\n",
        dir.display()
    )));
    assert_eq!(env.fake.accepted().len(), 7);
}

#[test]
fn import_with_the_daemon_stopped_goes_through_the_spool_and_dry_run_changes_nothing() {
    let env = TestEnv::new();
    let rk = routing_key(87);
    let dir = env.dir.path().join("outqueue/pdq");
    let files = pdagent_queue(&dir, &rk);
    let out = env.command().args(["import-pdagent", "--dry-run"]).arg(&dir).output().unwrap();
    let stdout = ok(&out);
    assert!(stdout.contains("would import 7 event(s)"), "{stdout}");
    assert!(files.iter().all(|(p, _)| p.exists()));
    assert!(env.spool_files().is_empty());

    let out = env.command().args(["import-pdagent"]).arg(&dir).output().unwrap();
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("did not answer"));
    assert!(files.iter().all(|(p, _)| imported(p).exists()));
    assert_eq!(env.spool_files().len(), 7, "one durable drop-file per event");

    let _d = env.start();
    let got = env.fake.wait_accepted(7, WAIT);
    let want: Vec<Value> = files.iter().map(|(_, golden)| sent_body(golden, &rk)).collect();
    assert_eq!(sorted(got.iter().map(|r| r.body.clone()).collect()), sorted(want));
    // A missing directory is bad usage.
    let out = env.command().args(["import-pdagent"]).arg(env.dir.path().join("nope")).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

// ---------------------------------------------------------------------------------------------
// The golden corpus: what pdagent's own tools did with each of its command lines
// (shared/reference/pdagent-golden/cases.jsonl, read as its README says).

const GOLDEN_CASES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/reference/pdagent-golden/cases.jsonl");

/// One golden case.
struct Case {
    name: String,
    command: String,
    args: Vec<String>,
    stdin: Option<String>,
    exit: i64,
    stdout: String,
    queued: Vec<Value>,
}

fn golden_cases() -> Vec<Case> {
    let text = std::fs::read_to_string(GOLDEN_CASES).unwrap_or_else(|e| panic!("{GOLDEN_CASES}: {e}"));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            Case {
                name: v["name"].as_str().unwrap().to_owned(),
                command: v["command"].as_str().unwrap().to_owned(),
                args: v["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_owned()).collect(),
                stdin: v["stdin"].as_str().map(str::to_owned),
                exit: v["pdagent"]["exit"].as_i64().unwrap(),
                stdout: v["pdagent"]["stdout"].as_str().unwrap().to_owned(),
                queued: v["pdagent"]["queued"].as_array().unwrap().clone(),
            }
        })
        .collect()
}

/// How pdrelay deliberately differs from pdagent on one golden case. Each names the sentence of
/// the README's "Migrating from pdagent" that says so (the test checks the README has it).
#[derive(Clone, Copy)]
enum Differs {
    /// pdagent queued the event; pdrelay refuses the command line (exit 2, nothing stored).
    Refuses(&'static str),
    /// pdagent failed or queued nothing; pdrelay accepts the command line and sends an event.
    Accepts(&'static str),
    /// pdagent queued the event; pdrelay sends it with this change, made to pdagent's event
    /// before comparing (the incident key is compared after the change too).
    Sends(&'static str, fn(&mut Value)),
}

/// README sentences (in "Migrating from pdagent") naming each difference.
const README_SHORT_KEY: &str = "A service key that is not 32 letters and digits";
const README_EVENT_TYPE: &str = "pd-zabbix queued its SUBJECT as the event type";
const README_EMPTY_I: &str = "pd-sensu's `-i ''` queued an empty incident key";
const README_NUMBER_KEY: &str = "a number as pd-sensu's incident key";
const README_BETTER: &str = "Where the old tools crashed or refused";
const README_DASH: &str = "A value that starts with a dash";
const README_CONTEXT: &str = "pd-send 1.7.4 had no `-x`";
const README_LOWER: &str = "notification type in lower case";
const README_TUPLE: &str = "pd-nagios printed the incident key as a Python tuple";

/// The golden cases on which pdrelay differs, with the README's reason.
fn differs(name: &str) -> Option<Differs> {
    Some(match name {
        "n2-key-short" | "send-short-key" | "sen-short-key" | "zab-short-key" => Differs::Refuses(README_SHORT_KEY),
        "zab-other-subject" => Differs::Sends(README_EVENT_TYPE, |e| e["event_type"] = json!("trigger")),
        "zab-other-subject-ok" => Differs::Sends(README_EVENT_TYPE, |e| e["event_type"] = json!("resolve")),
        "t3-sensu-empty-i" => Differs::Sends(README_EMPTY_I, |e| {
            e["incident_key"] = json!("w/c");
            e["description"] = json!("w/c : o");
        }),
        "se2-id-number" => Differs::Sends(README_NUMBER_KEY, |e| e["incident_key"] = json!("42")),
        // pd-send's argparse refused a dash-led word as a value; pdrelay takes it.
        "s2-dash-word" => Differs::Accepts(README_DASH),
        "s2-x-link" => Differs::Accepts(README_CONTEXT),
        "nag-lower-type" => Differs::Accepts(README_LOWER),
        // pdagent crashed (a KeyError or ValueError) or queued nothing.
        "sen-go" | "sen-noaction" | "sen-noaction-ok" | "zab-resolve-noname" => Differs::Accepts(README_BETTER),
        _ => return None,
    })
}

/// The Events API v1 event pdrelay sends for what pdagent queued, with the differences every
/// event has: empty optional fields left out, description cut to 1024 characters, an incident
/// key longer than 255 characters shortened, the case's own difference applied.
fn expected_v1(case: &Case, queued: &Value) -> Value {
    let mut v = queued.clone();
    if let Some(Differs::Sends(_, change)) = differs(&case.name) {
        change(&mut v);
    }
    let obj = v.as_object_mut().unwrap();
    obj.retain(|k, value| match k.as_str() {
        "client" | "client_url" => value != "",
        "details" => value != &json!({}),
        _ => true,
    });
    if let Some(Value::String(d)) = obj.get_mut("description") {
        pdrelay::event::truncate_chars(d, pdrelay::event::MAX_SUMMARY_CHARS);
    }
    if let Some(Value::String(k)) = obj.get_mut("incident_key") {
        *k = pdrelay::event::fit_dedup_key(k.clone());
    }
    obj.insert("service_key".into(), json!(obj["service_key"].as_str().unwrap().trim()));
    v
}

/// The command that sends `case` as an Events API v1 event: `pdrelay send --api v1`,
/// `pdrelay nagios --api v1`, `pdrelay zabbix --api v1`, `pdrelay sensu --api v1`.
fn v1_command(env: &TestEnv, case: &Case) -> Command {
    let mut c = env.command();
    c.stdin(Stdio::null());
    match case.command.as_str() {
        "pd-send" => c.args(["send", "--api", "v1"]).args(&case.args),
        "pd-nagios" => c.args(["nagios", "--api", "v1"]).args(&case.args),
        "pd-zabbix" => c.args(["zabbix", "--api", "v1", "--"]).args(&case.args),
        "pd-sensu" => c.args(["sensu", "--api", "v1"]).args(&case.args),
        other => panic!("unknown command {other}"),
    };
    c
}

fn describe(case: &Case, how: &str, out: &Output) -> String {
    format!(
        "case {} ({how} {:?}): exit {:?}\nstdout: {}\nstderr: {}",
        case.name,
        case.args,
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn every_pdagent_golden_case_through_the_wrappers_and_api_v1() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let migrating = readme.split("## Migrating from pdagent").nth(1).unwrap().split("\n## ").next().unwrap();
    let env = TestEnv::new();
    let _d = env.start();
    let cases = golden_cases();
    assert!(cases.len() >= 117, "{} cases", cases.len());
    let mut delivered = 0;
    let mut failures = Vec::new();
    for case in &cases {
        let diff = differs(&case.name);
        if let Some(Differs::Refuses(why) | Differs::Accepts(why) | Differs::Sends(why, _)) = diff {
            if !migrating.contains(why) {
                failures.push(format!("case {}: README \"Migrating from pdagent\" must say: {why}", case.name));
            }
        }
        let pdagent_sent = case.exit == 0 && !case.queued.is_empty();
        let accepts = match diff {
            Some(Differs::Refuses(_)) => false,
            Some(Differs::Accepts(_)) => true,
            _ => pdagent_sent,
        };
        let mut wrapped = wrapper(&env, &case.command);
        wrapped.args(&case.args);
        for (how, command) in [("wrapper", wrapped), ("--api v1", v1_command(&env, case))] {
            let out = run(command, case.stdin.as_deref());
            if !accepts {
                if out.status.success() {
                    failures.push(format!("accepted what pdrelay should refuse: {}", describe(case, how, &out)));
                    delivered += 1;
                    env.fake.wait_accepted(delivered, WAIT);
                } else if out.status.code() != Some(2) {
                    failures.push(format!("refused with another exit code than 2: {}", describe(case, how, &out)));
                }
                continue;
            }
            if !out.status.success() {
                failures.push(describe(case, how, &out));
                continue;
            }
            delivered += 1;
            let got = env.fake.wait_accepted(delivered, WAIT);
            let body = &got[delivered - 1].body;
            let Some(queued) = case.queued.first().filter(|_| pdagent_sent) else { continue };
            let want = expected_v1(case, queued);
            let stdout = String::from_utf8_lossy(&out.stdout);
            if how == "wrapper" {
                // pd-nagios printed its key as a Python tuple, `('KEY', [])`; the wrapper prints KEY.
                let tuple = format!("('{}', [])", queued["incident_key"].as_str().unwrap_or_default());
                let pdagent_stdout = case.stdout.replace(&tuple, queued["incident_key"].as_str().unwrap_or_default());
                if pdagent_stdout != case.stdout && !migrating.contains(README_TUPLE) {
                    failures.push(format!("case {}: README must say: {README_TUPLE}", case.name));
                }
                let want_stdout = pdagent_stdout.replace(
                    &format!("Incident Key: {}", queued["incident_key"].as_str().unwrap_or_default()),
                    &format!("Incident Key: {}", want["incident_key"].as_str().unwrap_or_default()),
                );
                if stdout != want_stdout {
                    failures.push(format!("stdout {stdout:?}, pdagent {want_stdout:?}: {}", describe(case, how, &out)));
                }
            }
            if how == "wrapper" && case.command != "pd-send" {
                // v2: the same incident key.
                if body["dedup_key"] != want["incident_key"] {
                    failures.push(format!(
                        "case {}: dedup_key {}, pdagent {}",
                        case.name, body["dedup_key"], want["incident_key"]
                    ));
                }
            } else if *body != want {
                failures.push(format!("case {} ({how}): sent\n  {body}\npdagent queued\n  {want}", case.name));
            }
        }
    }
    assert!(failures.is_empty(), "{} failure(s):\n{}", failures.len(), failures.join("\n\n"));
    assert_eq!(env.fake.accepted().len(), delivered);
}

/// argparse habits that scripts written for pdagent rely on, beyond the golden corpus:
/// abbreviations of long options, a flag given twice, an empty field name, dash-led values, and
/// pd-nagios's long options abbreviated through the wrapper.
#[test]
fn pdagent_argparse_habits_are_kept() {
    let env = TestEnv::new();
    let _d = env.start();
    let rk = routing_key(88);
    let out = wrap(
        &env,
        "pd-send",
        &["--serv", &rk, "--event", "trigger", "--desc", "first", "--desc=--- WARNING ---", "--inc", "-abc def"],
    );
    assert_eq!(ok(&out), "Event processed. Incident Key: -abc def\n");
    let out = wrap(&env, "pd-send", &["-k", &rk, "-t", "trigger", "-d", "f", "-i", "fields", "-f", "=v", "-f", "k="]);
    ok(&out);
    // pd-nagios's --event-type and --notification-type, abbreviated, through the wrapper.
    let out = wrap(
        &env,
        "pd-nagios",
        &["--serv", &rk, "--event=PROBLEM", "--notif", "host", "-f", "HOSTNAME=", "-f", "HOSTSTATE=DOWN"],
    );
    assert_eq!(ok(&out), "Event processed. Incident Key: event_source=host;host_name=\n");
    // An abbreviation pdrelay's longer option list makes ambiguous is refused, naming it.
    let out = wrap(&env, "pd-send", &["-k", &rk, "-t", "trigger", "--d", "x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--d"));

    let got = env.fake.wait_accepted(3, WAIT);
    assert_eq!(got[0].body["description"], "--- WARNING ---");
    assert_eq!(got[0].body["incident_key"], "-abc def");
    assert_eq!(got[1].body["details"], json!({"": "v", "k": ""}));
    assert_eq!(got[2].body["dedup_key"], "event_source=host;host_name=");
    assert_eq!(got[2].body["event_action"], "trigger");
    assert_eq!(env.fake.accepted().len(), 3);
}
