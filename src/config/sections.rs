//! The config file as written: [`ConfigFile`] and one struct per `[section]`, each with the
//! default of every key (unknown keys are refused), plus the limits the sections name
//! ([`MAX_RESOLVE_HOLD`]). `[delivery]` is in `config::delivery`; checking the values is the
//! `config::check` module's job.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::delivery::DeliverySection;

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
    /// Routing rules, tried in order (see [`crate::rules::routing`]).
    pub routes: Vec<crate::rules::routing::RouteSection>,
    /// Holding resolves so that a flapping check opens one incident.
    pub flap_damping: FlapDampingSection,
    /// Weekly maintenance windows (see [`crate::rules::silence`]).
    pub maintenance: Vec<crate::rules::silence::MaintenanceSection>,
    /// A dead man's switch to ping (see [`crate::rules::heartbeat`]).
    pub heartbeat: crate::rules::heartbeat::HeartbeatSection,
    /// Producers that must be heard from (a site relay).
    pub expected_senders: Vec<crate::rules::heartbeat::ExpectedSenderSection>,
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
#[derive(Debug, Clone, PartialEq, Deserialize)]
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

/// Default `queue.max_pending`, in events.
pub const DEFAULT_MAX_PENDING: u64 = 1_000_000;
/// Default `queue.min_free_bytes`, in bytes (64 MiB).
pub const DEFAULT_MIN_FREE_BYTES: u64 = 64 * 1024 * 1024;

impl Default for QueueSection {
    fn default() -> Self {
        QueueSection {
            max_pending: DEFAULT_MAX_PENDING,
            min_free_bytes: DEFAULT_MIN_FREE_BYTES,
            dispatch_window: 20_000,
        }
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

/// Network settings for the client (config `[pagerduty]`).
#[derive(Debug, Clone, Default)]
pub struct Network {
    /// Proxy URL for every request, e.g. `http://proxy:3128`.
    pub proxy: Option<String>,
    /// Extra CA certificates (PEM file).
    pub ca_bundle: Option<std::path::PathBuf>,
    /// Local address to connect from.
    pub local_address: Option<std::net::IpAddr>,
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
