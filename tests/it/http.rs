//! The local Events API endpoint (`[http]`): real HTTP clients on 127.0.0.1 against the daemon's
//! listener, the fake Events API behind it.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(30);

/// A test-only certificate for 127.0.0.1 and localhost (self-signed, CA:FALSE, valid 2000-2100),
/// and its key. Nothing else trusts it.
pub(crate) const TEST_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBhTCCASygAwIBAgIBATAKBggqhkjOPQQDAjAUMRIwEAYDVQQDDAlsb2NhbGhv
c3QwIBcNMDAwMTAxMDAwMDAwWhgPMjEwMDAxMDEwMDAwMDBaMBQxEjAQBgNVBAMM
CWxvY2FsaG9zdDBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABEFwFtiA2kcxblKu
FzRtuF3SsAUvcHPey/4FHqZr+Jr86RIKWbAugwoREwVUEoymTfHCRtEwayIZUne9
VML2S0+jbTBrMBoGA1UdEQQTMBGHBH8AAAGCCWxvY2FsaG9zdDAMBgNVHRMBAf8E
AjAAMAsGA1UdDwQEAwIHgDATBgNVHSUEDDAKBggrBgEFBQcDATAdBgNVHQ4EFgQU
BvGgArAAZd+BTa+tVyXklz14hD0wCgYIKoZIzj0EAwIDRwAwRAIgcFYMtjNxSCqG
tdVzYTNr7iawx1YnsqIphRYJEC1W6zMCIGEHE9m5jqJEGJCoilrmKvCvZIioeA8Q
NkSSdHigLTRr
-----END CERTIFICATE-----
";
pub(crate) const TEST_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgCTq2qCzMKMGZv6yZ
5F31qM6fhxFtH7GcW044X/o0VeKhRANCAARBcBbYgNpHMW5Srhc0bbhd0rAFL3Bz
3sv+BR6ma/ia/OkSClmwLoMKERMFVBKMpk3xwkbRMGsiGVJ3vVTC9ktP
-----END PRIVATE KEY-----
";

/// A TestEnv with the listener on 127.0.0.1, an ephemeral port; `extra` goes under `[http]`.
pub(crate) fn http_env(extra: &str) -> TestEnv {
    TestEnv::with_config(&format!("[http]\nlisten = \"127.0.0.1:0\"\n{extra}"))
}

/// The address the running daemon's listener is bound to (from `state_dir/http.addr`, which is
/// written before the socket answers).
pub(crate) fn http_addr(env: &TestEnv) -> SocketAddr {
    let file = env.state.join("http.addr");
    let mut addr = None;
    wait_until("state_dir/http.addr", WAIT, || {
        addr = std::fs::read_to_string(&file).ok().and_then(|s| s.trim().parse().ok());
        addr.is_some()
    });
    addr.unwrap()
}

/// A parsed HTTP/1.1 response.
#[derive(Debug)]
struct HttpReply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl HttpReply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{} body {:?}: {e}", self.status, String::from_utf8_lossy(&self.body)))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    s
}

/// Reads a whole response (the connection is closed after it) and parses it.
fn read_reply(stream: &mut TcpStream) -> HttpReply {
    let mut raw = Vec::new();
    if let Err(e) = stream.read_to_end(&mut raw) {
        assert!(!raw.is_empty(), "no response: {e}");
    }
    parse_reply(&raw)
}

fn parse_reply(raw: &[u8]) -> HttpReply {
    let text = String::from_utf8_lossy(raw);
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else { panic!("not an HTTP response: {text:?}") };
    let head = String::from_utf8_lossy(&raw[..end]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())).collect();
    let mut body = raw[end + 4..].to_vec();
    if let Some((_, n)) = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("content-length")) {
        body.truncate(n.parse().unwrap());
    }
    HttpReply { status, headers, body }
}

/// One request on its own connection (`Connection: close`).
fn request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> HttpReply {
    let mut s = connect(addr);
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    read_reply(&mut s)
}

fn post(addr: SocketAddr, path: &str, body: &Value) -> HttpReply {
    request(addr, "POST", path, body.to_string().as_bytes())
}

