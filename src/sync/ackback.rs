//! Ack-back: an incident acknowledged in PagerDuty (or resolved there, with `on_resolve`)
//! acknowledges the problem in Nagios (its external command file) or Icinga 2 (its REST API
//! `actions/acknowledge-problem`), with the PagerDuty user's name in the comment, once per
//! acknowledgement.
//!
//! Off unless `[ackback]` names a target (and reconciliation is on: the acknowledgements come from
//! it, `reconcile`). Only alerts still triggered here (not resolved, and not acknowledged by this
//! host itself) whose dedup key is the Nagios mapping's
//! (`event_source=service;host_name=H;service_desc=S` or `event_source=host;host_name=H`) are
//! passed back. "Once": the view records `<incident id>@<acknowledged at>` after every target
//! took it; a new acknowledgement (after a re-trigger) is passed back again.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::config::sections::AckBackSection;
use crate::producers::nagios::{HOST_KEY_PREFIX, SERVICE_DESC_SEPARATOR, SERVICE_KEY_PREFIX};
use crate::queue::store::Store;
use crate::queue::view::PagerDutyView;

/// Author written with every acknowledgement.
pub const AUTHOR: &str = "pdrelay";
/// Longest host name, service description or comment passed back, in characters.
pub const MAX_FIELD_CHARS: usize = 512;

/// The Nagios or Icinga object behind a dedup key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A host problem.
    Host {
        /// host_name.
        host: String,
    },
    /// A service problem.
    Service {
        /// host_name.
        host: String,
        /// service_description.
        service: String,
    },
}

/// Parses the Nagios mapping's dedup key (built by
/// [`crate::producers::nagios::pd_nagios_dedup_key`]); `None` for any other key, or one whose names hold
/// control characters (they could not be written as one command line).
pub fn parse_nagios_key(dedup_key: &str) -> Option<Problem> {
    let ok = |s: &str| !s.is_empty() && !s.chars().any(char::is_control) && s.chars().count() <= MAX_FIELD_CHARS;
    if let Some(rest) = dedup_key.strip_prefix(SERVICE_KEY_PREFIX) {
        // Nagios host names hold no ';'; a service description may.
        let (host, service) = rest.split_once(SERVICE_DESC_SEPARATOR)?;
        return (ok(host) && ok(service) && !host.contains(';'))
            .then(|| Problem::Service { host: host.to_owned(), service: service.to_owned() });
    }
    let host = dedup_key.strip_prefix(HOST_KEY_PREFIX)?;
    (ok(host) && !host.contains(';')).then(|| Problem::Host { host: host.to_owned() })
}

/// The comment: who did what in PagerDuty, on one line. Both the user's name and the incident
/// id come from PagerDuty's answer: control characters become spaces (a newline would start a
/// second Nagios command), and each is cut to [`MAX_FIELD_CHARS`].
pub fn comment(view: &PagerDutyView) -> String {
    let one_line = |text: &str| -> String {
        text.chars().map(|c| if c.is_control() { ' ' } else { c }).take(MAX_FIELD_CHARS).collect()
    };
    let who = one_line(view.by.as_deref().unwrap_or("someone"));
    let what = if view.status == "resolved" { "Resolved" } else { "Acknowledged" };
    format!("{what} in PagerDuty by {who} (incident {})", one_line(view.incident_id.as_deref().unwrap_or("?")))
}

/// Longest line written to Nagios's command FIFO, in bytes: PIPE_BUF on Linux, the most a pipe
/// takes in one piece (a longer write may interleave with another writer's).
pub const MAX_COMMAND_BYTES: usize = 4096;

/// The Nagios external command line for `problem` (sticky, no notification, not persistent).
/// The comment, the last field, is cut (at a character boundary) so that the line fits in
/// [`MAX_COMMAND_BYTES`] when the names leave room for it.
pub fn nagios_command(problem: &Problem, comment: &str, now_s: u64) -> String {
    let head = match problem {
        Problem::Host { host } => format!("[{now_s}] ACKNOWLEDGE_HOST_PROBLEM;{host};2;0;0;{AUTHOR};"),
        Problem::Service { host, service } => {
            format!("[{now_s}] ACKNOWLEDGE_SVC_PROBLEM;{host};{service};2;0;0;{AUTHOR};")
        }
    };
    let mut room = MAX_COMMAND_BYTES.saturating_sub(head.len() + 1).min(comment.len());
    while !comment.is_char_boundary(room) {
        room -= 1;
    }
    format!("{head}{}\n", &comment[..room])
}

