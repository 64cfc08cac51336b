//! Configuration: the TOML file (`/etc/pdrelay/config.toml`, or `--config`, or `PDRELAY_CONFIG`)
//! read into [`ConfigFile`] with a default for every key and unknown keys refused, then checked
//! into a [`Config`] that the rest of the program trusts.
//!
//! Every key is described in `config.example.toml` at the top of the repository.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::event::{local_hostname, IntakeDefaults, RoutingKey, Severity};
use crate::intake::nagios::{NagiosSettings, TypeAction};

/// Where the config is read from when neither `--config` nor `PDRELAY_CONFIG` names one.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/pdrelay/config.toml";

/// The file as written, every key optional.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConfigFile {
    /// Directory of the sled database and the agent id.
    pub state_dir: PathBuf,
    /// `error`, `warn`, `info`, `debug`, `trace`, or a tracing filter directive.
    pub log_level: String,
    /// `text` (journald-friendly lines) or `json` (one JSON object per line).
    pub log_format: String,
    /// Bound on a graceful stop: in-flight deliveries get this long to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// How producers hand events in.
    pub ingest: IngestSection,
    /// Where and how events are sent.
    pub pagerduty: PagerDutySection,
    /// Retry timing.
    pub retry: RetrySection,
    /// Defaults filled in at intake.
    pub mapping: MappingSection,
    /// How long finished records are kept.
    pub retention: RetentionSection,
    /// Nagios and Icinga notifications.
    pub nagios: NagiosSection,
    /// Bounds on the queue.
    pub queue: QueueSection,
    /// The local Events API endpoint (off unless `listen` is set).
    pub http: HttpSection,
    /// Prometheus metrics.
    pub metrics: MetricsSection,
}

/// `[metrics]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Address for `GET /metrics`, e.g. "127.0.0.1:9464"; empty: no listener.
    pub listen: String,
    /// File for node_exporter's textfile collector; empty: none.
    pub textfile: PathBuf,
    /// How often the file is rewritten.
    #[serde(with = "humantime_serde")]
    pub textfile_interval: Duration,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection { listen: String::new(), textfile: PathBuf::new(), textfile_interval: Duration::from_secs(15) }
    }
}

/// `[http]`: a local HTTP listener that answers the PagerDuty Events API with store-and-forward.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// `IP:PORT` to listen on, e.g. "127.0.0.1:8765"; empty (the default) turns the listener off.
    pub listen: String,
    /// PEM certificate chain; with `tls_key`, the listener speaks HTTPS only.
    pub tls_cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for `tls_cert`.
    pub tls_key: PathBuf,
    /// Client addresses allowed to connect (IPs or CIDRs); empty allows any. Required, with TLS,
    /// when `listen` is not a loopback address.
    pub allow: Vec<String>,
    /// Most connections served at once; more get a 503 and are closed.
    pub max_connections: usize,
    /// A request's headers, and then its body, must each arrive within this long; an idle
    /// keep-alive connection is closed after it too.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            listen: String::new(),
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            allow: Vec::new(),
            max_connections: 256,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// `[queue]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueSection {
    /// Most pending events; past it intake refuses with "queue is full".
    pub max_pending: u64,
    /// Intake refuses while the disk holding state_dir has less free space than this, in bytes.
    pub min_free_bytes: u64,
    /// Most pending events held in memory for dispatch (at least 1); more stay on disk and are
    /// read in order as these finish. Bounds the dispatcher's memory.
    pub dispatch_window: usize,
}

impl Default for QueueSection {
    fn default() -> Self {
        let limits = crate::queue::store::Limits::default();
        QueueSection { max_pending: limits.max_pending, min_free_bytes: limits.min_free_bytes, dispatch_window: 20_000 }
    }
}

/// `[nagios]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NagiosSection {
    /// Notification type -> trigger, acknowledge, resolve or ignore; merged over the defaults.
    pub notification_types: std::collections::BTreeMap<String, String>,
    /// State -> severity; merged over the defaults.
    pub severity: std::collections::BTreeMap<String, String>,
    /// Resolve on FLAPPINGSTOP/FLAPPINGEND when the state is OK or UP.
    pub resolve_on_flapping_stop: bool,
}

/// `[retention]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSection {
    /// Delivered records are removed after this long.
    #[serde(with = "humantime_serde")]
    pub delivered: Duration,
    /// Failed records are removed after this long.
    #[serde(with = "humantime_serde")]
    pub failed: Duration,
    /// A pending event older than this moves to failed with the reason "expired"; 0 = never.
    #[serde(with = "humantime_serde")]
    pub max_pending_age: Duration,
    /// How often the daemon applies these rules.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
}

