//! The socket under load and abuse, and `pdrelay queue` with the daemon running and stopped.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde_json::{json, Value};

use crate::fake_api::Fault;
use crate::support::*;

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn ten_thousand_pipelined_lines_are_all_acknowledged_and_delivered() {
    let env = TestEnv::with_config("[pagerduty]\nconcurrency = 32\n");
    let _d = env.start();
    let total = 10_000;
    let stream = UnixStream::connect(&env.socket).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let rk = routing_key(20);
    let sender = std::thread::spawn(move || {
        let mut buf = Vec::new();
        for n in 0..total {
            let line = json!({"routing_key": rk, "event_action": "trigger", "dedup_key": format!("k{}", n % 500),
                "payload": {"summary": format!("event {n}"), "source": "h", "severity": "info"}});
            buf.extend_from_slice(line.to_string().as_bytes());
            buf.push(b'\n');
        }
        writer.write_all(&buf).unwrap();
    });
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut reader = BufReader::new(stream);
    let mut ids = std::collections::HashSet::new();
    for i in 0..total {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let reply: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("reply {i}: {line:?}: {e}"));
        assert_eq!(reply["ok"], true, "{reply}");
        ids.insert(reply["id"].as_str().unwrap().to_owned());
    }
    sender.join().unwrap();
    assert_eq!(ids.len(), total);
    let got = env.fake.wait_accepted(total, Duration::from_secs(180));
    assert_eq!(got.len(), total);
}

#[test]
fn each_line_gets_the_right_reply_and_an_oversize_line_closes_the_connection() {
    let env = TestEnv::with_config("[ingest]\nmax_line_bytes = 8192\n");
    let _d = env.start();
    let mut c = env.connect();
    let rk = routing_key(21);
    c.send_line(&trigger(&rk, "a", "fine"));
    c.send_line("{\"broken\": ");
    c.send_line("");
    c.send_line(&json!({"routing_key": rk, "event_action": "trigger", "payload": {"summary": 5}}).to_string());
    c.send_line("[]");
    c.send_line(&json!({"routing_key": rk, "payload": {"summary": "a change"}}).to_string());
    c.send_line(&"x".repeat(20_000));
    c.send_line(&trigger(&rk, "after", "never read"));
    let replies: Vec<Value> = (0..6).map(|_| c.read_reply()).collect();
    assert_eq!(replies[0]["ok"], true);
    assert_eq!(replies[0]["dedup_key"], "a");
    assert_eq!(replies[1]["code"], "invalid");
    assert!(replies[1]["error"].as_str().unwrap().starts_with("event: is not valid JSON"));
    assert_eq!(replies[2]["code"], "invalid");
    assert!(replies[2]["error"].as_str().unwrap().starts_with("payload.summary: invalid type"), "{}", replies[2]);
    assert_eq!(replies[3]["error"], "event: must be a JSON object");
    assert_eq!(replies[4]["ok"], true, "a change event: {}", replies[4]);
    assert!(replies[4].get("dedup_key").is_none());
    assert_eq!(replies[5]["code"], "too_long");
    let mut rest = String::new();
    c.reader.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "", "closed after the oversize line");
    // The daemon is still healthy.
    let mut c2 = env.connect();
    c2.send_line(&trigger(&rk, "b", "still fine"));
    assert_eq!(c2.read_reply()["ok"], true);
    env.fake.wait_accepted(3, WAIT);
}

