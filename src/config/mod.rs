//! Configuration: the TOML file (`/etc/pdrelay/config.toml`, or `--config`, or `PDRELAY_CONFIG`)
//! read into [`ConfigFile`] with a default for every key and unknown keys refused, then checked
//! into a [`Config`] that the rest of the program trusts.
//!
//! Every key is described in `config.example.toml` at the top of the repository.
//!
//! The parts: [`sections`] (the file as written, with its defaults), [`check`] (the value rules),
//! [`host`] (user, group and write-permission lookups for `check-config`'s warnings). This file
//! holds what the rest of the program uses: [`Config::load`], [`Config`] and [`ConfigError`].

pub mod allow;
pub mod check;
pub mod delivery;
pub mod host;
pub mod nagios;
pub mod sections;

use std::path::{Path, PathBuf};

use crate::config::check::{check_delivery, check_http, check_ranges, check_two_way, toml_problem, MAX_TOML_PROBLEMS};
use crate::config::host::{group_id, group_name, user_name, writable_by, writable_by_me};
use crate::config::sections::{ConfigFile, MAX_RESOLVE_HOLD};
use crate::event::{local_hostname, IntakeDefaults, RoutingKey, Severity};
use nagios::{NagiosSettings, TypeAction};

/// Where the config is read from when neither `--config` nor `PDRELAY_CONFIG` names one.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/pdrelay/config.toml";

/// Why a config cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The config path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has unknown keys or values of the wrong type; every such
    /// problem, then every value rule broken in the rest.
    #[error("{}", .problems.iter().map(|p| format!("{}: {p}", path.display())).collect::<Vec<_>>().join("\n"))]
    Parse {
        /// The config path.
        path: PathBuf,
        /// One line each: `line N: KEY...: what` for TOML problems, `key: rule` for the rest.
        problems: Vec<String>,
    },
    /// Values that parse but break a rule; one line per problem.
    #[error("{}", .problems.join("\n"))]
    Invalid {
        /// Each problem, `key: rule`.
        problems: Vec<String>,
    },
}

impl ConfigError {
    /// What to do about an unreadable config, when the fix is known: a file that only its group
    /// may read (the packaged `root:pdrelay 0640`) names the group to join. `None` otherwise.
    pub fn hint(&self) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        let ConfigError::Read { path, source } = self else { return None };
        if source.kind() != std::io::ErrorKind::PermissionDenied {
            return None;
        }
        let meta = std::fs::metadata(path).ok()?;
        if meta.mode() & 0o040 == 0 {
            return None;
        }
        let group = group_name(meta.gid()).unwrap_or_else(|| meta.gid().to_string());
        Some(format!(
            "{} is readable by the group {group}: join it (sudo usermod -aG {group} USER) and log in again",
            path.display()
        ))
    }
}

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file as read.
    pub file: ConfigFile,
    /// Octal socket mode, parsed.
    pub socket_mode: u32,
    /// The Events API base URL without a trailing slash.
    pub events_url: String,
    /// What intake fills in.
    pub defaults: IntakeDefaults,
    /// Group id for the socket file, if one is configured.
    pub socket_gid: Option<u32>,
    /// The Nagios mapping tables, merged over the defaults.
    pub nagios: NagiosSettings,
    /// `http.listen`, parsed; `None` when the listener is off.
    pub http_listen: Option<std::net::SocketAddr>,
    /// `http.allow`, parsed.
    pub http_allow: Vec<crate::config::allow::AllowEntry>,
    /// `[[routes]]`, checked.
    pub router: crate::rules::routing::Router,
    /// `[[maintenance]]`, checked.
    pub windows: Vec<crate::rules::silence::Window>,
    /// `[[expected_senders]]`, checked.
    pub expected_senders: Vec<crate::rules::heartbeat::Expected>,
}