fn v2(rk: &str, action: &str, dedup: Option<&str>, summary: &str) -> Value {
    let mut v = json!({"routing_key": rk, "event_action": action,
        "payload": {"summary": summary, "source": "web1", "severity": "critical"}});
    if let Some(d) = dedup {
        v["dedup_key"] = json!(d);
    }
    v
}

fn health(addr: SocketAddr) -> Value {
    let r = request(addr, "GET", "/health", b"");
    assert_eq!(r.status, 200, "{r:?}");
    r.json()
}

#[test]
fn events_of_each_kind_get_pagerduty_answers_and_are_delivered() {
    let env = http_env("");
    let _d = env.start();
    let addr = http_addr(&env);
    let rk = routing_key(1);

    let r = post(addr, "/v2/enqueue", &v2(&rk, "trigger", Some("disk/web1"), "Disk full on web1"));
    assert_eq!(r.status, 202);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json(), json!({"status": "success", "message": "Event processed", "dedup_key": "disk/web1"}));
    let id = r.header("pdrelay-event-id").expect("event id header").to_owned();

    // A trigger without a dedup key gets the one pdrelay will send; a resolve with it finds it.
    let r = post(addr, "/v2/enqueue", &v2(&rk, "trigger", None, "Load high on web1"));
    assert_eq!(r.status, 202);
    let key = r.json()["dedup_key"].as_str().unwrap().to_owned();
    assert!(!key.is_empty());
    let r = post(addr, "/v2/enqueue", &json!({"routing_key": rk, "event_action": "resolve", "dedup_key": key}));
    assert_eq!(r.status, 202);
    assert_eq!(r.json()["dedup_key"], json!(key));

    let change = json!({"routing_key": rk, "payload": {"summary": "Deployed build 42", "source": "ci"},
        "links": [{"href": "https://ci.example.com/42", "text": "build 42"}]});
    let r = post(addr, "/v2/change/enqueue", &change);
    assert_eq!(r.status, 202);
    assert_eq!(r.json(), json!({"status": "success", "message": "Change event processed"}));

    let v1 = json!({"service_key": rk, "event_type": "trigger", "incident_key": "v1/web1",
        "description": "Service HTTP on web1 is CRITICAL", "details": {"state": "CRITICAL"}});
    let r = post(addr, "/generic/2010-04-15/create_event.json", &v1);
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"status": "success", "message": "Event processed", "incident_key": "v1/web1"}));
    let r = post(
        addr,
        "/generic/2010-04-15/create_event.json",
        &json!({"service_key": rk, "event_type": "trigger",
        "description": "no incident key"}),
    );
    assert_eq!(r.status, 200);
    let v1_key = r.json()["incident_key"].as_str().unwrap().to_owned();

    let got = env.fake.wait_accepted(6, WAIT);
    let find = |path: &str, key: &str, value: &str| {
        got.iter().find(|r| r.path == path && r.body[key] == json!(value)).unwrap_or_else(|| panic!("{path} {value}"))
    };
    let first = find("/v2/enqueue", "dedup_key", "disk/web1");
    assert_eq!(first.body["payload"]["summary"], "Disk full on web1");
    assert_eq!(first.body["event_action"], "trigger");
    let pair: Vec<_> =
        got.iter().filter(|r| r.path == "/v2/enqueue" && r.body["dedup_key"] == json!(key)).map(|r| &r.body).collect();
    assert_eq!(pair.len(), 2);
    assert_eq!(
        (pair[0]["event_action"].as_str(), pair[1]["event_action"].as_str()),
        (Some("trigger"), Some("resolve"))
    );
    let change_got = got.iter().find(|r| r.path == "/v2/change/enqueue").unwrap();
    assert_eq!(change_got.body["payload"]["summary"], "Deployed build 42");
    assert_eq!(
        find("/generic/2010-04-15/create_event.json", "incident_key", "v1/web1").body["details"]["state"],
        "CRITICAL"
    );
    find("/generic/2010-04-15/create_event.json", "incident_key", &v1_key);

    // The id in the header is the queue's id for the event.
    let shown = env.queue_json(&["show", &id]);
    assert!(shown.to_string().contains("disk/web1"), "{shown}");
}

