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
    /// Outage probing, rate limits, stale pairs.
    pub delivery: DeliverySection,
    /// Passing PagerDuty acknowledgements back to Nagios or Icinga 2 (off unless set).
    pub ackback: AckBackSection,
    /// Routing rules, tried in order (see [`crate::routing`]).
    pub routes: Vec<crate::routing::RouteSection>,
    /// Holding resolves so that a flapping check opens one incident.
    pub flap_damping: FlapDampingSection,
    /// Weekly maintenance windows (see [`crate::silence`]).
    pub maintenance: Vec<crate::silence::MaintenanceSection>,
    /// A dead man's switch to ping (see [`crate::heartbeat`]).
    pub heartbeat: crate::heartbeat::HeartbeatSection,
    /// Producers that must be heard from (a site relay).
    pub expected_senders: Vec<crate::heartbeat::ExpectedSenderSection>,
}

/// A secret from the config file (an API key, a password): its `Debug` form never shows it.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"<redacted>\"" })
    }
}

/// `[ackback]`: where PagerDuty acknowledgements are passed back to. Every key empty: off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AckBackSection {
    /// Nagios's external command file (its FIFO, `command_file` in nagios.cfg); empty for none.
    pub nagios_command_file: PathBuf,
    /// Icinga 2 API base URL, such as `https://localhost:5665`; empty for none.
    pub icinga2_url: String,
    /// Icinga 2 API user (an ApiUser with `actions/acknowledge-problem`).
    pub icinga2_user: String,
    /// Its password; or `icinga2_password_file`.
    pub icinga2_password: Secret,
    /// A file holding the password (first line).
    pub icinga2_password_file: PathBuf,
    /// CA certificate (PEM) of the Icinga 2 API; empty: the built-in roots.
    pub icinga2_ca_file: PathBuf,
    /// Also acknowledge when the incident is resolved in PagerDuty (default only acknowledged).
    pub on_resolve: bool,
    /// Longest wait for the Nagios command FIFO to take a line, and for an Icinga 2 request.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for AckBackSection {
    fn default() -> Self {
        AckBackSection {
            nagios_command_file: PathBuf::new(),
            icinga2_url: String::new(),
            icinga2_user: String::new(),
            icinga2_password: Secret::default(),
            icinga2_password_file: PathBuf::new(),
            icinga2_ca_file: PathBuf::new(),
            on_resolve: false,
            timeout: Duration::from_secs(5),
        }
    }
}

impl AckBackSection {
    /// Whether any ack-back target is set.
    pub fn enabled(&self) -> bool {
        !self.nagios_command_file.as_os_str().is_empty() || !self.icinga2_url.is_empty()
    }
}

/// `[flap_damping]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlapDampingSection {
    /// Each resolve (v2 resolve, v1 resolve) waits this long before it is sent; a trigger of the
    /// same routing and dedup key within it cancels both (kept as superseded), so the incident
    /// stays open. 0 (the default) = off; at most 24h.
    #[serde(with = "humantime_serde")]
    pub resolve_hold: Duration,
}

/// Longest `flap_damping.resolve_hold`.
pub const MAX_RESOLVE_HOLD: Duration = Duration::from_secs(86_400);

/// `[delivery]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliverySection {
    /// After this many failures in a row that are not about one event (network errors,
    /// timeouts, 408, 5xx) with no success between them, PagerDuty counts as unreachable: all
    /// sending stops and one event probes every `probe_interval`. 1 to 1000.
    pub outage_after: u32,
    /// Time between probes while PagerDuty is unreachable, with +-20% jitter; 100ms to 10m.
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
    /// Events a minute sent to one routing key at most (a sliding minute); 0 = no limit.
    /// PagerDuty documents about 120 a minute per integration key. 0 to 1,000,000.
    pub rate_limit: u32,
    /// Per routing key (the full 32-character key) limits that replace `rate_limit`, e.g. for
    /// an AIOps key allowed more.
    pub rate_limits: std::collections::BTreeMap<String, u32>,
    /// A trigger followed in the queue by a resolve of the same routing key and dedup key, both
    /// undelivered, is not sent: both are kept as `superseded`. Off by default.
    pub drop_stale_pairs: bool,
}

