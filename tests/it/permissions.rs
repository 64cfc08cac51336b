//! The permission model (README "Permissions"), tried with throwaway users laid out like the
//! systemd unit: the daemon as its own user whose group is the send group, umask 0007, spool
//! 3770, state 0750. Needs root (CI runs as root); skipped otherwise.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(60);

/// A throwaway group and users, removed on drop.
struct Users {
    group: String,
    gid: u32,
    /// (name, uid): the daemon's user, a producer, another producer.
    daemon: (String, u32),
    producer: (String, u32),
    other: (String, u32),
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn id_of(flag: &str, name: &str) -> u32 {
    let out = Command::new("id").arg(flag).arg(name).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().parse().unwrap()
}

impl Users {
    fn create() -> Option<Users> {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: permission tests need root to create throwaway users");
            return None;
        }
        let tag = format!("{:06x}", fastrand::u32(..0xffffff));
        let group = format!("pdrt-{tag}");
        run_ok(Command::new("groupadd").args(["--system", &group]));
        let user = |role: &str| {
            let name = format!("pdrt-{role}-{tag}");
            run_ok(Command::new("useradd").args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "--gid",
                &group,
                &name,
            ]));
            let uid = id_of("-u", &name);
            (name, uid)
        };
        let gid = {
            let out = Command::new("getent").args(["group", &group]).output().unwrap();
            String::from_utf8(out.stdout).unwrap().split(':').nth(2).unwrap().trim().parse().unwrap()
        };
        Some(Users { daemon: user("d"), producer: user("p"), other: user("q"), group, gid })
    }

    /// A command run as `user` (its group the send group), with the unit's umask 0007.
    fn command_as(&self, user: &(String, u32), env: &TestEnv) -> Command {
        let mut c = env.command();
        c.uid(user.1).gid(self.gid);
        // SAFETY: umask is async-signal-safe.
        unsafe {
            c.pre_exec(|| {
                libc::umask(0o007);
                Ok(())
            });
        }
        c
    }

    fn shell_as(&self, user: &(String, u32), script: &str) -> Output {
        let mut c = Command::new("sh");
        c.args(["-c", script]).uid(user.1).gid(self.gid);
        c.output().unwrap()
    }
}

impl Drop for Users {
    fn drop(&mut self) {
        for (name, _) in [&self.daemon, &self.producer, &self.other] {
            let _ = Command::new("userdel").arg(name).output();
        }
        let _ = Command::new("groupdel").arg(&self.group).output();
    }
}