#[test]
fn invalid_events_get_pagerduty_400s_and_nothing_is_stored() {
    let env = http_env("");
    let _d = env.start();
    let addr = http_addr(&env);
    let rk = routing_key(2);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "/v2/enqueue",
            v2("short", "trigger", None, "x").to_string().into_bytes(),
            "routing_key: must be 32 alphanumeric characters (an integration key)",
        ),
        ("/v2/enqueue", v2(&rk, "explode", None, "x").to_string().into_bytes(), "event_action: "),
        ("/v2/enqueue", json!({"routing_key": rk, "event_action": "trigger"}).to_string().into_bytes(), "payload"),
        ("/v2/enqueue", b"{not json".to_vec(), "event: is not valid JSON"),
        ("/v2/enqueue", b"".to_vec(), "event: is not valid JSON"),
        ("/v2/enqueue", b"[1,2]".to_vec(), "event: must be a JSON object"),
        (
            "/v2/enqueue",
            json!({"service_key": rk, "event_type": "trigger", "description": "v1 at the v2 endpoint"})
                .to_string()
                .into_bytes(),
            "event: is an Events API v1 event",
        ),
        (
            "/v2/enqueue",
            json!({"routing_key": rk, "payload": {"summary": "change at the alert endpoint", "source": "ci"}})
                .to_string()
                .into_bytes(),
            "event_action: is required",
        ),
        (
            "/v2/change/enqueue",
            v2(&rk, "trigger", Some("k"), "alert at the change endpoint").to_string().into_bytes(),
            "event_action: must not be present in a change event",
        ),
        (
            "/v2/change/enqueue",
            json!({"routing_key": rk, "payload": {"source": "ci"}}).to_string().into_bytes(),
            "payload.summary",
        ),
        (
            "/generic/2010-04-15/create_event.json",
            v2(&rk, "trigger", Some("k"), "v2 at the v1 endpoint").to_string().into_bytes(),
            "event_type: is required",
        ),
        (
            "/generic/2010-04-15/create_event.json",
            json!({"service_key": rk, "event_type": "trigger"}).to_string().into_bytes(),
            "description",
        ),
    ];
    for (path, body, error) in &cases {
        let r = request(addr, "POST", path, body);
        assert_eq!(r.status, 400, "{path} {}: {r:?}", String::from_utf8_lossy(body));
        let v = r.json();
        assert_eq!(v["status"], "invalid event", "{v}");
        assert_eq!(v["message"], "Event object is invalid", "{v}");
        let errors = v["errors"].as_array().unwrap();
        assert_eq!(errors.len(), 1, "{v}");
        assert!(errors[0].as_str().unwrap().contains(error), "{path}: expected {error:?} in {v}");
    }
    assert_eq!(health(addr)["pending"], 0);
    // Nothing of the refused events went anywhere: the next valid one is the only one delivered.
    assert_eq!(post(addr, "/v2/enqueue", &v2(&rk, "trigger", Some("ok"), "fine")).status, 202);
    env.fake.wait_accepted(1, WAIT);
    wait_until("queue drained", WAIT, || health(addr)["pending"] == 0);
    assert_eq!(env.fake.accepted().len(), 1);
    let listed = env.queue_json(&["list"]);
    assert_eq!(listed.as_array().map(|a| a.len()), Some(1), "{listed}");
}

#[test]
fn health_unknown_paths_and_methods() {
    let env = http_env("");
    let _d = env.start();
    let addr = http_addr(&env);
    let h = health(addr);
    assert_eq!(h["status"], "ok");
    assert_eq!(h["pending"], 0);
    assert_eq!(h["last_success"], Value::Null);
    assert_eq!(h["last_error"], Value::Null);
    assert_eq!(h["delivery_failing"], false);

    // While the Events API is down, the event waits and /health shows it and the error.
    env.fake.set_down(true);
    assert_eq!(post(addr, "/v2/enqueue", &v2(&routing_key(3), "trigger", Some("h"), "held")).status, 202);
    wait_until("pending 1 and an error", WAIT, || {
        let h = health(addr);
        h["pending"] == 1 && h["last_error"]["error"].is_string() && h["delivery_failing"] == true
    });
    env.fake.set_down(false);
    env.fake.wait_accepted(1, WAIT);
    wait_until("pending 0 and a success", WAIT, || {
        let h = health(addr);
        h["pending"] == 0 && h["last_success"]["at"].is_string() && h["delivery_failing"] == false
    });

    let r = request(addr, "GET", "/v2/enqueue", b"");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    let r = request(addr, "POST", "/health", b"{}");
    assert_eq!(r.status, 405);
    let r = request(addr, "POST", "/v1/enqueue", b"{}");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["status"], "error");
}