#[test]
fn a_stalled_client_does_not_delay_another() {
    let env = TestEnv::with_config("[ingest]\nline_timeout = \"60s\"\nidle_timeout = \"60s\"\n");
    let _d = env.start();
    let rk = routing_key(22);
    // One client stops in the middle of a line; another floods lines and never reads replies.
    let mut half = UnixStream::connect(&env.socket).unwrap();
    half.write_all(br#"{"routing_key":"#).unwrap();
    let mut flooder = UnixStream::connect(&env.socket).unwrap();
    flooder.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let line = format!("{}\n", trigger(&rk, "flood", "flood"));
    for _ in 0..20_000 {
        if flooder.write_all(line.as_bytes()).is_err() {
            break;
        }
    }
    // A third client is served at once (its read deadline is far below the stalls' timeouts).
    let mut c = env.connect();
    c.reader.get_ref().set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.send_line(&trigger(&rk, "prompt", "served despite the others"));
    let reply = c.read_reply();
    assert_eq!(reply["ok"], true);
    assert_eq!(reply["dedup_key"], "prompt");
    drop(half);
    drop(flooder);
}

#[test]
fn connections_past_the_cap_get_a_busy_reply() {
    let env = TestEnv::with_config("[ingest]\nmax_connections = 2\n");
    let _d = env.start();
    // Fill both slots (the start-up probe's connection may hold one for a moment).
    let mut a = env.connect();
    a.send_line(&trigger(&routing_key(23), "a", "a"));
    assert_eq!(a.read_reply()["ok"], true);
    let mut b = None;
    wait_until("a second connection is served", WAIT, || {
        let mut c = env.connect();
        c.send_line(&trigger(&routing_key(23), "b", "b"));
        let served = c.read_reply()["ok"] == true;
        if served {
            b = Some(c);
        }
        served
    });
    let mut third = env.connect();
    let reply = third.read_reply();
    assert_eq!(reply["code"], "busy", "{reply}");
    drop(a);
    wait_until("a slot frees up", WAIT, || {
        let mut c = env.connect();
        c.send_line(&trigger(&routing_key(23), "c", "c"));
        c.read_reply()["ok"] == true
    });
}

#[test]
fn unfinished_lines_and_idle_connections_are_closed() {
    let env = TestEnv::with_config("[ingest]\nline_timeout = \"300ms\"\nidle_timeout = \"500ms\"\n");
    let _d = env.start();
    let mut partial = env.connect();
    partial.writer.write_all(b"{\"event_action\":").unwrap();
    let reply = partial.read_reply();
    assert_eq!(reply["code"], "timeout", "{reply}");
    let mut idle = env.connect();
    let mut rest = String::new();
    idle.reader.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "", "an idle connection is closed without a reply");
}

#[test]
fn a_stale_socket_file_is_replaced() {
    let env = TestEnv::new();
    std::fs::create_dir_all(env.socket.parent().unwrap()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&env.socket).unwrap());
    assert!(env.socket.exists());
    let _d = env.start();
    let mut c = env.connect();
    c.send_line(&trigger(&routing_key(24), "s", "after a crash"));
    assert_eq!(c.read_reply()["ok"], true);
}

