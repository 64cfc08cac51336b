//! Operations: systemd readiness and watchdog notifications.

use std::os::unix::net::UnixDatagram;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::*;

#[test]
fn systemd_gets_ready_then_watchdog_pings_then_stopping() {
    let env = TestEnv::new();
    let notify_path = env.dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // As systemd does: WATCHDOG_PID names the service's main process (here, after the exec).
    let child = std::process::Command::new("sh")
        .args(["-c", &format!("WATCHDOG_PID=$$ exec {BIN} daemon")])
        .env("PDRELAY_CONFIG", &env.config)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "1000000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let mut buf = [0u8; 256];
    let mut next = || {
        let n = notify.recv(&mut buf).expect("a notification within 20 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let first = next();
    assert_eq!(first.trim(), "READY=1", "readiness first");
    assert!(std::os::unix::net::UnixStream::connect(&env.socket).is_ok(), "READY=1 only once the socket listens");
    let start = Instant::now();
    let mut pings = 0;
    while pings < 3 {
        assert_eq!(next().trim(), "WATCHDOG=1");
        pings += 1;
    }
    eprintln!("3 watchdog pings in {:?} (period 1 s)", start.elapsed());
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    loop {
        let msg = next();
        if msg.trim() == "STOPPING=1" {
            break;
        }
        assert_eq!(msg.trim(), "WATCHDOG=1", "only pings before STOPPING=1");
    }
    assert_eq!(child.0.wait().unwrap().code(), Some(0));
}

#[test]
fn a_configured_proxy_carries_the_events() {
    // events_url names a host that does not exist; only the proxy (the fake, which answers
    // absolute-form requests) is ever connected to, so no name is looked up.
    let env = TestEnv::new();
    let proxy = env.fake.url();
    let text = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace(&env.fake.url(), "http://events.pagerduty.invalid")
        .replace("[pagerduty]\n", &format!("[pagerduty]\nproxy = \"{proxy}\"\nlocal_address = \"127.0.0.1\"\n"));
    assert!(text.contains("proxy = ") && !text.contains(&format!("events_url = \"{proxy}")), "{text}");
    std::fs::write(&env.config, text).unwrap();
    let _d = env.start();
    let mut c = env.connect();
    c.send_line(&trigger(&routing_key(60), "via-proxy", "through the proxy"));
    assert_eq!(c.read_reply()["ok"], true);
    let got = env.fake.wait_accepted(1, Duration::from_secs(30));
    assert_eq!(got[0].body["dedup_key"], "via-proxy");
}

#[test]
fn an_unreadable_ca_bundle_stops_the_start_with_its_path() {
    let env = TestEnv::with_config("[pagerduty]\nca_bundle = \"/nonexistent/ca.pem\"\n");
    let out = env.command().arg("daemon").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pagerduty.ca_bundle /nonexistent/ca.pem"), "{stderr}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let env = TestEnv::with_config("log_format = \"json\"\n");
    let d = env.start();
    let (_, _, log) = d.terminate(Duration::from_secs(10));
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert!(v["level"].is_string() && v["fields"]["message"].is_string(), "{line}");
    }
}

fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

#[test]
fn metrics_are_scraped_and_parse_as_prometheus_text() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let textfile = "metrics.prom";
    let env = TestEnv::with_config(&format!(
        "[metrics]\nlisten = \"{addr}\"\ntextfile = \"{}\"\ntextfile_interval = \"1s\"\n",
        std::env::temp_dir().join(format!("pdrelay-{port}-{textfile}")).display()
    ));
    let _d = env.start();
    let rk = routing_key(61);
    env.fake.push_fault(crate::fake_api::Fault::Status(503));
    let mut c = env.connect();
    c.send_line(&trigger(&rk, "m1", "metrics"));
    assert_eq!(c.read_reply()["ok"], true);
    env.drop_file("m2.json", &trigger(&rk, "m2", "metrics via spool"));
    env.fake.wait_accepted(2, Duration::from_secs(30));
    let value = |samples: &[prometheus_parse::Sample], name: &str, label: Option<(&str, &str)>| -> f64 {
        samples
            .iter()
            .filter(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    let mut parsed = None;
    wait_until("metrics show both intakes, the retry and the deliveries", Duration::from_secs(30), || {
        let body = scrape(&addr);
        let lines = body.lines().map(|l| Ok(l.to_owned()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
        let s = &scrape.samples;
        let done = value(s, "pdrelay_intake_events_total", Some(("source", "socket"))) == 1.0
            && value(s, "pdrelay_intake_events_total", Some(("source", "spool"))) == 1.0
            && value(s, "pdrelay_deliveries_total", Some(("outcome", "delivered"))) == 2.0
            && value(s, "pdrelay_deliveries_total", Some(("status", "503"))) == 1.0
            && value(s, "pdrelay_queue_pending_events", None) == 0.0
            && value(s, "pdrelay_queue_events", Some(("state", "delivered"))) == 2.0
            && value(s, "pdrelay_queue_events", Some(("state", "failed"))) == 0.0;
        parsed = Some(scrape);
        done
    });
    let scrape = parsed.unwrap();
    assert!(scrape.samples.iter().any(|s| s.metric == "pdrelay_delivery_duration_seconds_count"
        || matches!(s.value, prometheus_parse::Value::Histogram(_))));
    for name in ["pdrelay_paused_routing_keys", "pdrelay_oldest_pending_age_seconds"] {
        assert!(scrape.samples.iter().any(|s| s.metric == name), "{name} exported");
    }
    let file = std::env::temp_dir().join(format!("pdrelay-{port}-{textfile}"));
    wait_until("the textfile is written", Duration::from_secs(10), || {
        std::fs::read_to_string(&file).is_ok_and(|t| t.contains("pdrelay_intake_events_total"))
    });
    let _ = std::fs::remove_file(file);
}

#[test]
fn sighup_reloads_what_can_change_and_says_what_cannot() {
    let env = TestEnv::new();
    let d = env.start();
    let keyless = r#"{"event_action":"trigger","payload":{"summary":"no key given"}}"#;
    let mut c = env.connect();
    c.send_line(keyless);
    assert_eq!(c.read_reply()["code"], "invalid", "no default routing key yet");
    let original = std::fs::read_to_string(&env.config).unwrap();
    // A broken file is refused and the running settings stay.
    std::fs::write(&env.config, "[pagerduty]\nconcurrency = \"many\"\n").unwrap();
    unsafe { libc::kill(d.child.id() as i32, libc::SIGHUP) };
    wait_until("the bad reload is logged", Duration::from_secs(10), || {
        d.log_text().contains("configuration not reloaded")
    });
    // A good one: a default routing key (reloadable) and a new rescan interval (restart only).
    let key = routing_key(62);
    let text = original
        .replace("[pagerduty]\n", &format!("[pagerduty]\ndefault_routing_key = \"{key}\"\n"))
        .replace("rescan_interval = \"1s\"", "rescan_interval = \"2s\"");
    std::fs::write(&env.config, text).unwrap();
    unsafe { libc::kill(d.child.id() as i32, libc::SIGHUP) };
    wait_until("the reload is logged", Duration::from_secs(10), || d.log_text().contains("configuration reloaded"));
    assert!(d.log_text().contains("[ingest]"), "the restart-only change is named: {}", d.log_text());
    c.send_line(keyless);
    let reply = c.read_reply();
    assert_eq!(reply["ok"], true, "{reply}");
    let got = env.fake.wait_accepted(1, Duration::from_secs(30));
    assert_eq!(got[0].body["routing_key"], key.as_str());
}

/// Context switches (voluntary and not) of each of a process's sled I/O threads (`sled-io-N`),
/// by thread id, from /proc.
fn sled_io_switches(pid: u32) -> Vec<(String, u64)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else { continue };
        if !status.lines().any(|l| l.starts_with("Name:") && l.contains("sled-io-")) {
            continue;
        }
        let switches = status
            .lines()
            .filter(|l| l.starts_with("voluntary_ctxt_switches:") || l.starts_with("nonvoluntary_ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        threads.push((task.file_name().to_string_lossy().into_owned(), switches));
    }
    threads.sort();
    threads
}

/// sled 0.34.7 as published wakes each of its seven I/O threads every second; the copy in
/// patches/sled lets them sleep until there is work. With an empty queue, once the start's writes
/// are done, the threads' switch counts stop changing.
#[test]
fn an_idle_daemon_leaves_sleds_io_threads_asleep() {
    let env = TestEnv::new();
    let daemon = env.start();
    let pid = daemon.child.id();
    wait_until("sled's seven I/O threads to start", Duration::from_secs(20), || sled_io_switches(pid).len() >= 7);
    let mut last = sled_io_switches(pid);
    // Unpatched, every reading differs from the one before (each thread wakes every second).
    wait_until("two readings 1.5 s apart with no sled I/O thread woken", Duration::from_secs(30), || {
        std::thread::sleep(Duration::from_millis(1500));
        let now = sled_io_switches(pid);
        let asleep = now == last;
        last = now;
        asleep
    });
}