#[test]
fn an_event_answered_202_survives_kill_9() {
    let env = http_env("");
    // The Events API is down: every event is still queued when the daemon is killed.
    env.fake.set_down(true);
    let rk = routing_key(4);
    for round in 0..3 {
        let d = env.start();
        let addr = http_addr(&env);
        let r = post(addr, "/v2/enqueue", &v2(&rk, "trigger", Some(&format!("k{round}")), "must survive"));
        assert_eq!(r.status, 202, "{r:?}");
        d.kill9();
    }
    env.fake.set_down(false);
    let _d = env.start();
    let got = env.fake.wait_accepted(3, WAIT);
    let mut keys: Vec<&str> = got.iter().map(|r| r.body["dedup_key"].as_str().unwrap()).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys, ["k0", "k1", "k2"]);
}

#[test]
fn oversize_bodies_get_413() {
    let env = http_env("");
    let _d = env.start();
    let addr = http_addr(&env);
    let rk = routing_key(5);

    // Declared too large and waiting for 100-continue: answered at once, the body never sent.
    let mut s = connect(addr);
    s.write_all(
        b"POST /v2/enqueue HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 600000\r\n\
          Expect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let r = read_reply(&mut s);
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(r.json()["status"], "invalid event");

    // Sent whole with a Content-Length, and sent chunked: the client still reads the 413.
    let mut big = v2(&rk, "trigger", Some("big"), "big");
    big["payload"]["custom_details"] = json!({"blob": "x".repeat(600 * 1024)});
    let big = big.to_string();
    for chunked in [false, true] {
        let mut s = connect(addr);
        let mut w = s.try_clone().unwrap();
        let body = big.clone();
        let writer = std::thread::spawn(move || {
            let head = if chunked {
                "POST /v2/enqueue HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_owned()
            } else {
                format!("POST /v2/enqueue HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len())
            };
            w.write_all(head.as_bytes())?;
            for piece in body.as_bytes().chunks(64 * 1024) {
                if chunked {
                    w.write_all(format!("{:x}\r\n", piece.len()).as_bytes())?;
                    w.write_all(piece)?;
                    w.write_all(b"\r\n")?;
                } else {
                    w.write_all(piece)?;
                }
            }
            if chunked {
                w.write_all(b"0\r\n\r\n")?;
            }
            Ok::<_, std::io::Error>(())
        });
        let r = read_reply(&mut s);
        assert_eq!(r.status, 413, "chunked={chunked}: {r:?}");
        assert!(r.json()["errors"][0].as_str().unwrap().contains("512 KB"));
        let _ = writer.join().unwrap();
    }

    // Just under the limit is fine.
    let mut fits = v2(&rk, "trigger", Some("fits"), "fits");
    fits["payload"]["custom_details"] = json!({"blob": "y".repeat(500 * 1024)});
    let r = post(addr, "/v2/enqueue", &fits);
    assert_eq!(r.status, 202, "{:?}", r.json());
    let got = env.fake.wait_accepted(1, WAIT);
    assert_eq!(got[0].body["dedup_key"], "fits");
    wait_until("queue drained", WAIT, || health(addr)["pending"] == 0);
    assert_eq!(env.fake.accepted().len(), 1, "nothing of the refused bodies was stored");
}

/// Writes `bytes` one at a time, `gap` apart, until they run out, `stop` is set or a write fails.
fn trickle(mut stream: TcpStream, bytes: Vec<u8>, gap: Duration, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for b in bytes {
            if stop.load(Ordering::SeqCst) || stream.write_all(&[b]).is_err() {
                return;
            }
            std::thread::sleep(gap);
        }
    })
}

