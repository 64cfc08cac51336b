//! Reliability: kill -9 loops, SIGTERM under a backlog, peer faults, full disks, queue limits.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::fake_api::Fault;
use crate::support::*;

const WAIT: Duration = Duration::from_secs(60);

fn numbered(rk: &str, n: u64) -> String {
    json!({"routing_key": rk, "event_action": "trigger", "dedup_key": format!("k{}", n % 50),
        "payload": {"summary": format!("event {n}"), "source": "h", "severity": "info", "custom_details": {"n": n}}})
    .to_string()
}

fn delivered_numbers(env: &TestEnv) -> Vec<u64> {
    env.fake.accepted().iter().filter_map(|r| r.body["payload"]["custom_details"]["n"].as_u64()).collect()
}

/// One request/reply round on a socket connection; `None` once the daemon is gone.
fn send_one(conn: &mut (UnixStream, BufReader<UnixStream>), line: &str) -> Option<Value> {
    conn.0.write_all(line.as_bytes()).ok()?;
    conn.0.write_all(b"\n").ok()?;
    let mut reply = String::new();
    match conn.1.read_line(&mut reply) {
        Ok(n) if n > 0 => serde_json::from_str(&reply).ok(),
        _ => None,
    }
}

#[test]
fn twenty_kill_9s_while_events_arrive_lose_nothing() {
    let env = TestEnv::with_config("[ingest]\nrescan_interval = \"200ms\"\n");
    let rk = routing_key(40);
    let acked: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let mut next: u64 = 0;
    let mut rng = fastrand::Rng::with_seed(40);
    let kills = 20;
    for round in 0..kills {
        let daemon = env.start();
        let stop = Arc::new(AtomicBool::new(false));
        // Socket producer: an event counts once its "ok" arrives.
        let socket_producer = {
            let (stop, acked, socket, rk) = (stop.clone(), acked.clone(), env.socket.clone(), rk.clone());
            let start = next;
            std::thread::spawn(move || {
                let Ok(s) = UnixStream::connect(&socket) else { return start };
                let mut conn = (s.try_clone().unwrap(), BufReader::new(s));
                let mut n = start;
                while !stop.load(Ordering::SeqCst) && n < start + 100_000 {
                    match send_one(&mut conn, &numbered(&rk, n)) {
                        Some(r) if r["ok"] == true => {
                            acked.lock().unwrap().insert(n);
                        }
                        _ => return n + 1,
                    }
                    n += 1;
                }
                n
            })
        };
        next += 1_000_000;
        // Spool producer: a file counts once it is renamed into place (UUID names: stored once).
        for i in 0..5 {
            let n = next + i;
            let id = format!("00000000-0000-4000-8000-{:012}", n);
            env.drop_file(&format!("{id}.json"), &numbered(&rk, n));
            acked.lock().unwrap().insert(n);
        }
        next += 1_000_000;
        std::thread::sleep(Duration::from_millis(rng.u64(50..400)));
        daemon.kill9();
        stop.store(true, Ordering::SeqCst);
        socket_producer.join().unwrap();
        eprintln!("round {round}: {} acknowledged so far", acked.lock().unwrap().len());
    }
    let _d = env.start();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > kills * 5, "events arrived between kills");
    wait_until("every acknowledged event delivered", Duration::from_secs(180), || {
        let got: HashSet<u64> = delivered_numbers(&env).into_iter().collect();
        acked.is_subset(&got)
    });
    wait_until("queue drained", WAIT, || {
        let s = env.queue_json(&["status"]);
        s["total"]["pending"] == 0 && s["total"]["waiting"] == 0
    });
    let all = delivered_numbers(&env);
    let distinct: HashSet<u64> = all.iter().copied().collect();
    let duplicates = all.len() - distinct.len();
    eprintln!(
        "{kills} kill -9s: {} acknowledged, {} distinct delivered, {duplicates} duplicates",
        acked.len(),
        distinct.len()
    );
    assert!(duplicates <= kills * 8, "duplicates bounded by in-flight deliveries per kill: {duplicates}");
}