impl Default for DeliverySection {
    fn default() -> Self {
        DeliverySection {
            outage_after: 3,
            probe_interval: Duration::from_secs(5),
            rate_limit: DEFAULT_RATE_LIMIT,
            rate_limits: Default::default(),
            drop_stale_pairs: false,
        }
    }
}

/// PagerDuty's documented limit per integration key, in events a minute.
pub const DEFAULT_RATE_LIMIT: u32 = 120;
/// Highest `delivery.rate_limit` accepted, in events a minute.
pub const MAX_RATE_LIMIT: u32 = 1_000_000;

/// Proactive rate limits per routing key, in events a minute (0 = none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateLimits {
    /// For keys not listed.
    pub default_per_min: u32,
    /// By full routing key.
    pub per_key: std::collections::HashMap<String, u32>,
}

impl RateLimits {
    /// From a checked `[delivery]` section.
    pub fn from_section(d: &DeliverySection) -> RateLimits {
        RateLimits { default_per_min: d.rate_limit, per_key: d.rate_limits.clone().into_iter().collect() }
    }

    /// The limit of `routing_key`, events a minute; 0 = none.
    pub fn of(&self, routing_key: &str) -> u32 {
        self.per_key.get(routing_key).copied().unwrap_or(self.default_per_min)
    }
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
    /// Most connections served at once; more get a 503 and are closed. 1 to 65536.
    pub max_connections: usize,
    /// A request's headers, and then its body, must each arrive within this long; an idle
    /// keep-alive connection, or one whose client takes no answer, is closed after it too.
    /// 100 ms to 1 h.
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
        let limits = crate::queue::shared::Limits::default();
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
    /// PagerDuty REST API key (read-only is enough): turns on reconciliation. Never logged.
    pub rest_api_key: Secret,
    /// A file holding the REST API key (first line), instead of `rest_api_key`.
    pub rest_api_key_file: PathBuf,
    /// Base URL of the REST API (EU: https://api.eu.pagerduty.com).
    pub rest_api_url: String,
    /// Only incidents of these PagerDuty services (ids such as `PIJ90N7`); empty for any.
    pub rest_service_ids: Vec<String>,
    /// How often to read the state of tracked incidents from the REST API.
    #[serde(with = "humantime_serde")]
    pub reconcile_interval: Duration,
}