/// Reads until the server closes the connection; returns what it sent. Panics if it has not
/// closed within WAIT.
fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut raw = Vec::new();
    match stream.read_to_end(&mut raw) {
        Ok(_) => raw,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            panic!("the server kept the connection open for {WAIT:?}")
        }
        Err(_) => raw, // reset: closed too
    }
}

#[test]
fn slow_and_idle_connections_are_closed_after_request_timeout() {
    let env = http_env("request_timeout = \"1s\"\n");
    let _d = env.start();
    let addr = http_addr(&env);
    let stop = Arc::new(AtomicBool::new(false));

    // Headers trickled, a byte every 100 ms, never finished within the timeout.
    let mut s = connect(addr);
    // At 100 ms a byte, the head would take longer than WAIT to finish.
    let mut head = b"POST /v2/enqueue HTTP/1.1\r\nHost: x\r\nX-Padding: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', WAIT.as_millis() as usize / 100));
    head.extend_from_slice(b"\r\n\r\n");
    let t1 = trickle(s.try_clone().unwrap(), head, Duration::from_millis(100), stop.clone());
    let raw = read_until_closed(&mut s);
    assert!(!raw.starts_with(b"HTTP/1.1 2"), "{}", String::from_utf8_lossy(&raw));

    // Headers whole, body trickled: 408.
    let rk = routing_key(6);
    let body = v2(&rk, "trigger", Some("slow"), "slow body").to_string();
    let mut s = connect(addr);
    s.write_all(format!("POST /v2/enqueue HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes())
        .unwrap();
    let t2 = trickle(s.try_clone().unwrap(), body.into_bytes(), Duration::from_millis(100), stop.clone());
    let raw = read_until_closed(&mut s);
    let r = parse_reply(&raw);
    assert_eq!(r.status, 408, "{r:?}");

    // A connection that sends nothing is closed too.
    let mut s = connect(addr);
    read_until_closed(&mut s);

    // Meanwhile, and after, the listener serves others.
    assert_eq!(post(addr, "/v2/enqueue", &v2(&rk, "trigger", Some("fast"), "fast")).status, 202);
    stop.store(true, Ordering::SeqCst);
    t1.join().unwrap();
    t2.join().unwrap();
    let got = env.fake.wait_accepted(1, WAIT);
    assert_eq!(got.len(), 1, "the slow event must not be stored");
    assert_eq!(got[0].body["dedup_key"], "fast");
}

#[test]
fn connections_past_max_connections_get_503() {
    let env = http_env("max_connections = 2\nrequest_timeout = \"20s\"\n");
    let _d = env.start();
    let addr = http_addr(&env);
    let held: Vec<TcpStream> = (0..2).map(|_| connect(addr)).collect();
    // The held connections take their slots as soon as they are accepted; a third is refused.
    let mut refused = None;
    wait_until("a 503 past two connections", WAIT, || {
        let r = request(addr, "GET", "/health", b"");
        let busy = r.status == 503;
        refused = Some(r);
        busy
    });
    let r = refused.unwrap();
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.json()["status"], "unavailable");
    drop(held);
    wait_until("served again once they close", WAIT, || request(addr, "GET", "/health", b"").status == 200);
}

#[test]
fn clients_outside_the_allow_list_are_disconnected() {
    let env = http_env("allow = [\"192.0.2.0/24\"]\n");
    let _d = env.start();
    let addr = http_addr(&env);
    let mut s = connect(addr);
    let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(read_until_closed(&mut s).is_empty(), "no answer for a client not allowed");

    let env = http_env("allow = [\"10.0.0.0/8\", \"127.0.0.0/8\"]\n");
    let _d = env.start();
    assert_eq!(health(http_addr(&env))["status"], "ok");
}

#[test]
fn https_with_the_configured_certificate() {
    let certs = tempfile::tempdir().unwrap();
    let cert = certs.path().join("cert.pem");
    let key = certs.path().join("key.pem");
    std::fs::write(&cert, TEST_CERT).unwrap();
    std::fs::write(&key, TEST_KEY).unwrap();
    let env = http_env(&format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"\nallow = [\"127.0.0.1\"]\n",
        cert.display(),
        key.display()
    ));
    let _d = env.start();
    let addr = http_addr(&env);
    let rk = routing_key(7);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (status, body) = rt.block_on(async {
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(TEST_CERT.as_bytes()).unwrap())
            .timeout(WAIT)
            .build()
            .unwrap();
        let r = client
            .post(format!("https://{addr}/v2/enqueue"))
            .json(&v2(&rk, "trigger", Some("tls"), "over https"))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    });
    assert_eq!(status, 202);
    assert_eq!(body, json!({"status": "success", "message": "Event processed", "dedup_key": "tls"}));
    assert_eq!(env.fake.wait_accepted(1, WAIT)[0].body["dedup_key"], "tls");

    // Plain HTTP on the HTTPS port gets no HTTP answer.
    let mut s = connect(addr);
    let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let raw = read_until_closed(&mut s);
    assert!(!raw.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&raw));
}