#[test]
fn sigterm_with_a_backlog_of_10000_exits_in_time_and_loses_nothing() {
    let env = TestEnv::with_config("shutdown_timeout = \"2s\"\n");
    env.fake.set_down(true);
    let d = env.start();
    let rk = routing_key(41);
    let total = 10_000u64;
    let mut c = env.connect();
    let sender = {
        let mut w = c.writer.try_clone().unwrap();
        let rk = rk.clone();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            for n in 0..total {
                buf.extend_from_slice(numbered(&rk, n).as_bytes());
                buf.push(b'\n');
            }
            w.write_all(&buf).unwrap();
        })
    };
    for _ in 0..total {
        assert_eq!(c.read_reply()["ok"], true);
    }
    sender.join().unwrap();
    // Deliveries are slow (each answer takes 200 ms), so the backlog is far from drained.
    for _ in 0..64 {
        env.fake.push_fault(Fault::Slow(Duration::from_millis(200)));
    }
    env.fake.set_down(false);
    wait_until("deliveries under way", WAIT, || !env.fake.accepted().is_empty());
    let (code, took, log) = d.terminate(Duration::from_secs(15));
    assert_eq!(code, Some(0), "{log}");
    assert!(took < Duration::from_secs(5), "shutdown_timeout is 2s; took {took:?}");
    let delivered_before = env.fake.accepted().len();
    assert!(delivered_before < total as usize, "the backlog was still draining at SIGTERM");
    let _d = env.start();
    wait_until("the rest delivered after the restart", Duration::from_secs(180), || {
        delivered_numbers(&env).into_iter().collect::<HashSet<u64>>().len() == total as usize
    });
}

#[test]
fn peer_faults_are_retried_without_loss_or_extra_duplicates() {
    let env = TestEnv::new();
    let _d = env.start();
    let rk = routing_key(42);
    let faults = [
        ("hang", Fault::Hang(Duration::from_secs(5))),
        ("reset", Fault::Reset),
        ("cut-off 202", Fault::CutOff),
        ("slow", Fault::Slow(Duration::from_millis(1500))),
        ("503", Fault::Status(503)),
    ];
    for (i, (name, fault)) in faults.into_iter().enumerate() {
        env.fake.push_fault(fault);
        let mut c = env.connect();
        c.send_line(
            &json!({"routing_key": rk, "event_action": "trigger", "dedup_key": name,
            "payload": {"summary": name, "source": "h", "severity": "info"}})
            .to_string(),
        );
        assert_eq!(c.read_reply()["ok"], true);
        wait_until(name, WAIT, || env.fake.accepted().iter().any(|r| r.body["dedup_key"] == name));
        wait_until("queue drained", WAIT, || {
            let s = env.queue_json(&["status"]);
            s["total"]["pending"] == 0 && s["total"]["waiting"] == 0
        });
        let copies = env.fake.accepted().iter().filter(|r| r.body["dedup_key"] == name).count();
        // A cut-off 202 arrives exactly twice: PagerDuty took it, the answer was lost in flight,
        // so it is sent again (the one duplicate at-least-once allows). The rest arrive once.
        let want = if name == "cut-off 202" { 2 } else { 1 };
        assert_eq!(copies, want, "{name}");
        assert_eq!(env.fake.accepted().len(), i + want + usize::from(i > 2), "no other event duplicated");
    }
}