impl PagerDutySection {
    /// The REST API key: `rest_api_key`, or the first line of `rest_api_key_file`; `None` when
    /// neither is set (reconciliation off). Errors name the key and the file.
    pub fn rest_key(&self) -> Result<Option<String>, String> {
        if !self.rest_api_key.0.is_empty() {
            return Ok(Some(self.rest_api_key.0.trim().to_owned()));
        }
        if self.rest_api_key_file.as_os_str().is_empty() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&self.rest_api_key_file).map_err(|e| {
            format!("pagerduty.rest_api_key_file: cannot read {}: {e}", self.rest_api_key_file.display())
        })?;
        match text.lines().next().map(str::trim).filter(|l| !l.is_empty()) {
            Some(key) => Ok(Some(key.to_owned())),
            None => Err(format!("pagerduty.rest_api_key_file: {} is empty", self.rest_api_key_file.display())),
        }
    }

    /// Whether a REST API key is configured (reconciliation on).
    pub fn reconciles(&self) -> bool {
        !self.rest_api_key.0.is_empty() || !self.rest_api_key_file.as_os_str().is_empty()
    }
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
            delivery: DeliverySection::default(),
            ackback: AckBackSection::default(),
            routes: Vec::new(),
            flap_damping: FlapDampingSection::default(),
            maintenance: Vec::new(),
            heartbeat: Default::default(),
            expected_senders: Vec::new(),
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
            rest_api_key: Secret::default(),
            rest_api_key_file: PathBuf::new(),
            rest_api_url: "https://api.pagerduty.com".to_owned(),
            rest_service_ids: Vec::new(),
            reconcile_interval: Duration::from_secs(60),
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
    pub http_allow: Vec<crate::http::AllowEntry>,
    /// `[[routes]]`, checked.
    pub router: crate::routing::Router,
    /// `[[maintenance]]`, checked.
    pub windows: Vec<crate::silence::Window>,
    /// `[[expected_senders]]`, checked.
    pub expected_senders: Vec<crate::heartbeat::Expected>,
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
        let router = crate::routing::Router::check(&file.routes, &mut problems);
        let windows = crate::silence::check_windows(&file.maintenance, &mut problems);
        let expected_senders =
            crate::heartbeat::check(&file.heartbeat, &file.expected_senders, routing_key.as_ref(), &mut problems);
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
fn check_delivery(d: &DeliverySection, problems: &mut Vec<String>) {
    if !(1..=1000).contains(&d.outage_after) {
        problems.push("delivery.outage_after: must be between 1 and 1000".to_owned());
    }
    if d.probe_interval < Duration::from_millis(100) || d.probe_interval > Duration::from_secs(600) {
        problems.push("delivery.probe_interval: must be between 100ms and 10m".to_owned());
    }
    if d.rate_limit > MAX_RATE_LIMIT {
        problems
            .push(format!("delivery.rate_limit: must be between 0 (no limit) and {MAX_RATE_LIMIT} events a minute"));
    }
    for (key, limit) in &d.rate_limits {
        if let Err(e) = RoutingKey::parse(key, "delivery.rate_limits") {
            problems.push(format!("{e} (a key of the table is the full routing key)"));
        }
        if *limit > MAX_RATE_LIMIT {
            problems.push(format!(
                "delivery.rate_limits.{}: must be between 0 (no limit) and {MAX_RATE_LIMIT} events a minute",
                crate::event::redact_routing_key(key)
            ));
        }
    }
}

/// Checks the REST API settings (`pagerduty.rest_*`, `reconcile_interval`) and `[ackback]`.
fn check_two_way(file: &ConfigFile, problems: &mut Vec<String>) {
    let p = &file.pagerduty;
    if !p.rest_api_key.0.is_empty() && !p.rest_api_key_file.as_os_str().is_empty() {
        problems.push("pagerduty.rest_api_key, pagerduty.rest_api_key_file: set one, not both".to_owned());
    }
    let key = p.rest_api_key.0.trim();
    if !key.is_empty() && (key.len() > 256 || !key.bytes().all(|b| b.is_ascii_graphic())) {
        problems.push(
            "pagerduty.rest_api_key: must be a PagerDuty REST API key (20 printable characters, no spaces)".to_owned(),
        );
    }
    for (name, url) in [("pagerduty.rest_api_url", &p.rest_api_url), ("ackback.icinga2_url", &file.ackback.icinga2_url)]
    {
        if name == "ackback.icinga2_url" && url.is_empty() {
            continue;
        }
        match reqwest::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.query().is_none() && u.fragment().is_none() => {}
            _ => problems.push(format!("{name}: must be an http or https base URL without ?query (got {url:?})")),
        }
    }
    if p.reconcile_interval < Duration::from_secs(1) || p.reconcile_interval > Duration::from_secs(86_400) {
        problems.push(format!(
            "pagerduty.reconcile_interval: must be between 1s and 1day (got {})",
            humantime::format_duration(p.reconcile_interval)
        ));
    }
    let a = &file.ackback;
    if a.enabled() && !p.reconciles() {
        problems.push(
            "ackback: needs pagerduty.rest_api_key or pagerduty.rest_api_key_file (acknowledgements are read from \
             PagerDuty's REST API)"
                .to_owned(),
        );
    }
    if !a.icinga2_url.is_empty() && a.icinga2_user.is_empty() {
        problems.push("ackback.icinga2_user: required with ackback.icinga2_url".to_owned());
    }
    if !a.icinga2_password.0.is_empty() && !a.icinga2_password_file.as_os_str().is_empty() {
        problems.push("ackback.icinga2_password, ackback.icinga2_password_file: set one, not both".to_owned());
    }
    if a.timeout < Duration::from_millis(100) || a.timeout > Duration::from_secs(600) {
        problems.push(format!(
            "ackback.timeout: must be between 100ms and 10m (got {})",
            humantime::format_duration(a.timeout)
        ));
    }
}