#[test]
fn listening_off_loopback_needs_tls_and_an_allow_list() {
    let env = TestEnv::with_config("[http]\nlisten = \"0.0.0.0:8765\"\n");
    let out = env.command().arg("check-config").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("http.listen") && stderr.contains("tls_cert") && stderr.contains("allow"), "{stderr}");

    // A certificate that cannot be read stops the daemon at start, with a reason.
    let env = http_env("tls_cert = \"/nonexistent/cert.pem\"\ntls_key = \"/nonexistent/key.pem\"\n");
    let mut child = env.command().arg("daemon").stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let end = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("daemon with an unreadable certificate did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(!status.success());
    assert!(stderr.contains("http.tls_cert") && stderr.contains("/nonexistent/cert.pem"), "{stderr}");
}

#[test]
fn sigterm_stops_the_listener_and_removes_its_address_file() {
    let env = http_env("");
    let d = env.start();
    let addr = http_addr(&env);
    assert_eq!(health(addr)["status"], "ok");
    let (code, _, log) = d.terminate(WAIT);
    assert_eq!(code, Some(0), "{log}");
    assert!(!env.state.join("http.addr").exists());
    assert!(TcpStream::connect(addr).is_err(), "still listening after exit");
}

/// A port free on 127.0.0.1 a moment ago (for a peer that cannot report the port it bound).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap()
}