impl Config {
    /// Reads and checks the config at `path`. A missing file at the default path is not an
    /// error (every key has a default); a missing file named explicitly is.
    pub fn load(path: &Path, explicit: bool) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => String::new(),
            Err(source) => return Err(ConfigError::Read { path: path.to_owned(), source }),
        };
        Config::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { problems, .. } => ConfigError::Parse { path: path.to_owned(), problems },
            other => other,
        })
    }

    /// Parses and checks TOML text.
    ///
    /// Every problem is reported at once: an unknown key or a value of the wrong type (a bad
    /// duration, a string for a number) is noted with its line, its line set aside, and the
    /// rest read again (at most [`MAX_TOML_PROBLEMS`] times); the value rules are then checked
    /// on what remains. Only a TOML syntax error stops the reading (the text after it has no
    /// meaning), and is reported alone.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let mut lines: Vec<&str> = text.split('\n').collect();
        if let Err(e) = toml::from_str::<toml::Table>(text) {
            let line = e.span().map(|r| text[..r.start].matches('\n').count());
            let problem = toml_problem(&e, line.map(|l| (l, lines[l])));
            return Err(ConfigError::Parse { path: PathBuf::new(), problems: vec![problem] });
        }
        let mut problems = Vec::new();
        let file = loop {
            let current = lines.join("\n");
            match toml::from_str::<ConfigFile>(&current) {
                Ok(file) => break file,
                Err(e) => {
                    let span = e.span();
                    let first = span.as_ref().map(|r| current[..r.start].matches('\n').count());
                    let last = span
                        .as_ref()
                        .map(|r| current[..r.end.max(r.start + 1).min(current.len())].matches('\n').count());
                    problems.push(toml_problem(&e, first.map(|l| (l, lines[l]))));
                    let (Some(first), Some(last)) = (first, last) else {
                        return Err(ConfigError::Parse { path: PathBuf::new(), problems });
                    };
                    if problems.len() >= MAX_TOML_PROBLEMS || lines[first..=last].iter().all(|l| l.trim().is_empty()) {
                        return Err(ConfigError::Parse { path: PathBuf::new(), problems });
                    }
                    // Set the offending lines aside (blank, so later line numbers stay right).
                    lines[first..=last].iter_mut().for_each(|l| *l = "");
                    // If that broke the syntax (a line inside a multi-line value), stop here.
                    if toml::from_str::<toml::Value>(&lines.join("\n")).is_err() {
                        return Err(ConfigError::Parse { path: PathBuf::new(), problems });
                    }
                }
            }
        };
        match Config::check(file) {
            Ok(config) if problems.is_empty() => Ok(config),
            Ok(_) => Err(ConfigError::Parse { path: PathBuf::new(), problems }),
            Err(ConfigError::Invalid { problems: more }) => {
                if problems.is_empty() {
                    return Err(ConfigError::Invalid { problems: more });
                }
                problems.extend(more);
                Err(ConfigError::Parse { path: PathBuf::new(), problems })
            }
            Err(other) => Err(other),
        }
    }

    /// Checks every value, collecting all problems.
    pub fn check(file: ConfigFile) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let socket_mode = match u32::from_str_radix(file.ingest.socket_mode.trim_start_matches("0o"), 8) {
            Ok(mode) if mode <= 0o777 => mode,
            _ => {
                problems.push(format!(
                    "ingest.socket_mode: must be an octal mode such as \"0660\" (got {:?})",
                    file.ingest.socket_mode
                ));
                0o660
            }
        };
        if file.state_dir.as_os_str().is_empty() {
            problems.push("state_dir: must not be empty".to_owned());
        }
        if file.ingest.socket.as_os_str().is_empty() || file.ingest.admin_socket.as_os_str().is_empty() {
            problems.push("ingest.socket, ingest.admin_socket: must not be empty".to_owned());
        }
        if file.ingest.spool_dirs.iter().any(|d| d.as_os_str().is_empty()) {
            problems.push("ingest.spool_dirs: must not hold an empty path".to_owned());
        }
        if file.ingest.spool_dirs.is_empty() {
            problems.push(
                "ingest.spool_dirs: must name at least one directory (send's drop-files go to the first)".to_owned(),
            );
        }
        if file.ingest.admin_socket == file.ingest.socket {
            problems.push("ingest.admin_socket: must differ from ingest.socket".to_owned());
        }
        let socket_gid = match file.ingest.socket_group.as_str() {
            "" => None,
            group => match group_id(group) {
                Some(gid) => Some(gid),
                None => {
                    problems.push(format!("ingest.socket_group: no group named {group:?} on this host"));
                    None
                }
            },
        };
        let mut nagios = NagiosSettings {
            resolve_on_flapping_stop: file.nagios.resolve_on_flapping_stop,
            ..NagiosSettings::default()
        };
        for (ntype, action) in &file.nagios.notification_types {
            match TypeAction::parse(action) {
                Some(a) => {
                    nagios.notification_types.insert(ntype.to_ascii_uppercase(), a);
                }
                None => problems.push(format!(
                    "nagios.notification_types.{ntype}: must be trigger, acknowledge, resolve or ignore (got {action:?})"
                )),
            }
        }
        for (state, severity) in &file.nagios.severity {
            match Severity::exact(severity) {
                Some(sev) => {
                    nagios.severity.insert(state.to_ascii_uppercase(), sev);
                }
                None => problems.push(format!(
                    "nagios.severity.{state}: must be critical, error, warning or info (got {severity:?})"
                )),
            }
        }
        if !file.metrics.listen.is_empty() && file.metrics.listen.parse::<std::net::SocketAddr>().is_err() {
            problems.push(format!(
                "metrics.listen: must be an address such as 127.0.0.1:9464 (got {:?})",
                file.metrics.listen
            ));
        }
        if !matches!(file.log_format.as_str(), "text" | "json") {
            problems.push(format!("log_format: must be text or json (got {:?})", file.log_format));
        }
        if !file.pagerduty.proxy.is_empty() && reqwest::Proxy::all(file.pagerduty.proxy.as_str()).is_err() {
            problems.push(format!(
                "pagerduty.proxy: must be a proxy URL such as http://proxy:3128 (got {:?})",
                file.pagerduty.proxy
            ));
        }
        if !file.pagerduty.local_address.is_empty() && file.pagerduty.local_address.parse::<std::net::IpAddr>().is_err()
        {
            problems.push(format!(
                "pagerduty.local_address: must be an IP address (got {:?})",
                file.pagerduty.local_address
            ));
        }
        let events_url = file.pagerduty.events_url.trim_end_matches('/').to_owned();
        match reqwest::Url::parse(&events_url) {
            Ok(url) if url.query().is_some() || url.fragment().is_some() => problems.push(format!(
                "pagerduty.events_url: must be a base URL without ?query or #fragment (got {:?})",
                file.pagerduty.events_url
            )),
            Ok(url) if url.scheme() == "https" || url.scheme() == "http" => {}
            _ => problems.push(format!(
                "pagerduty.events_url: must be an http or https URL (got {:?})",
                file.pagerduty.events_url
            )),
        }
        let routing_key = match file.pagerduty.default_routing_key.as_str() {
            "" => None,
            key => match RoutingKey::parse(key, "pagerduty.default_routing_key") {
                Ok(key) => Some(key),
                Err(e) => {
                    problems.push(e.to_string());
                    None
                }
            },
        };
        check_ranges(&file, &mut problems);
        let r = &file.retry;
        if r.initial_interval > r.max_interval {
            problems.push("retry.initial_interval: must be at most retry.max_interval".to_owned());
        }
        let severity = match Severity::exact(&file.mapping.default_severity) {
            Some(s) => s,
            None => {
                problems.push(format!(
                    "mapping.default_severity: must be one of critical, error, warning, info (got {:?})",
                    file.mapping.default_severity
                ));
                Severity::Error
            }
        };
        let level_words = ["error", "warn", "info", "debug", "trace", "off"];
        let plain_word = !file.log_level.contains(['=', ',', ':']);
        if tracing_subscriber::EnvFilter::try_new(&file.log_level).is_err()
            || (plain_word && !level_words.contains(&file.log_level.to_ascii_lowercase().as_str()))
        {
            problems.push(format!(
                "log_level: must be error, warn, info, debug, trace or a tracing filter (got {:?})",
                file.log_level
            ));
        }
        check_delivery(&file.delivery, &mut problems);
        check_two_way(&file, &mut problems);
        let (http_listen, http_allow) = check_http(&file.http, &mut problems);
        let router = crate::rules::routing::Router::check(&file.routes, &mut problems);
        let windows = crate::rules::silence::check_windows(&file.maintenance, &mut problems);
        let expected_senders = crate::rules::heartbeat::check(
            &file.heartbeat,
            &file.expected_senders,
            routing_key.as_ref(),
            &mut problems,
        );
        if file.flap_damping.resolve_hold > MAX_RESOLVE_HOLD {
            problems.push("flap_damping.resolve_hold: must be at most 24h (0 turns it off)".to_owned());
        }
        if !problems.is_empty() {
            return Err(ConfigError::Invalid { problems });
        }
        let source = match file.mapping.default_source.as_str() {
            "" => local_hostname(),
            s => s.to_owned(),
        };
        Ok(Config {
            defaults: IntakeDefaults { routing_key, source, severity },
            socket_mode,
            events_url,
            file,
            socket_gid,
            nagios,
            http_listen,
            http_allow,
            router,
            windows,
            expected_senders,
        })
    }

    /// The client's network settings.
    pub fn network(&self) -> sections::Network {
        let p = &self.file.pagerduty;
        sections::Network {
            proxy: Some(p.proxy.clone()).filter(|s| !s.is_empty()),
            ca_bundle: Some(p.ca_bundle.clone()).filter(|s| !s.as_os_str().is_empty()),
            local_address: p.local_address.parse().ok(),
        }
    }

    /// Directory of the sled database.
    pub fn queue_path(&self) -> PathBuf {
        self.file.state_dir.join("queue")
    }
}