fn check_http(
    http: &HttpSection,
    problems: &mut Vec<String>,
) -> (Option<std::net::SocketAddr>, Vec<crate::http::AllowEntry>) {
    let listen = http.listen.parse::<std::net::SocketAddr>().ok();
    let mut allow = Vec::new();
    for entry in &http.allow {
        match crate::http::AllowEntry::parse(entry) {
            Some(e) => match e.never_matches(listen) {
                Some(why) => problems.push(format!("http.allow: {entry:?} can never match: it {why}")),
                None => allow.push(e),
            },
            None => problems.push(format!(
                "http.allow: {entry:?} is not an IP address or CIDR block (such as \"10.0.0.0/8\" or \"fd00::/8\")"
            )),
        }
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

/// Smallest and largest value of every number in the file, checked by [`check_ranges`]: the
/// sizes in bytes, the counts and the durations. Values outside them are refused by
/// `check-config` and at start, before anything runs.
mod range {
    use std::time::Duration;

    /// 1 KiB, 1 MiB, 1 GiB, 1 PiB in bytes.
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;
    const GIB: u64 = 1024 * MIB;
    const PIB: u64 = 1024 * 1024 * GIB;

    /// Connections served at once (socket and HTTP): each holds a file descriptor and a buffer.
    pub const CONNECTIONS: (u64, u64) = (1, 65_536);
    /// `ingest.max_file_bytes`.
    pub const FILE_BYTES: (u64, u64) = (KIB, GIB);
    /// `ingest.max_line_bytes`: at least an event's worth of room, at most what a connection may buffer.
    pub const LINE_BYTES: (u64, u64) = (4 * KIB, 16 * MIB);
    /// `pagerduty.concurrency`.
    pub const CONCURRENCY: (u64, u64) = (1, 1024);
    /// `queue.max_pending`.
    pub const MAX_PENDING: (u64, u64) = (1, 100_000_000);
    /// `queue.min_free_bytes` (0: no reserve).
    pub const FREE_BYTES: (u64, u64) = (0, PIB);
    /// `queue.dispatch_window`.
    pub const DISPATCH_WINDOW: (u64, u64) = (1, 1_000_000);

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }
    const fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }
    const MINUTE: u64 = 60;
    const HOUR: u64 = 60 * MINUTE;
    const DAY: u64 = 24 * HOUR;

    /// Timeouts of a request or a line: long enough to be met, short enough to free a slot.
    pub const REQUEST_TIMEOUT: (Duration, Duration) = (ms(100), s(HOUR));
    /// `ingest.idle_timeout`.
    pub const IDLE_TIMEOUT: (Duration, Duration) = (ms(100), s(DAY));
    /// `pagerduty.connect_timeout`.
    pub const CONNECT_TIMEOUT: (Duration, Duration) = (ms(100), s(10 * MINUTE));
    /// `shutdown_timeout` (0: stop without waiting for deliveries in flight).
    pub const SHUTDOWN_TIMEOUT: (Duration, Duration) = (Duration::ZERO, s(HOUR));
    /// Periodic work: rescans and sweeps.
    pub const INTERVAL: (Duration, Duration) = (ms(100), s(DAY));
    /// `metrics.textfile_interval`.
    pub const TEXTFILE_INTERVAL: (Duration, Duration) = (s(1), s(DAY));
    /// `retry.initial_interval`, `retry.max_interval`.
    pub const RETRY_INTERVAL: (Duration, Duration) = (ms(1), s(DAY));
    /// `retry.max_retry_after`.
    pub const RETRY_AFTER: (Duration, Duration) = (s(1), s(DAY));
    /// `mapping.drop_repeated_triggers` (0: off).
    pub const REPEAT_WINDOW: (Duration, Duration) = (Duration::ZERO, s(7 * DAY));
    /// Retention of finished records and the age limit of pending ones (0: at once, or never).
    pub const RETENTION: (Duration, Duration) = (Duration::ZERO, s(3650 * DAY));
}