impl Default for RetentionSection {
    fn default() -> Self {
        RetentionSection {
            delivered: Duration::from_secs(7 * 86_400),
            failed: Duration::from_secs(30 * 86_400),
            max_pending_age: Duration::ZERO,
            sweep_interval: Duration::from_secs(600),
        }
    }
}

/// `[ingest]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestSection {
    /// Unix stream socket for NDJSON events.
    pub socket: PathBuf,
    /// Octal mode of the socket file, e.g. "0660".
    pub socket_mode: String,
    /// Group (name or number) given to the socket file; empty keeps the daemon's group.
    pub socket_group: String,
    /// Most socket connections served at once; more get a `busy` reply and are closed.
    pub max_connections: usize,
    /// A connection that sends nothing for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A line must be complete within this long of its first byte.
    #[serde(with = "humantime_serde")]
    pub line_timeout: Duration,
    /// Admin socket for `pdrelay queue` (mode 0600: root and the daemon's user only).
    pub admin_socket: PathBuf,
    /// Directories watched for dropped files; the first also takes `pdrelay send`'s drop-files.
    pub spool_dirs: Vec<PathBuf>,
    /// Full rescan of the spool directories, besides inotify wake-ups (default 30 s, at least
    /// 100 ms). inotify reports arrivals and its own overflows, so the rescan only finds files a
    /// watch could not report (an unwatchable directory) or that could not be stored earlier.
    /// Each rescan costs about ten wake-ups of an otherwise idle daemon.
    #[serde(with = "humantime_serde")]
    pub rescan_interval: Duration,
    /// Largest spool file read, in bytes; a larger file is rejected.
    pub max_file_bytes: u64,
    /// Longest socket line, in bytes.
    pub max_line_bytes: usize,
}

/// `[pagerduty]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PagerDutySection {
    /// Base URL of the Events API (EU: https://events.eu.pagerduty.com).
    pub events_url: String,
    /// Routing key for events that carry none; empty for none.
    pub default_routing_key: String,
    /// TCP and TLS connect timeout.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Whole-request timeout, from sending to the end of the response body.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Deliveries in flight at once (across all keys).
    pub concurrency: usize,
    /// Proxy for every request; empty: the HTTPS_PROXY / NO_PROXY environment applies.
    pub proxy: String,
    /// Extra CA certificates to trust (PEM file); empty for none.
    pub ca_bundle: PathBuf,
    /// Local IP address to connect from; empty for the system's choice.
    pub local_address: String,
}

/// `[retry]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySection {
    /// First retry delay.
    #[serde(with = "humantime_serde")]
    pub initial_interval: Duration,
    /// Longest delay between two attempts.
    #[serde(with = "humantime_serde")]
    pub max_interval: Duration,
    /// Growth of the delay per attempt.
    pub multiplier: f64,
    /// Jitter: the delay is drawn from [d*(1-r), d*(1+r)].
    pub randomization_factor: f64,
    /// Longest Retry-After honoured; a larger one is cut to this.
    #[serde(with = "humantime_serde")]
    pub max_retry_after: Duration,
}

/// `[mapping]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MappingSection {
    /// `payload.source` for a trigger without one; empty means this host's name.
    pub default_source: String,
    /// Severity for a trigger without one, or with a word that maps to none.
    pub default_severity: String,
    /// Drop a trigger that repeats an open alert (same routing key, dedup key and summary) last
    /// delivered less than this long ago; 0 = off.
    #[serde(with = "humantime_serde")]
    pub drop_repeated_triggers: Duration,
}

impl Default for ConfigFile {
    fn default() -> Self {
        ConfigFile {
            state_dir: PathBuf::from("/var/lib/pdrelay"),
            log_level: "info".to_owned(),
            log_format: "text".to_owned(),
            shutdown_timeout: Duration::from_secs(10),
            ingest: IngestSection::default(),
            pagerduty: PagerDutySection::default(),
            retry: RetrySection::default(),
            mapping: MappingSection::default(),
            retention: RetentionSection::default(),
            nagios: NagiosSection::default(),
            queue: QueueSection::default(),
            http: HttpSection::default(),
            metrics: MetricsSection::default(),
        }
    }
}

impl Default for IngestSection {
    fn default() -> Self {
        IngestSection {
            socket: PathBuf::from("/run/pdrelay/pdrelay.sock"),
            socket_mode: "0660".to_owned(),
            socket_group: String::new(),
            max_connections: 256,
            idle_timeout: Duration::from_secs(60),
            line_timeout: Duration::from_secs(10),
            admin_socket: PathBuf::from("/run/pdrelay/admin.sock"),
            spool_dirs: vec![PathBuf::from("/var/spool/pdrelay")],
            rescan_interval: Duration::from_secs(30),
            max_file_bytes: 16 * 1024 * 1024,
            max_line_bytes: 1024 * 1024,
        }
    }
}