/// Directories the packaged unit (`systemd/pdrelay.service`, `ProtectSystem=strict`) lets the
/// daemon write besides its state and spool directories.
const UNIT_WRITABLE: &[&str] = &["/run/pdrelay", "/var/lib/prometheus/node-exporter"];

impl Config {
    /// What `check-config` reports without refusing the config: settings that are valid but will
    /// fail on this host. Today the metrics textfile: its directory must exist, be writable by
    /// the daemon's user (the owner of `state_dir` when it exists, else whoever runs the check),
    /// and lie where the packaged unit lets the daemon write. One line per warning, `key: what`.
    pub fn host_warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        let textfile = &self.file.metrics.textfile;
        if textfile.as_os_str().is_empty() {
            return warnings;
        }
        let dir = match textfile.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let shown = dir.display();
        let Ok(meta) = std::fs::metadata(&dir) else {
            warnings.push(format!(
                "metrics.textfile: the directory {shown} does not exist; the daemon cannot write {}",
                textfile.display()
            ));
            return warnings;
        };
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        let daemon_uid = {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(&self.file.state_dir).map(|m| m.uid()).unwrap_or(me)
        };
        let user = user_name(daemon_uid).unwrap_or_else(|| daemon_uid.to_string());
        if daemon_uid == me {
            if let Err(e) = writable_by_me(&dir) {
                warnings.push(format!("metrics.textfile: {user} cannot write in {shown} ({e})"));
            }
        } else if !writable_by(&meta, &dir, daemon_uid) {
            use std::os::unix::fs::MetadataExt;
            warnings.push(format!(
                "metrics.textfile: the daemon's user {user} cannot write in {shown} (owner {}:{}, mode {:o}); \
                 give it the pdrelay group with write access (README, Metrics)",
                user_name(meta.uid()).unwrap_or_else(|| meta.uid().to_string()),
                group_name(meta.gid()).unwrap_or_else(|| meta.gid().to_string()),
                meta.mode() & 0o7777
            ));
        }
        let mut allowed: Vec<&Path> = vec![&self.file.state_dir];
        allowed.extend(self.file.ingest.spool_dirs.iter().map(PathBuf::as_path));
        allowed.extend(UNIT_WRITABLE.iter().map(Path::new));
        if dir.is_absolute() && !allowed.iter().any(|a| dir.starts_with(a)) {
            warnings.push(format!(
                "metrics.textfile: the packaged unit (ProtectSystem=strict) keeps {shown} read-only for the daemon; \
                 add ReadWritePaths={shown} in a drop-in (systemctl edit pdrelay; README, Metrics)"
            ));
        }
        warnings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_takes_every_default() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.events_url, "https://events.pagerduty.com");
        assert_eq!(c.file.ingest.spool_dirs, vec![PathBuf::from("/var/spool/pdrelay")]);
        assert_eq!(c.socket_mode, 0o660);
    }

    #[test]
    fn example_config_is_valid_and_complete() {
        let text = include_str!("../../config.example.toml");
        let c = Config::from_toml(text).unwrap();
        assert_eq!(c.file.state_dir, PathBuf::from("/var/lib/pdrelay"));
        for key in ["state_dir", "log_level", "log_format", "shutdown_timeout"] {
            assert!(text.contains(&format!("\n{key} = ")), "{key} missing from config.example.toml");
        }
        // Every key of the defaults appears in the example (uncommented).
        let example: toml::Value = toml::from_str(text).unwrap();
        for (section, keys) in [
            (
                "ingest",
                vec![
                    "socket",
                    "socket_mode",
                    "socket_group",
                    "max_connections",
                    "idle_timeout",
                    "line_timeout",
                    "admin_socket",
                    "spool_dirs",
                    "rescan_interval",
                    "max_file_bytes",
                    "max_line_bytes",
                ],
            ),
            (
                "pagerduty",
                vec![
                    "events_url",
                    "default_routing_key",
                    "connect_timeout",
                    "request_timeout",
                    "concurrency",
                    "proxy",
                    "ca_bundle",
                    "local_address",
                    "rest_api_key",
                    "rest_api_key_file",
                    "rest_api_url",
                    "rest_service_ids",
                    "reconcile_interval",
                ],
            ),
            (
                "retry",
                vec!["initial_interval", "max_interval", "multiplier", "randomization_factor", "max_retry_after"],
            ),
            ("mapping", vec!["default_source", "default_severity", "drop_repeated_triggers"]),
            ("retention", vec!["delivered", "failed", "max_pending_age", "sweep_interval"]),
            ("nagios", vec!["notification_types", "severity", "resolve_on_flapping_stop"]),
            ("queue", vec!["max_pending", "min_free_bytes", "dispatch_window"]),
            ("metrics", vec!["listen", "textfile", "textfile_interval"]),
            ("delivery", vec!["outage_after", "probe_interval", "rate_limit", "rate_limits", "drop_stale_pairs"]),
            ("http", vec!["listen", "tls_cert", "tls_key", "allow", "max_connections", "request_timeout"]),
            (
                "ackback",
                vec![
                    "nagios_command_file",
                    "icinga2_url",
                    "icinga2_user",
                    "icinga2_password",
                    "icinga2_password_file",
                    "icinga2_ca_file",
                    "on_resolve",
                    "timeout",
                ],
            ),
            ("flap_damping", vec!["resolve_hold"]),
            ("heartbeat", vec!["url", "interval", "check_interval"]),
        ] {
            for key in keys {
                assert!(example[section].get(key).is_some(), "{section}.{key} missing from config.example.toml");
            }
        }
    }

    #[test]
    fn nagios_tables_merge_over_the_defaults() {
        let c = Config::from_toml(
            "[nagios.notification_types]\nflappingstart = \"trigger\"\n[nagios.severity]\nWARNING = \"critical\"\n",
        )
        .unwrap();
        assert_eq!(c.nagios.notification_types["FLAPPINGSTART"], TypeAction::Send(crate::event::EventAction::Trigger));
        assert_eq!(c.nagios.notification_types["PROBLEM"], TypeAction::Send(crate::event::EventAction::Trigger));
        assert_eq!(c.nagios.severity["WARNING"], Severity::Critical);
        assert_eq!(c.nagios.severity["UNKNOWN"], Severity::Error);
        let err = Config::from_toml("[nagios.notification_types]\nPROBLEM = \"page\"\n").unwrap_err().to_string();
        assert!(err.contains("nagios.notification_types.PROBLEM"), "{err}");
    }

    #[test]
    fn dispatch_window_defaults_and_must_be_positive() {
        assert_eq!(Config::from_toml("").unwrap().file.queue.dispatch_window, 20_000);
        assert_eq!(Config::from_toml("[queue]\ndispatch_window = 5\n").unwrap().file.queue.dispatch_window, 5);
        let err = Config::from_toml("[queue]\ndispatch_window = 0\n").unwrap_err().to_string();
        assert_eq!(err, "queue.dispatch_window: must be between 1 and 1000000 (got 0)");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = Config::from_toml("[ingest]\nspool_dir = \"/x\"\n").unwrap_err().to_string();
        assert!(err.contains("spool_dir"), "{err}");
    }

    #[test]
    fn textfile_warnings_name_a_missing_or_sandboxed_directory() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let with = |textfile: &Path| {
            let text = format!("state_dir = {:?}\n[metrics]\ntextfile = {:?}\n", state, textfile);
            Config::from_toml(&text).unwrap().host_warnings()
        };
        assert!(with(&state.join("pdrelay.prom")).is_empty());
        let missing = with(&dir.path().join("nowhere/pdrelay.prom"));
        assert!(missing.len() == 1 && missing[0].contains("does not exist"), "{missing:?}");
        let outside = with(&dir.path().join("pdrelay.prom"));
        assert!(outside.len() == 1 && outside[0].contains("ReadWritePaths="), "{outside:?}");
        assert!(Config::from_toml("").unwrap().host_warnings().is_empty());
    }

    #[test]
    fn every_toml_problem_is_reported_in_one_run() {
        let text = "log_level = \"info\"\nbogus = 1\n[ingest]\nspool_dir = \"/x\"\nrescan_interval = \"5 parsecs\"\n\
                    max_connections = \"many\"\n[pagerduty]\nconcurrency = 0\n";
        let err = Config::from_toml(text).unwrap_err();
        let ConfigError::Parse { problems, .. } = &err else { panic!("expected Parse: {err:?}") };
        assert_eq!(problems.len(), 5, "{problems:#?}");
        assert!(problems[0].starts_with("line 2: bogus = 1: unknown field `bogus`"), "{}", problems[0]);
        assert!(problems.iter().any(|p| p.starts_with("line 4: spool_dir")), "{problems:#?}");
        assert!(problems.iter().any(|p| p.starts_with("line 5: rescan_interval")), "{problems:#?}");
        assert!(problems.iter().any(|p| p.starts_with("line 6: max_connections")), "{problems:#?}");
        assert!(problems.iter().any(|p| p.starts_with("pagerduty.concurrency")), "{problems:#?}");
        assert!(err.to_string().lines().count() == 5);
        // A syntax error stops the reading, alone.
        let err = Config::from_toml("bogus = 1\n[ingest\n").unwrap_err();
        let ConfigError::Parse { problems, .. } = &err else { panic!("expected Parse") };
        assert_eq!(problems.len(), 1, "{problems:?}");
    }

    #[test]
    fn every_problem_is_reported() {
        let err = Config::from_toml(
            "[pagerduty]\nevents_url = \"ftp://x\"\nconcurrency = 0\ndefault_routing_key = \"short\"\n[mapping]\ndefault_severity = \"high\"\n",
        )
        .unwrap_err();
        let ConfigError::Invalid { problems } = err else { panic!("expected Invalid") };
        assert_eq!(problems.len(), 4, "{problems:?}");
    }
}
