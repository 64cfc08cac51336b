//! Intake's edges against careless and hostile producers (issue 13, items 8 to 11): ambiguous
//! event shapes, numbers past 2^64, oversize headers and HTTP clients that never read, config
//! values without bounds, allow-list entries that could never match.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{json, Value};

use crate::http::{http_addr, http_env};
use crate::support::*;

const WAIT: Duration = Duration::from_secs(30);

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    s
}

/// The status and body of the one response on a `Connection: close` exchange.
fn read_status(stream: &mut TcpStream) -> (u16, String) {
    let mut raw = Vec::new();
    if let Err(e) = stream.read_to_end(&mut raw) {
        assert!(!raw.is_empty(), "no response: {e}");
    }
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("not HTTP: {text:?}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// POSTs `body` to `path` with `extra_headers` (each ending in CRLF), on its own connection.
/// Write errors are ignored: a server may answer and close before reading everything.
fn post_with(addr: SocketAddr, path: &str, extra_headers: &str, body: &[u8]) -> (u16, String) {
    let mut s = connect(addr);
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n{extra_headers}\r\n",
        body.len()
    );
    let mut all = head.into_bytes();
    all.extend_from_slice(body);
    let _ = s.write_all(&all);
    read_status(&mut s)
}

fn v2_trigger(rk: &str, dedup: &str) -> Value {
    json!({"routing_key": rk, "event_action": "trigger", "dedup_key": dedup,
        "payload": {"summary": "edge", "source": "web1", "severity": "critical"}})
}

// Item 8: ambiguous shapes.

#[test]
fn an_event_with_both_event_action_and_event_type_is_refused_naming_both() {
    let default_key = routing_key(130);
    let env = TestEnv::with_config(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n[pagerduty]\ndefault_routing_key = \"{default_key}\"\n"
    ));
    let _d = env.start();
    let own_key = routing_key(131);
    let mut c = env.connect();
    let mixed = json!({"routing_key": own_key, "event_action": "trigger", "event_type": "trigger",
        "dedup_key": "mixed", "payload": {"summary": "both", "source": "web1", "severity": "critical"}});
    c.send_line(&mixed.to_string());
    let reply = c.read_reply();
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["code"], "invalid", "{reply}");
    let error = reply["error"].as_str().unwrap();
    assert!(error.contains("event_type") && error.contains("event_action"), "{error}");
    assert!(!error.contains('\n'));

    // With a description too, it used to go out as v1 to the default key, without its own key,
    // payload and severity.
    let mut with_description = mixed.clone();
    with_description["description"] = json!("both, described");
    c.send_line(&with_description.to_string());
    let reply = c.read_reply();
    assert_eq!(reply["code"], "invalid", "{reply}");
    let error = reply["error"].as_str().unwrap();
    assert!(error.contains("event_type") && error.contains("event_action"), "{error}");

    // routing_key with service_key, the other way round.
    c.send_line(
        &json!({"service_key": own_key, "routing_key": own_key, "event_type": "trigger",
        "description": "both keys"})
        .to_string(),
    );
    let reply = c.read_reply();
    let error = reply["error"].as_str().unwrap();
    assert!(error.contains("service_key") && error.contains("routing_key"), "{reply}");

    // The local HTTP endpoint says the same, whatever the endpoint.
    let addr = http_addr(&env);
    for path in ["/v2/enqueue", "/generic/2010-04-15/create_event.json", "/v2/change/enqueue"] {
        let (status, body) = post_with(addr, path, "", mixed.to_string().as_bytes());
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("event_type") && body.contains("event_action"), "{path}: {body}");
    }

    // Nothing went anywhere: a clean event behind them is the first and only one delivered.
    c.send_line(&v2_trigger(&own_key, "clean").to_string());
    assert_eq!(c.read_reply()["ok"], true);
    let got = env.fake.wait_accepted(1, WAIT);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(env.fake.accepted().len(), 1, "only the clean event");
    assert_eq!(got[0].body["dedup_key"], "clean");
}