/// Checks every number in the file against its range in [`range`], one problem per key:
/// `key: must be between MIN and MAX (got VALUE)`.
fn check_ranges(file: &ConfigFile, problems: &mut Vec<String>) {
    let count = |problems: &mut Vec<String>, key: &str, value: u64, (min, max): (u64, u64)| {
        if !(min..=max).contains(&value) {
            problems.push(format!("{key}: must be between {min} and {max} (got {value})"));
        }
    };
    let span = |problems: &mut Vec<String>, key: &str, value: Duration, (min, max): (Duration, Duration)| {
        if !(min..=max).contains(&value) {
            let show = |d: Duration| humantime::format_duration(d).to_string();
            problems.push(format!("{key}: must be between {} and {} (got {})", show(min), show(max), show(value)));
        }
    };
    let (i, p, r) = (&file.ingest, &file.pagerduty, &file.retry);
    let wide = |n: usize| n as u64;
    count(problems, "ingest.max_connections", wide(i.max_connections), range::CONNECTIONS);
    count(problems, "ingest.max_file_bytes", i.max_file_bytes, range::FILE_BYTES);
    count(problems, "ingest.max_line_bytes", wide(i.max_line_bytes), range::LINE_BYTES);
    count(problems, "pagerduty.concurrency", wide(p.concurrency), range::CONCURRENCY);
    count(problems, "queue.max_pending", file.queue.max_pending, range::MAX_PENDING);
    count(problems, "queue.min_free_bytes", file.queue.min_free_bytes, range::FREE_BYTES);
    count(problems, "queue.dispatch_window", wide(file.queue.dispatch_window), range::DISPATCH_WINDOW);
    count(problems, "http.max_connections", wide(file.http.max_connections), range::CONNECTIONS);
    span(problems, "shutdown_timeout", file.shutdown_timeout, range::SHUTDOWN_TIMEOUT);
    span(problems, "ingest.idle_timeout", i.idle_timeout, range::IDLE_TIMEOUT);
    span(problems, "ingest.line_timeout", i.line_timeout, range::REQUEST_TIMEOUT);
    span(problems, "ingest.rescan_interval", i.rescan_interval, range::INTERVAL);
    span(problems, "pagerduty.connect_timeout", p.connect_timeout, range::CONNECT_TIMEOUT);
    span(problems, "pagerduty.request_timeout", p.request_timeout, range::REQUEST_TIMEOUT);
    span(problems, "retry.initial_interval", r.initial_interval, range::RETRY_INTERVAL);
    span(problems, "retry.max_interval", r.max_interval, range::RETRY_INTERVAL);
    span(problems, "retry.max_retry_after", r.max_retry_after, range::RETRY_AFTER);
    span(problems, "mapping.drop_repeated_triggers", file.mapping.drop_repeated_triggers, range::REPEAT_WINDOW);
    span(problems, "retention.delivered", file.retention.delivered, range::RETENTION);
    span(problems, "retention.failed", file.retention.failed, range::RETENTION);
    span(problems, "retention.max_pending_age", file.retention.max_pending_age, range::RETENTION);
    span(problems, "retention.sweep_interval", file.retention.sweep_interval, range::INTERVAL);
    span(problems, "metrics.textfile_interval", file.metrics.textfile_interval, range::TEXTFILE_INTERVAL);
    span(problems, "http.request_timeout", file.http.request_timeout, range::REQUEST_TIMEOUT);
    // Floats: NaN is outside every range.
    if !(1.0..=100.0).contains(&r.multiplier) {
        problems.push(format!("retry.multiplier: must be between 1 and 100 (got {})", r.multiplier));
    }
    if !(0.0..=1.0).contains(&r.randomization_factor) {
        problems.push(format!("retry.randomization_factor: must be between 0 and 1 (got {})", r.randomization_factor));
    }
}