/// Writes one command line to Nagios's command file without ever blocking for long: the FIFO is
/// opened `O_WRONLY | O_NONBLOCK` (no reader: an error at once, ENXIO), and a full pipe is retried
/// until `timeout`. A line over [`MAX_COMMAND_BYTES`] (PIPE_BUF) is refused, so a line goes in
/// whole or not at all. A regular file (some setups, and tests) is appended to.
pub fn write_command(path: &Path, line: &str, timeout: Duration) -> std::io::Result<()> {
    if line.len() > MAX_COMMAND_BYTES {
        return Err(std::io::Error::other(format!(
            "{}: the command is {} bytes, over the {MAX_COMMAND_BYTES} a pipe takes in one piece",
            path.display(),
            line.len()
        )));
    }
    let mut file =
        std::fs::OpenOptions::new().append(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path).map_err(
            |e| {
                if e.raw_os_error() == Some(libc::ENXIO) {
                    std::io::Error::other(format!("{}: nobody reads it (is Nagios running?)", path.display()))
                } else {
                    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
                }
            },
        )?;
    let end = Instant::now() + timeout;
    loop {
        match file.write(line.as_bytes()) {
            Ok(n) if n == line.len() => return Ok(()),
            Ok(n) => {
                return Err(std::io::Error::other(format!("{}: short write ({n} of {})", path.display(), line.len())))
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("{}: the pipe stayed full for {timeout:?} (is Nagios reading it?)", path.display()),
                ))
            }
            Err(e) => return Err(std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        }
    }
}

/// Icinga 2's API: `POST /v1/actions/acknowledge-problem`.
pub struct Icinga2 {
    http: reqwest::Client,
    url: String,
    user: String,
    password: String,
}

impl Icinga2 {
    /// Acknowledges `problem`, naming it through `filter_vars` (no text pasted into the filter).
    pub async fn acknowledge(&self, problem: &Problem, comment: &str) -> Result<(), String> {
        let (kind, filter, vars) = match problem {
            Problem::Host { host } => ("Host", "host.name==pd_host", serde_json::json!({"pd_host": host})),
            Problem::Service { host, service } => (
                "Service",
                "host.name==pd_host && service.name==pd_service",
                serde_json::json!({"pd_host": host, "pd_service": service}),
            ),
        };
        let body = serde_json::json!({
            "type": kind, "filter": filter, "filter_vars": vars,
            "author": AUTHOR, "comment": comment, "sticky": true, "notify": false,
        });
        let response = self
            .http
            .post(format!("{}/v1/actions/acknowledge-problem", self.url))
            .basic_auth(&self.user, Some(&self.password))
            .header(reqwest::header::ACCEPT, "application/json")
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("Icinga 2 API: {e}"))?;
        let status = response.status().as_u16();
        // 409: already acknowledged (Icinga 2.11+ answers so per object).
        if (200..300).contains(&status) || status == 409 {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        let text: String = text.chars().take(200).collect();
        Err(format!("Icinga 2 API answered {status}: {}", crate::text::escape_controls(&text)))
    }
}

/// Ack-back's targets and its memory of what it has logged.
pub struct AckBack {
    nagios: Option<PathBuf>,
    icinga2: Option<Icinga2>,
    on_resolve: bool,
    timeout: Duration,
    logged: Mutex<std::collections::HashSet<String>>,
}