// Item 11: numbers past 2^64.

#[test]
fn integers_past_2_64_in_custom_details_reach_pagerduty_exactly() {
    let env = TestEnv::new();
    let _d = env.start();
    let rk = routing_key(132);
    let mut c = env.connect();
    let line = format!(
        r#"{{"routing_key":"{rk}","event_action":"trigger","dedup_key":"big","payload":{{"summary":"big numbers","source":"h","severity":"info","custom_details":{{"n":18446744073709551617,"neg":-18446744073709551617,"fine":7}}}}}}"#
    );
    c.send_line(&line);
    assert_eq!(c.read_reply()["ok"], true);
    let got = env.fake.wait_accepted(1, WAIT);
    let details = &got[0].body["payload"]["custom_details"];
    assert_eq!(details["n"].to_string(), "18446744073709551617", "{details}");
    assert_eq!(details["neg"].to_string(), "-18446744073709551617", "{details}");
    assert_eq!(details["fine"].to_string(), "7");

    // A number past a double's range is refused, naming its field.
    c.send_line(&line.replace(r#""n":18446744073709551617"#, r#""n":1e400"#));
    let reply = c.read_reply();
    assert_eq!(reply["code"], "invalid", "{reply}");
    assert!(reply["error"].as_str().unwrap().starts_with("payload.custom_details.n: "), "{reply}");
}

// Item 11: the header limit.

#[test]
fn a_header_block_over_64_kb_gets_431() {
    let env = http_env("");
    let _d = env.start();
    let addr = http_addr(&env);
    let rk = routing_key(133);
    for (size, want) in [(60 * 1024, 202), (66 * 1024, 431), (114 * 1024, 431)] {
        let header = format!("X-Padding: {}\r\n", "a".repeat(size));
        let (status, body) =
            post_with(addr, "/v2/enqueue", &header, v2_trigger(&rk, &format!("h{size}")).to_string().as_bytes());
        assert_eq!(status, want, "a {size}-byte header: {body}");
    }
    // Many headers adding up to more than 64 KB are refused the same way.
    let headers: String = (0..40).map(|i| format!("X-Pad-{i}: {}\r\n", "b".repeat(2000))).collect();
    let (status, _) = post_with(addr, "/v2/enqueue", &headers, v2_trigger(&rk, "many").to_string().as_bytes());
    assert_eq!(status, 431);
    let got = env.fake.wait_accepted(1, WAIT);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(env.fake.accepted().len(), 1, "only the event with the 60 KB header is stored");
    assert_eq!(got[0].body["dedup_key"], format!("h{}", 60 * 1024));
}

// Item 9: HTTP clients that never read.

/// A client that pipelines `GET /health` requests as fast as it can and never reads an answer:
/// the writer thread stops when a write fails (the server closed the connection).
fn pipeline_without_reading(addr: SocketAddr) -> (TcpStream, std::thread::JoinHandle<()>) {
    let stream = connect(addr);
    let mut writer = stream.try_clone().unwrap();
    let handle = std::thread::spawn(move || {
        let batch = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n".repeat(1000);
        for _ in 0..2000 {
            if writer.write_all(batch.as_bytes()).is_err() {
                return;
            }
        }
    });
    (stream, handle)
}

/// Whether the server has closed `stream`: reads (and drops) what is buffered until end of file
/// or a reset; false if it is still open after the stream's read timeout.
fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn clients_that_pipeline_and_never_read_do_not_hold_the_connections() {
    let env = http_env("max_connections = 2\nrequest_timeout = \"1s\"\n");
    let _d = env.start();
    let addr = http_addr(&env);
    let hostile: Vec<_> = (0..2).map(|_| pipeline_without_reading(addr)).collect();
    // They hold both slots: another client is turned away.
    wait_until("both connections taken", WAIT, || post_with(addr, "/v2/enqueue", "", b"{}").0 == 503);
    // A legitimate POST gets its answer once the silent readers are cut off (their writes stall
    // once the socket buffers fill, then request_timeout later), not minutes later.
    let rk = routing_key(134);
    let body = v2_trigger(&rk, "legit").to_string();
    let mut last = (0, String::new());
    wait_until("a legitimate POST answered 202", WAIT, || {
        last = post_with(addr, "/v2/enqueue", "", body.as_bytes());
        last.0 == 202
    });
    assert_eq!(env.fake.wait_accepted(1, WAIT)[0].body["dedup_key"], "legit");
    for (mut stream, writer) in hostile {
        assert!(closed_by_server(&mut stream), "the server keeps a non-reading client's connection");
        writer.join().unwrap();
    }
}

#[test]
fn a_client_that_reads_only_a_trickle_is_closed_within_a_few_request_timeouts() {
    let env = http_env("max_connections = 4\nrequest_timeout = \"1s\"\n");
    let _d = env.start();
    let addr = http_addr(&env);
    let (mut stream, writer) = pipeline_without_reading(addr);
    // Reads a little and often, so that the server's writes keep making progress and only the
    // connection's lifetime (4 request timeouts) ends it.
    let mut buf = vec![0u8; 16 * 1024];
    let end = std::time::Instant::now() + WAIT;
    let closed = loop {
        match stream.read(&mut buf) {
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => break false,
            Ok(0) | Err(_) => break true,
            Ok(_) if std::time::Instant::now() > end => break false,
            Ok(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    assert!(closed, "a slowly reading client held its connection for {WAIT:?}");
    writer.join().unwrap();
    // The listener serves others meanwhile and after.
    let (status, body) =
        post_with(addr, "/v2/enqueue", "", v2_trigger(&routing_key(135), "after").to_string().as_bytes());
    assert_eq!(status, 202, "{body}");
}

// Item 10: config bounds.

#[test]
fn values_that_would_crash_the_daemon_are_refused_before_it_starts() {
    let env = TestEnv::with_config(
        "[ingest]\nmax_connections = 9223372036854775807\n[http]\nlisten = \"127.0.0.1:0\"\n\
         max_connections = 9223372036854775807\n",
    );
    let out = env.command().arg("check-config").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stdout));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines,
        [
            "pdrelay: config: ingest.max_connections: must be between 1 and 65536 (got 9223372036854775807)",
            "pdrelay: config: http.max_connections: must be between 1 and 65536 (got 9223372036854775807)",
        ],
        "{stderr}"
    );
    // The daemon refuses the same config before it listens anywhere.
    let mut child = KillOnDrop(
        env.command()
            .arg("daemon")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut status = None;
    wait_until("the daemon exits", WAIT, || {
        status = child.0.try_wait().unwrap();
        status.is_some()
    });
    assert_eq!(status.unwrap().code(), Some(2));
    let mut stderr = String::new();
    child.0.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(stderr.contains("http.max_connections: must be between 1 and 65536"), "{stderr}");
    assert!(!env.socket.exists() && !env.state.join("http.addr").exists(), "it listened");
}

#[test]
fn an_ipv4_mapped_allow_entry_admits_its_client_and_an_unmatchable_one_is_refused() {
    let env = http_env("allow = [\"::ffff:127.0.0.1\"]\n");
    let _d = env.start();
    let addr = http_addr(&env);
    let mut s = connect(addr);
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let (status, body) = read_status(&mut s);
    assert_eq!(status, 200, "{body}");

    let env = http_env("allow = [\"::1\", \"10.0.0.0/8\", \"0.0.0.0\"]\n");
    let out = env.command().arg("check-config").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(lines[0].starts_with("pdrelay: config: http.allow: \"::1\" can never match: it is IPv6"), "{stderr}");
    assert!(
        lines[1].starts_with("pdrelay: config: http.allow: \"0.0.0.0\" can never match: it is the unspecified"),
        "{stderr}"
    );
}