#[test]
fn a_tls_failure_is_retried_and_the_event_kept() {
    // An https URL pointed at the plain-HTTP fake: every TLS handshake fails.
    let env = TestEnv::new();
    let https = env.fake.url().replace("http://", "https://");
    let text = std::fs::read_to_string(&env.config).unwrap().replace(&env.fake.url(), &https);
    std::fs::write(&env.config, text).unwrap();
    let _d = env.start();
    let mut c = env.connect();
    c.send_line(&trigger(&routing_key(43), "tls", "over a broken TLS link"));
    let id = c.read_reply()["id"].as_str().unwrap().to_owned();
    wait_until("a TLS error recorded, event kept pending", WAIT, || {
        let r = env.queue_json(&["show", &id]);
        r["state"] == "pending" && r["attempts"].as_u64().unwrap_or(0) >= 2 && r["last_error"].as_str().is_some()
    });
    assert!(env.fake.accepted().is_empty());
}

#[test]
fn the_queue_size_limit_refuses_intake_clearly_and_recovers() {
    let env = TestEnv::with_config("[queue]\nmax_pending = 5\n");
    env.fake.set_down(true);
    let _d = env.start();
    let rk = routing_key(44);
    let mut c = env.connect();
    for n in 0..5 {
        c.send_line(&numbered(&rk, n));
        assert_eq!(c.read_reply()["ok"], true);
    }
    c.send_line(&numbered(&rk, 5));
    let refused = c.read_reply();
    assert_eq!(refused["code"], "full", "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("queue.max_pending"));
    // `send` keeps the event anyway, as a drop-file the daemon takes once there is room.
    let out = env.send(&["-k", &rk, "-t", "trigger", "-d", "while full", "-i", "spooled"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    env.fake.set_down(false);
    wait_until("the five and the spooled one delivered", WAIT, || {
        let got = env.fake.accepted();
        got.len() >= 6 && got.iter().any(|r| r.body["dedup_key"] == "spooled")
    });
    c.send_line(&numbered(&rk, 6));
    assert_eq!(c.read_reply()["ok"], true, "intake resumes once the queue drains");
}

/// A tmpfs mounted for one test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .ok()?
            .success();
        ok.then(|| Tmpfs(path.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_refuses_intake_keeps_delivering_and_recovers() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: mounting a tmpfs needs root (CI runs as root)");
        return;
    }
    let env = TestEnv::with_config("[queue]\nmin_free_bytes = 3145728\n");
    let _mount = Tmpfs::mount(&env.state, "24m").expect("mount a tmpfs for state_dir");
    let d = env.start();
    let rk = routing_key(45);
    // Leave about 8 MiB free, then feed 4 KiB events until the reserve refuses them.
    let free = pdrelay::queue::disk::free_bytes(&env.state).unwrap();
    let filler = env.state.join("filler");
    std::fs::write(&filler, vec![0u8; (free - 8 * 1024 * 1024) as usize]).unwrap();
    let mut c = env.connect();
    let mut acked = HashSet::new();
    let mut refused = None;
    let big = "x".repeat(4000);
    for n in 0..20_000u64 {
        c.send_line(&json!({"routing_key": rk, "event_action": "trigger", "dedup_key": format!("d{n}"),
            "payload": {"summary": "filling", "source": "h", "severity": "info", "custom_details": {"n": n, "pad": big}}}).to_string());
        let reply = c.read_reply();
        if reply["ok"] == true {
            acked.insert(n);
        } else {
            refused = Some(reply);
            break;
        }
    }
    let refused = refused.expect("intake refused before 20,000 events of 4 KiB");
    assert_eq!(refused["code"], "full", "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("queue.min_free_bytes"), "{refused}");
    assert!(!acked.is_empty());
    // Everything acknowledged is delivered while the disk stays nearly full.
    wait_until("acknowledged events delivered on a full disk", WAIT, || {
        let got: HashSet<u64> = delivered_numbers(&env).into_iter().collect();
        acked.is_subset(&got)
    });
    // Space returns: intake resumes on its own.
    std::fs::remove_file(&filler).unwrap();
    let start = Instant::now();
    wait_until("intake accepts again", WAIT, || {
        c.send_line(&trigger(&rk, "after", "space is back"));
        c.read_reply()["ok"] == true
    });
    eprintln!(
        "full disk: {} acknowledged before the reserve; intake back {:?} after space returned",
        acked.len(),
        start.elapsed()
    );
    env.fake.wait_accepted(acked.len() + 1, WAIT);
    drop(d);
}

fn damage(db: &Path, how: &str) {
    let mut bytes = std::fs::read(db).unwrap();
    match how {
        "flipped bytes" => {
            let start = bytes.len() / 3;
            for b in &mut bytes[start..start + 200] {
                *b ^= 0xff;
            }
        }
        "truncated file" => bytes.truncate(bytes.len() / 2),
        _ => unreachable!(),
    }
    std::fs::write(db, bytes).unwrap();
}

#[test]
fn a_damaged_queue_refuses_to_start_and_salvage_recovers_what_it_can() {
    for (how, stop_with_kill) in [("flipped bytes", false), ("truncated file", false), ("truncated file", true)] {
        let env = TestEnv::new();
        env.fake.set_down(true);
        let d = env.start();
        let rk = routing_key(46);
        let mut c = env.connect();
        for n in 0..60 {
            c.send_line(&numbered(&rk, n));
            assert_eq!(c.read_reply()["ok"], true);
        }
        if stop_with_kill {
            d.kill9();
        } else {
            d.terminate(Duration::from_secs(10));
        }
        damage(&env.state.join("queue/db"), how);
        let out = env.command().arg("daemon").output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{how}: a damaged queue stops the daemon with exit 3: {stderr}");
        assert!(stderr.contains("is damaged") && stderr.contains("pdrelay queue salvage"), "{how}: {stderr}");
        assert!(!stderr.contains("panicked"), "{how}: {stderr}");
        let out = env.command().args(["queue", "salvage"]).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{how}: {stdout} {}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("damaged queue moved to"), "{stdout}");
        let aside: Vec<_> = std::fs::read_dir(&env.state)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("queue.damaged-"))
            .collect();
        assert_eq!(aside.len(), 1, "the damaged queue is kept");
        let recovered = env.queue_json(&["status"])["total"]["pending"].as_u64().unwrap();
        eprintln!(
            "{how} (stopped by {}): recovered {recovered} of 60 pending",
            if stop_with_kill { "kill -9" } else { "SIGTERM" }
        );
        assert!(recovered < 60, "{how}: some events were lost to the damage, and said so: {stdout}");
        assert!(stdout.contains("lost:"), "{how}: the loss is reported: {stdout}");
        // The rebuilt queue works: what was recovered is delivered.
        env.fake.set_down(false);
        let _d = env.start();
        wait_until("recovered events delivered", WAIT, || env.fake.accepted().len() as u64 >= recovered);
    }
}

#[test]
fn ten_thousand_files_dropped_at_once_with_a_tiny_inotify_queue_are_all_delivered() {
    const KNOB: &str = "/proc/sys/fs/inotify/max_queued_events";
    let Ok(before) = std::fs::read_to_string(KNOB) else {
        eprintln!("SKIPPED: no {KNOB}");
        return;
    };
    let env = TestEnv::with_config("[pagerduty]\nconcurrency = 32\n");
    // The limit applies to inotify instances created while it is set: only this daemon's.
    if std::fs::write(KNOB, "16").is_err() {
        // SAFETY: geteuid has no preconditions.
        assert!(unsafe { libc::geteuid() } != 0, "root must be able to set {KNOB}");
        eprintln!("SKIPPED: setting {KNOB} needs root");
        return;
    }
    let d = env.start();
    std::fs::write(KNOB, before.trim()).unwrap();
    let rk = routing_key(47);
    let total = 10_000u64;
    for n in 0..total {
        env.drop_file(&format!("f{n:05}.json"), &numbered(&rk, n));
    }
    wait_until("all 10,000 files delivered", Duration::from_secs(300), || {
        delivered_numbers(&env).into_iter().collect::<HashSet<u64>>().len() == total as usize
    });
    wait_until("spool empty", WAIT, || env.spool_files().is_empty());
    drop(d);
}