/// A TestEnv laid out like the package: temp dir traversable, state 0750 and spool 3770 owned
/// by the daemon's user, the socket's directory missing (the daemon makes it).
fn layout(users: &Users, extra: &str) -> TestEnv {
    let env = TestEnv::with_config(extra);
    // The test's directory stands for /run and /var: the daemon's user may make its socket's
    // directory in it.
    std::os::unix::fs::chown(env.dir.path(), Some(users.daemon.1), Some(0)).unwrap();
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&env.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::create_dir_all(&env.state).unwrap();
    for (dir, mode) in [(&env.state, 0o750), (&env.spool, 0o3770)] {
        std::os::unix::fs::chown(dir, Some(users.daemon.1), Some(users.gid)).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    env
}

fn start_as(users: &Users, env: &TestEnv) -> KillOnDrop {
    let log = env.dir.path().join(format!("daemon-{:x}.log", fastrand::u32(..)));
    let file = std::fs::File::create(&log).unwrap();
    let child = users.command_as(&users.daemon, env).arg("daemon").stdout(Stdio::null()).stderr(file).spawn().unwrap();
    let mut child = KillOnDrop(child);
    let end = Instant::now() + WAIT;
    while std::os::unix::net::UnixStream::connect(&env.socket).is_err() {
        assert!(
            Instant::now() < end && child.0.try_wait().unwrap().is_none(),
            "daemon did not listen:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

fn stop(mut daemon: KillOnDrop) {
    unsafe { libc::kill(daemon.0.id() as i32, libc::SIGTERM) };
    let end = Instant::now() + WAIT;
    while daemon.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < end, "daemon did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_send_group_member_can_hand_events_over_and_nothing_else() {
    let Some(users) = Users::create() else { return };
    let env = layout(&users, "");
    env.fake.set_down(true);
    let daemon = start_as(&users, &env);
    let rk = routing_key(140);

    // Hands over: send, and a drop file.
    let out = users
        .command_as(&users.producer, &env)
        .args(["send", "-k", &rk, "-t", "trigger", "-d", "from a producer", "-i", "p1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "send as a group member: {}", String::from_utf8_lossy(&out.stderr));
    let drop = format!(
        "printf '%s' '{}' > {spool}/.p2.tmp && mv {spool}/.p2.tmp {spool}/p2.json",
        trigger(&rk, "p2", "dropped"),
        spool = env.spool.display()
    );
    let out = users.shell_as(&users.producer, &drop);
    assert!(out.status.success(), "drop as a group member: {}", String::from_utf8_lossy(&out.stderr));
    // An invalid file, rejected.
    let bad = format!("printf 'secret {rk}' > {0}/.bad.tmp && mv {0}/.bad.tmp {0}/bad.json", env.spool.display());
    assert!(users.shell_as(&users.producer, &bad).status.success());
    wait_until("the bad file rejected", WAIT, || env.spool.join("rejected/bad.json.reason").exists());
    wait_until("both events stored", WAIT, || {
        let total = &env.queue_json(&["status"])["total"];
        total["pending"].as_u64().unwrap_or(0) + total["waiting"].as_u64().unwrap_or(0) == 2
    });

    // The modes the daemon gave what it made, whatever the umask.
    let queue = env.state.join("queue");
    assert_eq!(mode(&queue), 0o700, "queue directory");
    for entry in std::fs::read_dir(&queue).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            assert_eq!(mode(&entry.path()) & 0o077, 0, "{} is open to others", entry.path().display());
        }
    }
    assert_eq!(mode(&env.spool.join("rejected")), 0o700);
    assert_eq!(mode(&env.spool.join(".claim")), 0o700);
    assert_eq!(mode(env.socket.parent().unwrap()), 0o755, "the socket's directory");

    // Nothing else, for either producer.
    for user in [&users.producer, &users.other] {
        let q = queue.display();
        let spool = env.spool.display();
        let run = env.socket.display();
        for (what, script) in [
            ("list the queue", format!("ls {q}")),
            ("read the database", format!("head -c1 {q}/db")),
            ("write the database", format!("echo x >> {q}/db")),
            ("list rejected files", format!("ls {spool}/rejected")),
            ("read a rejected file", format!("cat {spool}/rejected/bad.json")),
            (
                "delete a rejected file",
                format!("rm -f {spool}/rejected/bad.json && test ! -e {spool}/rejected/bad.json"),
            ),
            ("list claimed files", format!("ls {spool}/.claim")),
            ("replace the socket", format!("rm -f {run} && test ! -e {run}")),
        ] {
            let out = users.shell_as(user, &script);
            assert!(!out.status.success(), "{} could {what}", user.0);
        }
        let purge = vec!["queue", "purge", "--state", "delivered"];
        for args in [vec!["queue", "status"], vec!["queue", "list"], purge, vec!["alerts"]] {
            let out = users.command_as(user, &env).args(&args).output().unwrap();
            assert!(!out.status.success(), "{} could run {args:?} with the daemon running", user.0);
            // Refused, not a usage error (exit 2), which would pass for any user.
            assert_ne!(out.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    assert!(env.spool.join("rejected/bad.json").exists());

    // With the daemon stopped, still nothing.
    stop(daemon);
    for args in [vec!["queue", "purge", "--state", "delivered"], vec!["queue", "status"], vec!["queue", "salvage"]] {
        let out = users.command_as(&users.producer, &env).args(&args).output().unwrap();
        assert!(!out.status.success(), "a producer could run {args:?} with the daemon stopped");
        assert_ne!(out.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let total = &env.queue_json(&["status"])["total"];
    assert_eq!(
        total["pending"].as_u64().unwrap_or(0) + total["waiting"].as_u64().unwrap_or(0),
        2,
        "the queue is untouched"
    );
}

#[test]
fn a_rejected_entry_that_is_a_symlink_is_moved_aside_not_followed() {
    let Some(users) = Users::create() else { return };
    let env = layout(&users, "");
    let elsewhere = env.dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o777)).unwrap();
    let plant = format!("ln -s {} {}/rejected", elsewhere.display(), env.spool.display());
    assert!(users.shell_as(&users.producer, &plant).status.success());
    let _d = start_as(&users, &env);
    let bad = format!("printf 'nope' > {0}/.b.tmp && mv {0}/.b.tmp {0}/bad.json", env.spool.display());
    assert!(users.shell_as(&users.producer, &bad).status.success());
    let rejected = env.spool.join("rejected");
    wait_until("the bad file rejected", WAIT, || rejected.join("bad.json.reason").exists());
    let meta = std::fs::symlink_metadata(&rejected).unwrap();
    assert!(meta.is_dir() && meta.uid() == users.daemon.1, "rejected/ is the daemon's own directory");
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0, "nothing moved where the link pointed");
}

#[test]
fn queue_commands_run_as_root_leave_the_queue_to_the_daemons_user() {
    let Some(users) = Users::create() else { return };
    let env = layout(&users, "");
    // Before the first start, as root: status, then salvage (as the damage message says).
    for args in [vec!["queue", "status"], vec!["alerts"], vec!["queue", "salvage"], vec!["queue", "status"]] {
        let out = env.command().args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?} as root: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut stack = vec![env.state.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let meta = std::fs::symlink_metadata(entry.path()).unwrap();
            assert_eq!(meta.uid(), users.daemon.1, "{} is not the daemon user's", entry.path().display());
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    // The daemon, as its user, starts on it and takes events.
    let _d = start_as(&users, &env);
    let mut c = env.connect();
    c.send_line(&trigger(&routing_key(141), "after-root", "after root ran queue commands"));
    assert_eq!(c.read_reply()["ok"], true);
    env.fake.wait_accepted(1, WAIT);
}