/// A real sender: Prometheus Alertmanager (Debian's prometheus-alertmanager) with a PagerDuty
/// receiver whose url is the listener. An alert fired through its API arrives at the fake
/// Events API as a trigger, and its end as a resolve with the same dedup key. Skipped when
/// Alertmanager is not installed, unless PDRELAY_REQUIRE_ALERTMANAGER is set.
#[test]
fn alertmanager_pages_through_the_listener() {
    let bin = std::path::Path::new("/usr/bin/prometheus-alertmanager");
    if !bin.exists() {
        assert!(
            std::env::var("PDRELAY_REQUIRE_ALERTMANAGER").is_err(),
            "prometheus-alertmanager is not installed (apt-get install prometheus-alertmanager)"
        );
        eprintln!("SKIPPED: /usr/bin/prometheus-alertmanager not installed");
        return;
    }
    let env = http_env("");
    let _d = env.start();
    let addr = http_addr(&env);
    let rk = routing_key(8);
    let dir = env.dir.path().join("alertmanager");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let config = dir.join("alertmanager.yml");
    std::fs::write(
        &config,
        format!(
            "route:\n  receiver: pdrelay\n  group_by: [alertname]\n  group_wait: 1s\n  group_interval: 1s\n  \
             repeat_interval: 1h\nreceivers:\n  - name: pdrelay\n    pagerduty_configs:\n      - routing_key: {rk}\n        \
             url: http://{addr}/v2/enqueue\n        send_resolved: true\n"
        ),
    )
    .unwrap();
    let am_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let log = std::fs::File::create(dir.join("alertmanager.log")).unwrap();
    let _am = KillOnDrop(
        std::process::Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={am_addr}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let am_log = || std::fs::read_to_string(dir.join("alertmanager.log")).unwrap_or_default();
    let end = Instant::now() + WAIT;
    while TcpStream::connect(am_addr).is_err() || request(am_addr, "GET", "/-/ready", b"").status != 200 {
        assert!(Instant::now() < end, "alertmanager did not start:\n{}", am_log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let started = time::OffsetDateTime::now_utc();
    let starts = rfc3339(started);
    let alert = |ends: Option<String>| {
        let mut a = json!({"labels": {"alertname": "DiskFull", "instance": "web1", "severity": "critical"},
            "annotations": {"summary": "Disk /var 97% full on web1"}, "startsAt": starts});
        if let Some(ends) = ends {
            a["endsAt"] = json!(ends);
        }
        json!([a])
    };
    let r = post(am_addr, "/api/v2/alerts", &alert(None));
    assert_eq!(r.status, 200, "{r:?}");
    let got = env.fake.wait_accepted(1, WAIT);
    let trigger = &got[0].body;
    assert_eq!(got[0].path, "/v2/enqueue");
    assert_eq!(trigger["event_action"], "trigger", "{trigger}");
    assert_eq!(trigger["routing_key"], rk);
    assert!(trigger["payload"]["summary"].as_str().unwrap().contains("DiskFull"), "{trigger}");
    let key = trigger["dedup_key"].as_str().unwrap().to_owned();

    // Ends a moment after it started (Alertmanager refuses an end not after the start).
    let end = Instant::now() + WAIT;
    while time::OffsetDateTime::now_utc() <= started {
        assert!(Instant::now() < end);
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = post(am_addr, "/api/v2/alerts", &alert(Some(rfc3339(time::OffsetDateTime::now_utc()))));
    assert_eq!(r.status, 200, "{r:?}");
    let mut resolve = None;
    wait_until("the resolve from Alertmanager", WAIT, || {
        resolve = env.fake.accepted().into_iter().find(|r| r.body["event_action"] == "resolve");
        resolve.is_some()
    });
    assert_eq!(resolve.unwrap().body["dedup_key"], json!(key), "the resolve names the trigger's dedup key");
}

#[test]
fn a_full_queue_answers_503_with_retry_after_and_recovers() {
    let env = TestEnv::with_config("[queue]\nmax_pending = 1\n[http]\nlisten = \"127.0.0.1:0\"\n");
    env.fake.set_down(true);
    let _d = env.start();
    let addr = http_addr(&env);
    let rk = routing_key(9);
    assert_eq!(post(addr, "/v2/enqueue", &v2(&rk, "trigger", Some("first"), "first")).status, 202);
    let r = post(addr, "/v2/enqueue", &v2(&rk, "trigger", Some("second"), "second"));
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("retry-after"), Some("30"));
    assert!(r.json()["message"].as_str().unwrap().contains("full"), "{:?}", r.json());
    env.fake.set_down(false);
    env.fake.wait_accepted(1, WAIT);
    wait_until("queue drained", WAIT, || health(addr)["pending"] == 0);
    assert_eq!(post(addr, "/v2/enqueue", &v2(&rk, "trigger", Some("third"), "third")).status, 202);
    let got = env.fake.wait_accepted(2, WAIT);
    let keys: Vec<&str> = got.iter().map(|r| r.body["dedup_key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["first", "third"]);
}

/// PagerDuty's other ingest URLs, its own timestamp form, change-event images and payloads
/// outside its schema, each sent or refused at intake, never acknowledged and then dropped.
#[test]
fn integration_urls_timestamps_images_and_schema_rules() {
    let env = http_env("");
    let _d = env.start();
    let addr = http_addr(&env);
    let rk = routing_key(21);

    // The routing key from the path; the body may leave it out or repeat it.
    let mut body = v2(&rk, "trigger", Some("int/1"), "via integration URL");
    body.as_object_mut().unwrap().remove("routing_key");
    let r = post(addr, &format!("/integration/{rk}/enqueue"), &body);
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.json(), json!({"status": "success", "message": "Event processed", "dedup_key": "int/1"}));
    let r = post(addr, &format!("/x-ere/{rk}"), &v2(&rk, "trigger", Some("ere/1"), "via x-ere"));
    assert_eq!(r.status, 202, "{r:?}");
    // Another key in the body, or JSON only PagerDuty's event rules could read: 400.
    let r = post(addr, &format!("/integration/{rk}/enqueue"), &v2(&routing_key(22), "trigger", Some("x"), "x"));
    assert_eq!(r.status, 400);
    assert!(r.json()["errors"][0].as_str().unwrap().starts_with("routing_key: "), "{r:?}");
    let r = post(addr, &format!("/x-ere/{rk}"), &json!({"alert": "disk full", "host": "web1"}));
    assert_eq!(r.status, 400);
    assert!(r.json()["errors"][0].as_str().unwrap().starts_with("event: /x-ere/"), "{r:?}");
    assert_eq!(post(addr, "/integration//enqueue", &body).status, 404);

    // PagerDuty's own example timestamp, and lower case: sent in one form.
    let mut e = v2(&rk, "trigger", Some("ts/1"), "timestamped");
    e["payload"]["timestamp"] = json!("2015-07-17T08:42:58.315+0000");
    assert_eq!(post(addr, "/v2/enqueue", &e).status, 202);
    let change = json!({"routing_key": rk, "payload": {"summary": "deployed", "timestamp": "2026-12-01t10:00:00z",
        "custom_details": "build 42"},
        "links": [{"href": "https://ci.example/42", "text": "build"}],
        "images": [{"src": "https://ci.example/42.png", "href": "https://ci.example/42", "alt": "graph"}]});
    assert_eq!(post(addr, "/v2/change/enqueue", &change).status, 202);
    let mut bad = v2(&rk, "trigger", Some("ts/2"), "bad time");
    bad["payload"]["timestamp"] = json!("17/07/2015 08:42");
    let r = post(addr, "/v2/enqueue", &bad);
    assert_eq!(r.status, 400);
    assert!(r.json()["errors"][0].as_str().unwrap().starts_with("payload.timestamp: must be an ISO 8601"));

    // custom_details that is not an object, v1 details likewise; a v1 context without a type.
    let mut e = v2(&rk, "trigger", Some("cd/1"), "string details");
    e["payload"]["custom_details"] = json!(["a", 1]);
    assert_eq!(post(addr, "/v2/enqueue", &e).status, 202);
    let v1 = json!({"service_key": rk, "event_type": "trigger", "incident_key": "v1/cd", "description": "d",
        "details": "text"});
    assert_eq!(post(addr, "/generic/2010-04-15/create_event.json", &v1).status, 200);
    let v1 = json!({"service_key": rk, "event_type": "trigger", "description": "d",
        "contexts": [{"href": "https://a.example"}]});
    let r = post(addr, "/generic/2010-04-15/create_event.json", &v1);
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["errors"], json!(["contexts[0].type: must be link or image"]));

    let got = env.fake.wait_accepted(6, WAIT);
    let by_key = |k: &str| got.iter().find(|r| r.body["dedup_key"] == k).unwrap_or_else(|| panic!("{k}"));
    assert_eq!(by_key("int/1").body["routing_key"], rk.as_str());
    assert_eq!(by_key("int/1").path, "/v2/enqueue");
    assert_eq!(by_key("ere/1").body["routing_key"], rk.as_str());
    assert_eq!(by_key("ts/1").body["payload"]["timestamp"], "2015-07-17T08:42:58.315Z");
    assert_eq!(by_key("cd/1").body["payload"]["custom_details"], json!({"details": ["a", 1]}));
    let change_got = got.iter().find(|r| r.path == "/v2/change/enqueue").unwrap();
    assert_eq!(change_got.body["payload"]["timestamp"], "2026-12-01T10:00:00Z");
    assert_eq!(change_got.body["payload"]["custom_details"], json!({"details": "build 42"}));
    assert_eq!(change_got.body["images"], change["images"]);
    assert_eq!(change_got.body["links"], change["links"]);
    let v1_got = got.iter().find(|r| r.body["incident_key"] == "v1/cd").unwrap();
    assert_eq!(v1_got.body["details"], json!({"details": "text"}));
    assert_eq!(env.fake.accepted().len(), 6);
}