impl AckBack {
    /// From `[ackback]`; `Ok(None)` when no target is set. Reads the password file and the CA.
    pub fn from_config(section: &AckBackSection) -> Result<Option<AckBack>, String> {
        if !section.enabled() {
            return Ok(None);
        }
        let icinga2 = if section.icinga2_url.is_empty() {
            None
        } else {
            let password = if section.icinga2_password_file.as_os_str().is_empty() {
                section.icinga2_password.0.clone()
            } else {
                let p = &section.icinga2_password_file;
                let text = std::fs::read_to_string(p)
                    .map_err(|e| format!("ackback.icinga2_password_file: cannot read {}: {e}", p.display()))?;
                text.lines().next().unwrap_or("").trim().to_owned()
            };
            let mut builder = reqwest::Client::builder()
                .user_agent(concat!("pdrelay/", env!("CARGO_PKG_VERSION")))
                .timeout(section.timeout)
                .connect_timeout(section.timeout);
            if !section.icinga2_ca_file.as_os_str().is_empty() {
                let p = &section.icinga2_ca_file;
                let pem = std::fs::read(p)
                    .map_err(|e| format!("ackback.icinga2_ca_file: cannot read {}: {e}", p.display()))?;
                for cert in reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| format!("ackback.icinga2_ca_file {}: {e}", p.display()))?
                {
                    builder = builder.add_root_certificate(cert);
                }
            }
            Some(Icinga2 {
                http: builder.build().map_err(|e| format!("Icinga 2 API client: {e}"))?,
                url: section.icinga2_url.trim_end_matches('/').to_owned(),
                user: section.icinga2_user.clone(),
                password,
            })
        };
        Ok(Some(AckBack {
            nagios: Some(section.nagios_command_file.clone()).filter(|p| !p.as_os_str().is_empty()),
            icinga2,
            on_resolve: section.on_resolve,
            timeout: section.timeout,
            logged: Mutex::new(Default::default()),
        }))
    }

    /// Passes back every acknowledgement not passed back yet; records each that every target
    /// took. Failures are logged once per acknowledgement and tried again next pass.
    pub async fn pass(&self, store: &Store) {
        let views = match store.pagerduty_views() {
            Ok(v) => v,
            Err(e) => return warn!(error = %e, "ack-back: reading the ledger"),
        };
        let mut done = Vec::new();
        for mut view in views {
            let wanted = view.status == "acknowledged" || (self.on_resolve && view.status == "resolved");
            let mark = view.mark();
            if !wanted || view.acked_back.as_deref() == Some(mark.as_str()) {
                continue;
            }
            // Open here and triggered: an acknowledgement this host sent itself (Nagios's own
            // ACKNOWLEDGEMENT notification) is not echoed back.
            let open_here = matches!(store.alert(&view.routing_key, &view.dedup_key),
                Ok(Some(a)) if a.is_open() && a.last_action.as_str() == "trigger");
            let Some(problem) = parse_nagios_key(&view.dedup_key).filter(|_| open_here) else { continue };
            let comment = comment(&view);
            match self.send(&problem, &comment).await {
                Ok(()) => {
                    info!(dedup_key = %crate::text::escaped(&view.dedup_key), comment = %crate::text::escaped(&comment), "acknowledged in Nagios/Icinga");
                    view.acked_back = Some(mark);
                    done.push((view, true));
                }
                Err(e) => {
                    if self.logged.lock().expect("logged lock").insert(mark) {
                        warn!(dedup_key = %crate::text::escaped(&view.dedup_key), error = %crate::text::escaped(&e), "ack-back failed; will try again");
                    }
                }
            }
        }
        if !done.is_empty() {
            if let Err(e) = store.put_pagerduty_views(done).await {
                warn!(error = %e, "ack-back: recording what was passed back (it may be passed back again)");
            }
        }
    }

    async fn send(&self, problem: &Problem, comment: &str) -> Result<(), String> {
        if let Some(path) = &self.nagios {
            let now_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let line = nagios_command(problem, comment, now_s);
            let (path, timeout) = (path.clone(), self.timeout);
            tokio::task::spawn_blocking(move || write_command(&path, &line, timeout))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("Nagios command file {e}"))?;
        }
        if let Some(icinga2) = &self.icinga2 {
            icinga2.acknowledge(problem, comment).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nagios_keys_parse_and_others_do_not() {
        assert_eq!(
            parse_nagios_key("event_source=service;host_name=web1;service_desc=Disk /var;x"),
            Some(Problem::Service { host: "web1".into(), service: "Disk /var;x".into() })
        );
        assert_eq!(parse_nagios_key("event_source=host;host_name=db1"), Some(Problem::Host { host: "db1".into() }));
        assert_eq!(parse_nagios_key("event_source=host;host_name=db1\n[1] SHUTDOWN_PROGRAM"), None);
        assert_eq!(parse_nagios_key("event_source=service;host_name=web1"), None);
        assert_eq!(parse_nagios_key("my-own-key"), None);
    }

    #[test]
    fn a_command_is_one_line_whatever_the_user_name() {
        let view = PagerDutyView {
            routing_key: "R".into(),
            dedup_key: "k".into(),
            status: "acknowledged".into(),
            incident_id: Some("PABC".into()),
            html_url: None,
            by: Some("Eve\n[0] SHUTDOWN_PROGRAM".into()),
            changed_at: None,
            checked_ms: 0,
            acked_back: None,
        };
        let line = nagios_command(&Problem::Host { host: "db1".into() }, &comment(&view), 7);
        assert_eq!(line, "[7] ACKNOWLEDGE_HOST_PROBLEM;db1;2;0;0;pdrelay;Acknowledged in PagerDuty by Eve [0] SHUTDOWN_PROGRAM (incident PABC)\n");
        assert_eq!(line.matches('\n').count(), 1);
    }

    #[test]
    fn the_incident_id_cannot_start_a_second_command_and_a_line_fits_a_pipe() {
        let view = PagerDutyView {
            routing_key: "R".into(),
            dedup_key: "k".into(),
            status: "resolved".into(),
            incident_id: Some("P1\n[0] SHUTDOWN_PROGRAM".into()),
            html_url: None,
            by: Some("é".repeat(MAX_FIELD_CHARS)),
            changed_at: None,
            checked_ms: 0,
            acked_back: None,
        };
        let service = Problem::Service { host: "h".repeat(MAX_FIELD_CHARS), service: "ü".repeat(MAX_FIELD_CHARS) };
        let text = comment(&view);
        assert!(text.ends_with("(incident P1 [0] SHUTDOWN_PROGRAM)"), "{text}");
        let line = nagios_command(&service, &text, 7);
        assert_eq!(line.matches('\n').count(), 1);
        assert!(line.ends_with('\n') && line.len() <= MAX_COMMAND_BYTES, "{} bytes", line.len());
        let dir = tempfile::tempdir().unwrap();
        let long = format!("{}\n", "x".repeat(MAX_COMMAND_BYTES));
        let e = write_command(&dir.path().join("cmd"), &long, Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains("a pipe takes in one piece"), "{e}");
    }

    #[test]
    fn a_fifo_nobody_reads_is_an_error_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("nagios.cmd");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = write_command(&fifo, "x\n", Duration::from_secs(60)).unwrap_err();
        assert!(e.to_string().contains("nobody reads it"), "{e}");
    }
}