/// Most TOML-level problems (unknown keys, wrong types) `check-config` lists from one file.
pub const MAX_TOML_PROBLEMS: usize = 100;

/// One TOML problem on one line: `line N: TEXT: MESSAGE`, with the line's text cut to 80
/// characters and control characters escaped.
fn toml_problem(e: &toml::de::Error, line: Option<(usize, &str)>) -> String {
    let message = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
    match line {
        Some((n, text)) => {
            let text: String = text
                .trim()
                .chars()
                .take(80)
                .map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() })
                .collect();
            format!("line {}: {text}: {message}", n + 1)
        }
        None => message,
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

/// Whether this process may create files in `dir` (access(2) with W_OK|X_OK: the mode, ACLs and
/// a read-only mount all count).
fn writable_by_me(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether user `uid` may create files in the directory `meta` describes, from its owner, group
/// and mode and the user's groups. A directory with an ACL counts as writable (its mode bits do
/// not tell), as does any directory for root.
fn writable_by(meta: &std::fs::Metadata, dir: &Path, uid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let mode = meta.mode();
    if uid == 0 || has_acl(dir) {
        return true;
    }
    if meta.uid() == uid {
        return mode & 0o300 == 0o300;
    }
    if user_groups(uid).contains(&meta.gid()) {
        return mode & 0o030 == 0o030;
    }
    mode & 0o003 == 0o003
}

/// Whether `path` carries a POSIX access ACL.
fn has_acl(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let (Ok(c), name) = (std::ffi::CString::new(path.as_os_str().as_bytes()), c"system.posix_acl_access") else {
        return false;
    };
    // SAFETY: both strings are valid and NUL-terminated; a null buffer of size 0 asks for the size.
    unsafe { libc::getxattr(c.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) > 0 }
}

/// The name of user `uid`, from the system's user database.
fn user_name(uid: u32) -> Option<String> {
    passwd(uid).map(|(name, _)| name)
}

/// Name and primary group of user `uid`.
fn passwd(uid: u32) -> Option<(String, u32)> {
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is to a live local of the right type and size; getpwuid_r writes only
    // into `pw` and `buf` and sets `result` to null or to `&pw`.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() {
        return None;
    }
    // SAFETY: pw_name points into `buf`, NUL-terminated, and `buf` is alive.
    let name = unsafe { std::ffi::CStr::from_ptr(pw.pw_name) }.to_string_lossy().into_owned();
    Some((name, pw.pw_gid))
}