impl Default for PagerDutySection {
    fn default() -> Self {
        PagerDutySection {
            events_url: "https://events.pagerduty.com".to_owned(),
            default_routing_key: String::new(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            concurrency: 8,
            proxy: String::new(),
            ca_bundle: PathBuf::new(),
            local_address: String::new(),
        }
    }
}

impl Default for RetrySection {
    fn default() -> Self {
        RetrySection {
            initial_interval: Duration::from_secs(1),
            max_interval: Duration::from_secs(300),
            multiplier: 2.0,
            randomization_factor: 0.5,
            max_retry_after: Duration::from_secs(3600),
        }
    }
}

impl Default for MappingSection {
    fn default() -> Self {
        MappingSection {
            default_source: String::new(),
            default_severity: "error".to_owned(),
            drop_repeated_triggers: Duration::ZERO,
        }
    }
}

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
    /// The file is not valid TOML, has an unknown key or a value of the wrong type.
    #[error("{path}: {message}")]
    Parse {
        /// The config path.
        path: PathBuf,
        /// toml's message, flattened to one line.
        message: String,
    },
    /// Values that parse but break a rule; one line per problem.
    #[error("{}", .problems.join("\n"))]
    Invalid {
        /// Each problem, `key: rule`.
        problems: Vec<String>,
    },
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
    pub http_allow: Vec<crate::http::AllowEntry>,
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
            ConfigError::Parse { message, .. } => ConfigError::Parse { path: path.to_owned(), message },
            other => other,
        })
    }

    /// Parses and checks TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string().split_whitespace().collect::<Vec<_>>().join(" "),
        })?;
        Config::check(file)
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
        if file.ingest.max_file_bytes < 1024 {
            problems.push("ingest.max_file_bytes: must be at least 1024".to_owned());
        }
        if file.retry.max_retry_after < Duration::from_secs(1) {
            problems.push("retry.max_retry_after: must be at least 1s".to_owned());
        }
        if file.ingest.spool_dirs.is_empty() {
            problems.push(
                "ingest.spool_dirs: must name at least one directory (send's drop-files go to the first)".to_owned(),
            );
        }
        if file.ingest.rescan_interval < Duration::from_millis(100) {
            problems.push("ingest.rescan_interval: must be at least 100ms".to_owned());
        }
        if file.ingest.max_connections == 0 {
            problems.push("ingest.max_connections: must be at least 1".to_owned());
        }
        if file.ingest.idle_timeout.is_zero() || file.ingest.line_timeout.is_zero() {
            problems.push("ingest.idle_timeout, line_timeout: must be more than zero".to_owned());
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
        if file.metrics.textfile_interval < Duration::from_secs(1) {
            problems.push("metrics.textfile_interval: must be at least 1s".to_owned());
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
        if file.queue.max_pending == 0 {
            problems.push("queue.max_pending: must be at least 1".to_owned());
        }
        if file.queue.dispatch_window == 0 {
            problems.push("queue.dispatch_window: must be at least 1".to_owned());
        }
        if file.retention.sweep_interval < Duration::from_millis(100) {
            problems.push("retention.sweep_interval: must be at least 100ms".to_owned());
        }
        if file.ingest.max_line_bytes < 4096 {
            problems.push("ingest.max_line_bytes: must be at least 4096".to_owned());
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
        if file.pagerduty.concurrency == 0 || file.pagerduty.concurrency > 1024 {
            problems.push("pagerduty.concurrency: must be between 1 and 1024".to_owned());
        }
        if file.pagerduty.connect_timeout.is_zero() || file.pagerduty.request_timeout.is_zero() {
            problems.push("pagerduty.connect_timeout, request_timeout: must be more than zero".to_owned());
        }
        let r = &file.retry;
        if r.initial_interval.is_zero() || r.initial_interval > r.max_interval {
            problems.push("retry.initial_interval: must be more than zero and at most retry.max_interval".to_owned());
        }
        if !(r.multiplier >= 1.0 && r.multiplier <= 100.0) {
            problems.push("retry.multiplier: must be between 1 and 100".to_owned());
        }
        if !(0.0..=1.0).contains(&r.randomization_factor) {
            problems.push("retry.randomization_factor: must be between 0 and 1".to_owned());
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
        let (http_listen, http_allow) = check_http(&file.http, &mut problems);
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
        })
    }

    /// The client's network settings.
    pub fn network(&self) -> crate::pagerduty::client::Network {
        let p = &self.file.pagerduty;
        crate::pagerduty::client::Network {
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

/// Checks `[http]`: the listen address, the TLS pair and the allow-list, and the rule that a
/// listener off loopback needs both TLS and an allow-list. The certificate and key files are read
/// when the daemon starts, not here (`send` and `nagios` read this config too, as users who may
/// not be able to read the key).
fn check_http(
    http: &HttpSection,
    problems: &mut Vec<String>,
) -> (Option<std::net::SocketAddr>, Vec<crate::http::AllowEntry>) {
    let mut allow = Vec::new();
    for entry in &http.allow {
        match crate::http::AllowEntry::parse(entry) {
            Some(e) => allow.push(e),
            None => problems.push(format!(
                "http.allow: {entry:?} is not an IP address or CIDR block (such as \"10.0.0.0/8\" or \"fd00::/8\")"
            )),
        }
    }
    if http.max_connections == 0 {
        problems.push("http.max_connections: must be at least 1".to_owned());
    }
    if http.request_timeout < Duration::from_millis(100) {
        problems.push("http.request_timeout: must be at least 100ms".to_owned());
    }
    let cert = !http.tls_cert.as_os_str().is_empty();
    let key = !http.tls_key.as_os_str().is_empty();
    if cert != key {
        problems.push("http.tls_cert, http.tls_key: set both (HTTPS) or neither (plain HTTP)".to_owned());
    }
    if http.listen.is_empty() {
        return (None, allow);
    }
    let listen = match http.listen.parse::<std::net::SocketAddr>() {
        Ok(addr) => addr,
        Err(_) => {
            problems.push(format!(
                "http.listen: must be IP:PORT such as \"127.0.0.1:8765\" or \"[::1]:8765\" (got {:?})",
                http.listen
            ));
            return (None, allow);
        }
    };
    if !listen.ip().is_loopback() && (!(cert && key) || http.allow.is_empty()) {
        problems.push(format!(
            "http.listen: {listen} is not a loopback address: listening there needs http.tls_cert and \
             http.tls_key (HTTPS) and a non-empty http.allow list of client addresses"
        ));
    }
    (Some(listen), allow)
}

/// The id of group `name` (or a number), from the system's group database.
fn group_id(name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Some(gid);
    }
    let cname = std::ffi::CString::new(name).ok()?;
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is to a live local of the right type and size; getgrnam_r writes
    // only into `group` and `buf` and sets `result` to null or to `&group`.
    let rc = unsafe { libc::getgrnam_r(cname.as_ptr(), &mut group, buf.as_mut_ptr(), buf.len(), &mut result) };
    (rc == 0 && !result.is_null()).then_some(group.gr_gid)
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
        let text = include_str!("../config.example.toml");
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
            ("http", vec!["listen", "tls_cert", "tls_key", "allow", "max_connections", "request_timeout"]),
        ] {
            for key in keys {
                assert!(example[section].get(key).is_some(), "{section}.{key} missing from config.example.toml");
            }
        }
    }

    #[test]
    fn http_is_off_by_default_and_loopback_needs_no_tls() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.http_listen, None);
        let c = Config::from_toml("[http]\nlisten = \"127.0.0.1:8765\"\n").unwrap();
        assert_eq!(c.http_listen, Some("127.0.0.1:8765".parse().unwrap()));
        let c = Config::from_toml("[http]\nlisten = \"[::1]:0\"\nallow = [\"127.0.0.1\", \"::1/128\"]\n").unwrap();
        assert_eq!(c.http_allow.len(), 2);
    }

    #[test]
    fn http_off_loopback_needs_tls_and_an_allow_list() {
        for text in [
            "[http]\nlisten = \"0.0.0.0:8765\"\n",
            "[http]\nlisten = \"0.0.0.0:8765\"\nallow = [\"10.0.0.0/8\"]\n",
            "[http]\nlisten = \"192.0.2.1:8765\"\ntls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"\n",
        ] {
            let err = Config::from_toml(text).unwrap_err().to_string();
            assert!(err.contains("http.listen") && err.contains("not a loopback address"), "{text}: {err}");
        }
        let c = Config::from_toml(
            "[http]\nlisten = \"0.0.0.0:8765\"\ntls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"\nallow = [\"10.0.0.0/8\"]\n",
        )
        .unwrap();
        assert_eq!(c.http_listen, Some("0.0.0.0:8765".parse().unwrap()));
    }

    #[test]
    fn http_bad_values_are_reported() {
        let err = Config::from_toml(
            "[http]\nlisten = \"localhost\"\nallow = [\"10.0.0.0/33\", \"web1\"]\ntls_cert = \"/c.pem\"\nmax_connections = 0\nrequest_timeout = \"0s\"\n",
        )
        .unwrap_err();
        let ConfigError::Invalid { problems } = err else { panic!("expected Invalid") };
        assert_eq!(problems.len(), 6, "{problems:?}");
        let err = Config::from_toml("[http]\nport = 8765\n").unwrap_err().to_string();
        assert!(err.contains("port"), "{err}");
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
        assert_eq!(err, "queue.dispatch_window: must be at least 1");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = Config::from_toml("[ingest]\nspool_dir = \"/x\"\n").unwrap_err().to_string();
        assert!(err.contains("spool_dir"), "{err}");
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
