//! Regressions from the first break-it trial of the daemon (helper report, session 1).

use std::time::Duration;

use crate::support::*;

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn a_regular_file_at_the_socket_path_is_never_deleted() {
    let env = TestEnv::new();
    std::fs::create_dir_all(env.socket.parent().unwrap()).unwrap();
    std::fs::write(&env.socket, "precious").unwrap();
    let out = env.command().arg("daemon").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not a socket"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&env.socket).unwrap(), "precious");
}

#[test]
fn a_reused_spool_id_with_a_different_event_is_still_delivered() {
    let env = TestEnv::new();
    let _d = env.start();
    let rk = routing_key(50);
    let name = "0191e7a2-7c5e-7a41-9a0e-5f2d2b0c1d2f.json";
    env.drop_file(name, &trigger(&rk, "first", "UUID-first"));
    env.fake.wait_accepted(1, WAIT);
    wait_until("first file removed", WAIT, || env.spool_files().is_empty());
    env.drop_file(name, &trigger(&rk, "second", "UUID-second"));
    let got = env.fake.wait_accepted(2, WAIT);
    assert_eq!(got[1].body["payload"]["summary"], "UUID-second");
    // The same event under the same id again is the same hand-over: stored once.
    env.drop_file(name, &trigger(&rk, "first", "UUID-first"));
    wait_until("third file removed", WAIT, || env.spool_files().is_empty());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(env.fake.accepted().len(), 2);
}

#[test]
fn spool_entries_that_are_not_regular_files_are_quarantined() {
    let env = TestEnv::new();
    let _d = env.start();
    let target = env.dir.path().join("elsewhere.json");
    std::fs::write(&target, trigger(&routing_key(51), "s", "via a symlink")).unwrap();
    std::os::unix::fs::symlink(&target, env.spool.join("link.json")).unwrap();
    std::fs::create_dir(env.spool.join("dir.json")).unwrap();
    // A socket cannot even be opened (ENXIO): refused too, not retried every round.
    let _socket = std::os::unix::net::UnixListener::bind(env.spool.join("sock.json")).unwrap();
    let rejected = env.spool.join("rejected");
    wait_until("all three quarantined with reasons", WAIT, || {
        rejected.join("link.json.reason").exists()
            && rejected.join("dir.json.reason").exists()
            && rejected.join("sock.json.reason").exists()
    });
    assert!(std::fs::read_to_string(rejected.join("link.json.reason")).unwrap().contains("symbolic link"));
    assert!(std::fs::read_to_string(rejected.join("sock.json.reason")).unwrap().contains("not a regular file"));
    assert!(target.exists(), "the symlink's target is left alone");
    assert!(env.fake.accepted().is_empty());
}

#[test]
fn deeply_nested_details_are_refused_at_intake_not_after() {
    let env = TestEnv::new();
    let _d = env.start();
    let rk = routing_key(52);
    let mut c = env.connect();
    let nested = format!("{}1{}", "[".repeat(124), "]".repeat(124));
    c.send_line(&format!(
        r#"{{"routing_key":"{rk}","event_action":"trigger","payload":{{"summary":"x","custom_details":{nested}}}}}"#
    ));
    let reply = c.read_reply();
    assert_eq!(reply["code"], "invalid", "{reply}");
    // The daemon keeps delivering.
    c.send_line(&trigger(&rk, "after", "after the deep one"));
    assert_eq!(c.read_reply()["ok"], true);
    env.fake.wait_accepted(1, WAIT);
}