/// The groups of user `uid` (primary and supplementary), at most 1024.
fn user_groups(uid: u32) -> Vec<u32> {
    let Some((name, gid)) = passwd(uid) else { return Vec::new() };
    let Ok(cname) = std::ffi::CString::new(name) else { return vec![gid] };
    let mut groups = vec![0 as libc::gid_t; 1024];
    let mut n = groups.len() as libc::c_int;
    // SAFETY: `groups` holds `n` entries; getgrouplist writes at most `n` and sets `n`.
    let rc = unsafe { libc::getgrouplist(cname.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
    if rc < 0 {
        return vec![gid];
    }
    groups.truncate(n.max(0) as usize);
    groups
}

/// The name of group `gid`, from the system's group database.
fn group_name(gid: u32) -> Option<String> {
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: as in `group_id`.
    let rc = unsafe { libc::getgrgid_r(gid, &mut group, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() {
        return None;
    }
    // SAFETY: gr_name points into `buf`, NUL-terminated, and `buf` is alive.
    Some(unsafe { std::ffi::CStr::from_ptr(group.gr_name) }.to_string_lossy().into_owned())
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
    fn http_is_off_by_default_and_loopback_needs_no_tls() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.http_listen, None);
        let c = Config::from_toml("[http]\nlisten = \"127.0.0.1:8765\"\n").unwrap();
        assert_eq!(c.http_listen, Some("127.0.0.1:8765".parse().unwrap()));
        let c = Config::from_toml("[http]\nlisten = \"[::1]:0\"\nallow = [\"::/0\", \"::1/128\"]\n").unwrap();
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
        assert_eq!(err, "queue.dispatch_window: must be between 1 and 1000000 (got 0)");
    }

    #[test]
    fn delivery_defaults_and_ranges() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.file.delivery.rate_limit, 120);
        assert_eq!(c.file.delivery.probe_interval, Duration::from_secs(5));
        assert_eq!(c.file.delivery.outage_after, 3);
        assert!(!c.file.delivery.drop_stale_pairs);
        let key = "R0000000000000000000000000000001";
        let c =
            Config::from_toml(&format!("[delivery]\nrate_limit = 0\n[delivery.rate_limits]\n{key} = 10000\n")).unwrap();
        let limits = RateLimits::from_section(&c.file.delivery);
        assert_eq!((limits.of(key), limits.of("R0000000000000000000000000000002")), (10_000, 0));
        let err = Config::from_toml(
            "[delivery]\noutage_after = 0\nprobe_interval = \"10ms\"\nrate_limit = 2000000\n[delivery.rate_limits]\nshort = 5\n",
        )
        .unwrap_err();
        let ConfigError::Invalid { problems } = err else { panic!("expected Invalid") };
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(
            problems.iter().all(|p| p.starts_with("delivery.") || p.contains("delivery.rate_limits")),
            "{problems:?}"
        );
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

    #[test]
    fn every_number_has_a_range_and_values_past_it_are_named() {
        let cases = [
            (
                "[http]\nmax_connections = 9223372036854775807\n",
                "http.max_connections: must be between 1 and 65536 (got 9223372036854775807)",
            ),
            ("[ingest]\nmax_connections = 0\n", "ingest.max_connections: must be between 1 and 65536 (got 0)"),
            (
                "[ingest]\nmax_connections = 100000\n",
                "ingest.max_connections: must be between 1 and 65536 (got 100000)",
            ),
            (
                "[ingest]\nmax_file_bytes = 100\n",
                "ingest.max_file_bytes: must be between 1024 and 1073741824 (got 100)",
            ),
            (
                "[ingest]\nmax_file_bytes = 9223372036854775807\n",
                "ingest.max_file_bytes: must be between 1024 and 1073741824",
            ),
            ("[ingest]\nmax_line_bytes = 1073741824\n", "ingest.max_line_bytes: must be between 4096 and 16777216"),
            ("[pagerduty]\nconcurrency = 5000\n", "pagerduty.concurrency: must be between 1 and 1024 (got 5000)"),
            ("[queue]\nmax_pending = 9223372036854775807\n", "queue.max_pending: must be between 1 and 100000000"),
            (
                "[queue]\nmin_free_bytes = 9223372036854775807\n",
                "queue.min_free_bytes: must be between 0 and 1125899906842624",
            ),
            (
                "[queue]\ndispatch_window = 9223372036854775807\n",
                "queue.dispatch_window: must be between 1 and 1000000",
            ),
            ("shutdown_timeout = \"100years\"\n", "shutdown_timeout: must be between 0s and 1h (got 100years"),
            ("[ingest]\nidle_timeout = \"0s\"\n", "ingest.idle_timeout: must be between 100ms and 1day (got 0s)"),
            ("[ingest]\nline_timeout = \"2h\"\n", "ingest.line_timeout: must be between 100ms and 1h (got 2h)"),
            (
                "[ingest]\nrescan_interval = \"10ms\"\n",
                "ingest.rescan_interval: must be between 100ms and 1day (got 10ms)",
            ),
            (
                "[pagerduty]\nconnect_timeout = \"1h\"\n",
                "pagerduty.connect_timeout: must be between 100ms and 10m (got 1h)",
            ),
            (
                "[pagerduty]\nrequest_timeout = \"0s\"\n",
                "pagerduty.request_timeout: must be between 100ms and 1h (got 0s)",
            ),
            ("[retry]\ninitial_interval = \"0s\"\n", "retry.initial_interval: must be between 1ms and 1day (got 0s)"),
            ("[retry]\nmax_interval = \"30days\"\n", "retry.max_interval: must be between 1ms and 1day (got 30days)"),
            (
                "[retry]\nmax_retry_after = \"500ms\"\n",
                "retry.max_retry_after: must be between 1s and 1day (got 500ms)",
            ),
            ("[retry]\nmultiplier = nan\n", "retry.multiplier: must be between 1 and 100 (got NaN)"),
            ("[retry]\nrandomization_factor = 1.5\n", "retry.randomization_factor: must be between 0 and 1 (got 1.5)"),
            (
                "[mapping]\ndrop_repeated_triggers = \"30days\"\n",
                "mapping.drop_repeated_triggers: must be between 0s and 7days",
            ),
            ("[retention]\ndelivered = \"100000days\"\n", "retention.delivered: must be between 0s and 9years"),
            ("[retention]\nfailed = \"100000days\"\n", "retention.failed: must be between 0s and 9years"),
            ("[retention]\nmax_pending_age = \"100000days\"\n", "retention.max_pending_age: must be between"),
            (
                "[retention]\nsweep_interval = \"0s\"\n",
                "retention.sweep_interval: must be between 100ms and 1day (got 0s)",
            ),
            (
                "[metrics]\ntextfile_interval = \"2days\"\n",
                "metrics.textfile_interval: must be between 1s and 1day (got 2days)",
            ),
            ("[http]\nrequest_timeout = \"5h\"\n", "http.request_timeout: must be between 100ms and 1h (got 5h)"),
        ];
        for (text, want) in cases {
            let err = Config::from_toml(text).unwrap_err();
            let ConfigError::Invalid { problems } = err else { panic!("{text}: expected Invalid") };
            assert_eq!(problems.len(), 1, "{text}: {problems:?}");
            assert!(problems[0].starts_with(want), "{text}: {problems:?}");
        }
        // The ends of each range are inside it.
        let edges = "shutdown_timeout = \"0s\"\n[ingest]\nmax_connections = 65536\nmax_file_bytes = 1024\n\
                     max_line_bytes = 16777216\nline_timeout = \"100ms\"\nidle_timeout = \"1day\"\n[http]\n\
                     max_connections = 1\nrequest_timeout = \"1h\"\n[queue]\nmax_pending = 100000000\nmin_free_bytes = 0\n\
                     [retention]\ndelivered = \"0s\"\n[retry]\ninitial_interval = \"1ms\"\nmultiplier = 100.0\n";
        Config::from_toml(edges).unwrap();
    }

    #[test]
    fn allow_entries_that_can_never_match_are_refused_and_mapped_ones_normalised() {
        let c = Config::from_toml("[http]\nlisten = \"127.0.0.1:0\"\nallow = [\"::ffff:127.0.0.1\"]\n").unwrap();
        assert_eq!(c.http_allow, vec![crate::http::AllowEntry::parse("127.0.0.1").unwrap()]);
        // A local client may connect to loopback from any of the host's addresses.
        Config::from_toml("[http]\nlisten = \"127.0.0.1:0\"\nallow = [\"10.0.0.0/8\"]\n").unwrap();
        for (text, entry) in [
            ("[http]\nlisten = \"127.0.0.1:0\"\nallow = [\"::1\"]\n", "\"::1\""),
            ("[http]\nlisten = \"[::1]:0\"\nallow = [\"127.0.0.1\"]\n", "\"127.0.0.1\""),
            ("[http]\nallow = [\"0.0.0.0\"]\n", "\"0.0.0.0\""),
            ("[http]\nallow = [\"224.0.0.1\"]\n", "\"224.0.0.1\""),
        ] {
            let err = Config::from_toml(text).unwrap_err().to_string();
            assert!(err.starts_with(&format!("http.allow: {entry} can never match: it ")), "{text}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }
}
