//! Nagios end to end: `pdrelay nagios` as a notification command (flags and environment macros),
//! pagerduty_nagios.pl spool files, dedup-key tracking and `pdrelay alerts`, and a real Nagios 4
//! core (Debian's nagios4) notifying through pdrelay.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

const WAIT: Duration = Duration::from_secs(30);
const SERVICE_KEY: &str = "event_source=service;host_name=web1;service_desc=Disk /var";

fn nagios(env: &TestEnv, args: &[&str], vars: &[(&str, &str)]) -> std::process::Output {
    let mut c = env.command();
    c.arg("nagios").args(args);
    for (k, v) in vars {
        c.env(k, v);
    }
    c.output().unwrap()
}

#[test]
fn notification_command_with_flags_triggers_acknowledges_and_resolves() {
    let env = TestEnv::new();
    let _d = env.start();
    let rk = routing_key(30);
    let fields = |state: &str, output: &str| -> Vec<String> {
        vec![
            "-f".into(),
            "HOSTNAME=web1".into(),
            "-f".into(),
            "SERVICEDESC=Disk /var".into(),
            "-f".into(),
            format!("SERVICESTATE={state}"),
            "-f".into(),
            format!("SERVICEOUTPUT={output}"),
        ]
    };
    for (ntype, state, output) in [
        ("PROBLEM", "CRITICAL", "DISK CRITICAL - free space: /var 3%"),
        ("ACKNOWLEDGEMENT", "CRITICAL", "DISK CRITICAL - free space: /var 3%"),
        ("RECOVERY", "OK", "DISK OK"),
    ] {
        let mut args = vec!["-k", &rk, "-t", ntype, "-n", "service"];
        let f = fields(state, output);
        args.extend(f.iter().map(String::as_str));
        let out = nagios(&env, &args, &[]);
        assert!(out.status.success(), "{ntype}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let got = env.fake.wait_accepted(3, WAIT);
    let actions: Vec<&str> = got.iter().map(|r| r.body["event_action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["trigger", "acknowledge", "resolve"]);
    assert!(got.iter().all(|r| r.body["dedup_key"] == SERVICE_KEY));
    let p = &got[0].body["payload"];
    assert_eq!(p["summary"], "web1/Disk /var is CRITICAL: DISK CRITICAL - free space: /var 3%");
    assert_eq!(p["severity"], "critical");
    assert_eq!(p["source"], "web1");
    assert_eq!(p["component"], "Disk /var");
    assert_eq!(p["custom_details"]["SERVICEOUTPUT"], "DISK CRITICAL - free space: /var 3%");
}

#[test]
fn notification_command_reads_environment_macros() {
    let env = TestEnv::new();
    let _d = env.start();
    let rk = routing_key(31);
    let out = nagios(
        &env,
        &["-k", &rk, "-t", "PROBLEM", "-n", "host"],
        &[
            ("NAGIOS_HOSTNAME", "db1"),
            ("NAGIOS_HOSTSTATE", "DOWN"),
            ("NAGIOS_HOSTOUTPUT", "PING CRITICAL - Packet loss = 100%"),
            ("NAGIOS__HOSTRACK", "r12"),
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = env.fake.wait_accepted(1, WAIT);
    let b = &got[0].body;
    assert_eq!(b["dedup_key"], "event_source=host;host_name=db1");
    assert_eq!(b["payload"]["summary"], "db1 is DOWN: PING CRITICAL - Packet loss = 100%");
    assert_eq!(b["payload"]["custom_details"]["_HOSTRACK"], "r12");
    // Icinga 2's env dictionary spelling works too.
    let out = nagios(
        &env,
        &["-k", &rk, "-t", "Recovery", "-n", "host"],
        &[("ICINGA_HOSTNAME", "db1"), ("ICINGA_HOSTSTATE", "Up")],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = env.fake.wait_accepted(2, WAIT);
    assert_eq!(got[1].body["event_action"], "resolve");
    assert_eq!(got[1].body["dedup_key"], "event_source=host;host_name=db1");
}

#[test]
fn ignored_types_exit_0_and_missing_macros_exit_2() {
    let env = TestEnv::new();
    let rk = routing_key(32);
    let out =
        nagios(&env, &["-k", &rk, "-t", "FLAPPINGSTART", "-n", "host", "-f", "HOSTNAME=a", "-f", "HOSTSTATE=UP"], &[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("FLAPPINGSTART is ignored"));
    let out = nagios(
        &env,
        &["-k", &rk, "-t", "PROBLEM", "-n", "service", "-f", "HOSTNAME=a", "-f", "SERVICESTATE=CRITICAL"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("SERVICEDESC: macro is required"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = nagios(&env, &["-k", &rk, "-t", "PROBLEM", "-n", "neither"], &[]);
    assert_eq!(out.status.code(), Some(2));
    // A misspelt type in a Nagios command must not page nobody with exit 0.
    let out =
        nagios(&env, &["-k", &rk, "-t", "PROBELM", "-n", "host", "-f", "HOSTNAME=a", "-f", "HOSTSTATE=DOWN"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("notification type") && err.contains("\"PROBELM\""), "{err}");
    assert!(env.spool_files().is_empty(), "nothing stored");
}

#[test]
fn pagerduty_nagios_pl_spool_files_are_delivered() {
    let env = TestEnv::new();
    let _d = env.start();
    let rk = routing_key(33);
    let text = format!(
        "CONTACTPAGER={rk}\nNOTIFICATIONTYPE=PROBLEM\nHOSTNAME=web1\nSERVICEDESC=Disk /var\nSERVICESTATE=CRITICAL\nSERVICEOUTPUT=DISK CRITICAL\npd_nagios_object=service\n"
    );
    std::fs::write(env.spool.join("pd_1700000000_123.txt"), text).unwrap();
    std::fs::write(
        env.spool.join("pd_1700000001_124.txt"),
        "HOSTNAME=x\nNOTIFICATIONTYPE=DOWNTIMESTART\nHOSTSTATE=UP\npd_nagios_object=host\n",
    )
    .unwrap();
    std::fs::write(env.spool.join("pd_1700000002_125.txt"), "no equals sign here\n").unwrap();
    let got = env.fake.wait_accepted(1, WAIT);
    assert_eq!(got[0].body["dedup_key"], SERVICE_KEY);
    assert_eq!(got[0].body["routing_key"], rk.as_str());
    wait_until("the ignored file removed and the bad one rejected", WAIT, || {
        env.spool_files().is_empty() && env.spool.join("rejected/pd_1700000002_125.txt.reason").exists()
    });
}

#[test]
fn alerts_lists_what_is_open_and_repeats_can_be_dropped() {
    let env = TestEnv::with_config("[mapping]\ndrop_repeated_triggers = \"1h\"\n");
    let d = env.start();
    let rk = routing_key(34);
    let mut c = env.connect();
    c.send_line(&trigger(&rk, "open-1", "disk full"));
    let first = c.read_reply();
    c.send_line(&trigger(&rk, "gone-1", "was open"));
    c.read_reply();
    env.fake.wait_accepted(2, WAIT);
    c.send_line(&serde_json::json!({"routing_key": rk, "event_action": "resolve", "dedup_key": "gone-1"}).to_string());
    c.read_reply();
    env.fake.wait_accepted(3, WAIT);
    wait_until("alerts shows only the open one", WAIT, || {
        let a = env.queue_json_cmd(&["alerts"]);
        a.as_array().is_some_and(|a| a.len() == 1 && a[0]["dedup_key"] == "open-1")
    });
    // A repeated trigger with the same summary is answered with the open alert's id, not sent.
    c.send_line(&trigger(&rk, "open-1", "disk full"));
    let repeat = c.read_reply();
    assert_eq!(repeat["ok"], true);
    assert_eq!(repeat["id"], first["id"]);
    // A different summary is news, and goes out.
    c.send_line(&trigger(&rk, "open-1", "disk full, now 100%"));
    c.read_reply();
    let got = env.fake.wait_accepted(4, WAIT);
    assert_eq!(got[3].body["payload"]["summary"], "disk full, now 100%");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(env.fake.accepted().len(), 4);
    // A resolve with no known trigger is still sent, and said so in the log.
    c.send_line(
        &serde_json::json!({"routing_key": rk, "event_action": "resolve", "dedup_key": "never-seen"}).to_string(),
    );
    c.read_reply();
    env.fake.wait_accepted(5, WAIT);
    let (_, _, log) = d.terminate(Duration::from_secs(10));
    assert!(log.contains("no trigger known for this dedup key"), "{log}");
    // Stopped: alerts reads the store directly.
    let a = env.queue_json_cmd(&["alerts"]);
    assert_eq!(a[0]["summary"], "disk full, now 100%");
}

/// Runs a real Nagios 4 core (Debian's nagios4) with a service that goes CRITICAL then OK and a
/// contact whose notification command is `pdrelay nagios`: once with -f macros, once with
/// environment macros. `.ci/run` installs nagios4 and sets PDRELAY_REQUIRE_NAGIOS=1, so there a
/// missing Nagios fails the test instead of skipping it.
#[test]
fn a_real_nagios_pages_through_pdrelay() {
    let nagios_bin = Path::new("/usr/sbin/nagios4");
    if !nagios_bin.exists() {
        assert!(
            std::env::var("PDRELAY_REQUIRE_NAGIOS").is_err(),
            "nagios4 is not installed (apt-get install nagios4-core)"
        );
        eprintln!("SKIPPED: /usr/sbin/nagios4 not installed");
        return;
    }
    for environment_macros in [false, true] {
        let env = TestEnv::new();
        let _d = env.start();
        let rk = routing_key(if environment_macros { 36 } else { 35 });
        let notify = if environment_macros {
            format!("{BIN} nagios --config {} -k {rk} -t $NOTIFICATIONTYPE$ -n service", env.config.display())
        } else {
            format!(
                "{BIN} nagios --config {} -k {rk} -t $NOTIFICATIONTYPE$ -n service -f HOSTNAME=\"$HOSTNAME$\" -f SERVICEDESC=\"$SERVICEDESC$\" -f SERVICESTATE=\"$SERVICESTATE$\" -f SERVICEOUTPUT=\"$SERVICEOUTPUT$\"",
                env.config.display()
            )
        };
        let dir = env.dir.path().join("nagios");
        write_nagios_config(&dir, &rk, &notify, environment_macros, false);
        let verify = Command::new(nagios_bin).arg("-v").arg(dir.join("nagios.cfg")).output().unwrap();
        assert!(verify.status.success(), "nagios -v:\n{}", String::from_utf8_lossy(&verify.stdout));
        let mut core = KillOnDrop(
            Command::new(nagios_bin).arg(dir.join("nagios.cfg")).stdout(std::process::Stdio::null()).spawn().unwrap(),
        );
        let nagios_log = || std::fs::read_to_string(dir.join("nagios.log")).unwrap_or_default();
        let deadline = Duration::from_secs(90);
        wait_until_or("the trigger from Nagios", deadline, || !env.fake.accepted().is_empty(), &nagios_log);
        std::fs::write(dir.join("state"), "0 DISK OK - free space: /var 60%\n").unwrap();
        wait_until_or(
            "the resolve from Nagios",
            deadline,
            || env.fake.accepted().iter().any(|r| r.body["event_action"] == "resolve"),
            &nagios_log,
        );
        let _ = core.0.kill();
        let got = env.fake.accepted();
        let first: &Value = &got[0].body;
        assert_eq!(first["event_action"], "trigger");
        assert_eq!(first["dedup_key"], SERVICE_KEY, "pd-nagios's dedup key");
        assert_eq!(first["routing_key"], rk.as_str());
        assert_eq!(first["payload"]["summary"], "web1/Disk /var is CRITICAL: DISK CRITICAL - free space: /var 3%");
        let resolve = got.iter().find(|r| r.body["event_action"] == "resolve").unwrap();
        assert_eq!(resolve.body["dedup_key"], SERVICE_KEY);
        if environment_macros {
            assert!(
                first["payload"]["custom_details"]["CONTACTPAGER"] == rk.as_str(),
                "environment macros carry the rest"
            );
        }
    }
}

/// Writes a Nagios 4 configuration in `dir`: host web1 with service "Disk /var" whose check
/// reports `dir/state` (starts CRITICAL), a contact `pagerduty` (pager `rk`) notified through
/// `notify`, checks every second; with `external_commands`, Nagios reads `dir/nagios.cmd`.
pub fn write_nagios_config(dir: &Path, rk: &str, notify: &str, environment_macros: bool, external_commands: bool) {
    std::fs::create_dir_all(dir.join("checkresults")).unwrap();
    std::fs::write(dir.join("state"), "2 DISK CRITICAL - free space: /var 3%\n").unwrap();
    std::fs::write(
        dir.join("check.sh"),
        format!("read code msg < {}\necho \"$msg\"\nexit $code\n", dir.join("state").display()),
    )
    .unwrap();
    let d = dir.display();
    std::fs::write(
        dir.join("objects.cfg"),
        format!(
            r#"
define timeperiod {{
    timeperiod_name always
    alias always
    sunday 00:00-24:00
    monday 00:00-24:00
    tuesday 00:00-24:00
    wednesday 00:00-24:00
    thursday 00:00-24:00
    friday 00:00-24:00
    saturday 00:00-24:00
}}
define command {{
    command_name check_state
    command_line /bin/sh {d}/check.sh
}}
define command {{
    command_name check_up
    command_line /bin/true
}}
define command {{
    command_name notify-service-by-pdrelay
    command_line {notify}
}}
define command {{
    command_name notify-host-by-pdrelay
    command_line /bin/true
}}
define contact {{
    contact_name pagerduty
    alias PagerDuty
    pager {rk}
    service_notification_period always
    host_notification_period always
    service_notification_options w,u,c,r
    host_notification_options d,r
    service_notification_commands notify-service-by-pdrelay
    host_notification_commands notify-host-by-pdrelay
}}
define host {{
    host_name web1
    alias web1
    address 127.0.0.1
    check_command check_up
    max_check_attempts 1
    check_interval 1
    retry_interval 1
    check_period always
    contacts pagerduty
    notification_interval 0
    notification_period always
}}
define service {{
    host_name web1
    service_description Disk /var
    check_command check_state
    max_check_attempts 1
    check_interval 1
    retry_interval 1
    check_period always
    contacts pagerduty
    notification_interval 0
    notification_period always
    notification_options w,u,c,r
}}
"#
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("nagios.cfg"),
        format!(
            "log_file={d}/nagios.log\ncfg_file={d}/objects.cfg\nobject_cache_file={d}/objects.cache\nprecached_object_file={d}/objects.precache\n\
             status_file={d}/status.dat\nstatus_update_interval=1\nnagios_user=root\nnagios_group=root\ncheck_external_commands={}\n\
             command_file={d}/nagios.cmd\nlock_file={d}/nagios.lock\ntemp_file={d}/nagios.tmp\ntemp_path={d}\ncheck_result_path={d}/checkresults\n\
             state_retention_file={d}/retention.dat\nretain_state_information=0\ninterval_length=1\nmax_service_check_spread=1\nmax_host_check_spread=1\n\
             check_result_reaper_frequency=1\nenable_notifications=1\nenable_flap_detection=0\nenable_environment_macros={}\nuse_syslog=0\n\
             log_rotation_method=n\nlog_notifications=1\nservice_check_timeout=10\nnotification_timeout=20\n",
            u8::from(external_commands),
            u8::from(environment_macros)
        ),
    )
    .unwrap();
}

pub fn wait_until_or(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool, context: &dyn Fn() -> String) {
    let end = std::time::Instant::now() + deadline;
    while !cond() {
        assert!(std::time::Instant::now() < end, "timed out waiting for {what}; nagios.log:\n{}", context());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The shipped configs pass the real parsers: `nagios4 -v` and `icinga2 daemon -C`.
#[test]
fn shipped_nagios_and_icinga2_configs_validate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let required = std::env::var("PDRELAY_REQUIRE_NAGIOS").is_ok();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    if Path::new("/usr/sbin/nagios4").exists() {
        let shipped = std::fs::read_to_string(root.join("packaging/nagios/pdrelay.cfg"))
            .unwrap()
            .replace("YOUR_32_CHARACTER_INTEGRATION_KEY", &routing_key(1));
        std::fs::write(dir.path().join("pdrelay.cfg"), shipped).unwrap();
        std::fs::write(
            dir.path().join("objects.cfg"),
            "define timeperiod {\n timeperiod_name 24x7\n alias 24x7\n sunday 00:00-24:00\n}\n\
             define command {\n command_name check_up\n command_line /bin/true\n}\n\
             define host {\n host_name web1\n address 127.0.0.1\n check_command check_up\n max_check_attempts 1\n check_period 24x7\n contacts pagerduty\n notification_period 24x7\n}\n\
             define service {\n host_name web1\n service_description Disk\n check_command check_up\n max_check_attempts 1\n check_interval 1\n retry_interval 1\n check_period 24x7\n contacts pagerduty\n notification_period 24x7\n}\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("nagios.cfg"),
            format!(
                "cfg_file={d}/objects.cfg\ncfg_file={d}/pdrelay.cfg\ncheck_result_path={d}\nlock_file={d}/lock\ntemp_path={d}\nlog_file={d}/log\nnagios_user=root\nnagios_group=root\n"
            ),
        )
        .unwrap();
        let out = Command::new("/usr/sbin/nagios4").arg("-v").arg(dir.path().join("nagios.cfg")).output().unwrap();
        assert!(out.status.success(), "nagios4 -v:\n{}", String::from_utf8_lossy(&out.stdout));
    } else {
        assert!(!required, "nagios4 is not installed");
    }
    if Path::new("/usr/sbin/icinga2").exists() {
        std::fs::write(
            dir.path().join("icinga2.conf"),
            format!(
                "include <itl>\nobject CheckCommand \"ok\" {{ command = [ \"/bin/true\" ] }}\n\
                 object Host \"web1\" {{ check_command = \"ok\"; address = \"127.0.0.1\" }}\n\
                 object Service \"Disk\" {{ host_name = \"web1\"; check_command = \"ok\" }}\n\
                 include \"{}\"\n",
                root.join("packaging/icinga2/pdrelay.conf").display()
            ),
        )
        .unwrap();
        let out = Command::new("/usr/sbin/icinga2")
            .args(["daemon", "-C", "-c"])
            .arg(dir.path().join("icinga2.conf"))
            .output()
            .unwrap();
        assert!(out.status.success(), "icinga2 daemon -C:\n{}", String::from_utf8_lossy(&out.stdout));
    } else {
        assert!(!required, "icinga2 is not installed");
    }
}