#[test]
fn queue_commands_work_with_the_daemon_running_and_stopped() {
    let env = TestEnv::new();
    let d = env.start();
    let rk = routing_key(25);
    env.fake.push_fault(Fault::Status(400));
    let mut c = env.connect();
    c.send_line(&trigger(&rk, "refused", "refused once"));
    let failed_id = c.read_reply()["id"].as_str().unwrap().to_owned();
    wait_until("the 400 recorded", WAIT, || env.fake.requests() >= 1);
    c.send_line(&trigger(&rk, "ok", "delivered"));
    c.read_reply();
    env.fake.wait_accepted(1, WAIT);
    wait_until("status shows one failed, one delivered", WAIT, || {
        let s = env.queue_json(&["status"]);
        s["total"]["failed"] == 1 && s["total"]["delivered"] == 1
    });
    let status = env.queue_json(&["status"]);
    assert_eq!(status["routing_keys"][0][0], "R00000…");
    assert!(status["last_success"].is_array());
    assert!(status["last_error"][1].as_str().unwrap().contains("HTTP 400"));
    let failed = env.queue_json(&["list", "--state", "failed"]);
    assert_eq!(failed.as_array().unwrap().len(), 1);
    assert_eq!(failed[0]["id"], failed_id.as_str());
    let shown = env.queue_json(&["show", &failed_id]);
    assert_eq!(shown["errors"], json!(["injected"]));
    assert_eq!(shown["last_status"], 400);
    // Human output names the columns.
    let out = env.command().args(["queue", "list"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ID "));
    // Unknown id: exit 2.
    let out = env.command().args(["queue", "show", "nope"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    // Retry puts it back; the fake now accepts it.
    assert_eq!(env.queue_json(&["retry", &failed_id]), 1);
    let got = env.fake.wait_accepted(2, WAIT);
    assert!(got.iter().any(|r| r.body["dedup_key"] == "refused"));
    wait_until("both delivered", WAIT, || env.queue_json(&["status"])["total"]["delivered"] == 2);
    d.terminate(Duration::from_secs(10));
    // Stopped: the CLI opens the store itself.
    let status = env.queue_json(&["status"]);
    assert_eq!(status["total"]["delivered"], 2);
    assert_eq!(env.queue_json(&["purge", "--state", "delivered"]), 2);
    assert_eq!(env.queue_json(&["list"]), json!([]));
    let out = env.command().args(["queue", "retry"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "retry needs an id, --all or --routing-key");
}

#[test]
fn queue_administration_is_refused_to_other_users() {
    let env = TestEnv::with_config("[ingest]\nsocket_mode = \"0666\"\n");
    for dir in [env.dir.path().to_owned(), env.socket.parent().unwrap().to_owned()] {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&env.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let _d = env.start();
    let as_nobody = |args: &[&str]| {
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN])
            .args(args)
            .env("PDRELAY_CONFIG", &env.config)
            .output()
            .unwrap()
    };
    // Sending is open to the socket's users...
    let out = as_nobody(&["send", "-k", &routing_key(26), "-t", "trigger", "-d", "from nobody"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // ...administration is not: the admin socket's mode stops it,
    let out = as_nobody(&["queue", "purge", "--state", "delivered"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // and so does the daemon's own uid check, should the mode be loosened.
    let admin = env.dir.path().join("run/admin.sock");
    std::fs::set_permissions(&admin, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_nobody(&["queue", "purge", "--state", "delivered"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("permission denied: queue administration is for root"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Root still may.
    assert!(env.queue_json(&["status"]).is_object());
}

#[test]
fn retention_removes_old_records_and_expires_what_waited_too_long() {
    let env = TestEnv::with_config(
        "[retention]\ndelivered = \"300ms\"\nmax_pending_age = \"1s\"\nsweep_interval = \"200ms\"\n",
    );
    let _d = env.start();
    let rk = routing_key(27);
    let mut c = env.connect();
    c.send_line(&trigger(&rk, "d", "delivered then removed"));
    let delivered_id = c.read_reply()["id"].as_str().unwrap().to_owned();
    env.fake.wait_accepted(1, WAIT);
    wait_until("delivered record removed", WAIT, || {
        let out = env.command().args(["queue", "show", &delivered_id]).output().unwrap();
        out.status.code() == Some(2)
    });
    env.fake.set_down(true);
    c.send_line(&trigger(&rk, "x", "never delivered"));
    let expired_id = c.read_reply()["id"].as_str().unwrap().to_owned();
    wait_until("pending event expired", WAIT, || {
        let failed = env.queue_json(&["list", "--state", "failed"]);
        failed
            .as_array()
            .is_some_and(|a| a.iter().any(|r| r["id"] == expired_id.as_str() && r["last_error"] == "expired"))
    });
    env.fake.set_down(false);
    std::thread::sleep(Duration::from_millis(500));
    assert!(env.fake.accepted().iter().all(|r| r.body["dedup_key"] != "x"), "an expired event is not sent");
}

#[test]
fn show_names_the_state_as_list_and_status_do_and_shortens_the_key_throughout() {
    // A failed attempt and an hour to the next: the event waits, stably.
    let env = TestEnv::with_config("[retry]\ninitial_interval = \"1h\"\nmax_interval = \"1h\"\n");
    env.fake.set_down(true);
    let _d = env.start();
    let rk = routing_key(61);
    let mut c = env.connect();
    c.send_line(&trigger(&rk, "w", "waits for its retry"));
    let id = c.read_reply()["id"].as_str().unwrap().to_owned();
    wait_until("the event waits for its retry", WAIT, || {
        let list = env.queue_json(&["list"]);
        list.as_array().is_some_and(|a| a.iter().any(|r| r["id"] == id.as_str() && r["state"] == "waiting"))
    });
    let status = env.command().args(["queue", "status"]).output().unwrap();
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(status.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["waiting", "1"]), "{status}");
    let out = env.command().args(["queue", "show", &id]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l == "state        waiting"), "{text}");
    assert!(!text.contains(&rk), "the routing key is shortened in the event too: {text}");
    assert!(text.contains(&format!("\"routing_key\": \"{}…\"", &rk[..6])), "{text}");
}

#[test]
fn a_config_only_its_group_may_read_names_the_group_to_join() {
    let env = TestEnv::new();
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&env.config, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN])
        .args(["send", "-k", &routing_key(62), "-t", "trigger", "-d", "x"])
        .env("PDRELAY_CONFIG", &env.config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Permission denied") && err.contains("hint:") && err.contains("usermod -aG"), "{err}");
}

#[test]
fn status_with_the_daemon_stopped_mentions_waiting_drop_files_and_purge_says_how_many() {
    let env = TestEnv::new();
    env.drop_file("a.json", &trigger(&routing_key(63), "a", "waits in the spool"));
    let out = env.command().args(["queue", "status"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("1 drop-file(s) waiting in"), "{text}");
    let out = env.command().args(["queue", "purge", "--state", "delivered"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("the queue holds 0 delivered event(s); removing all of them"), "{text}");
    assert!(text.contains("removed 0 delivered event(s)"), "{text}");
}
