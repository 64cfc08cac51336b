//! The value rules of a parsed [`ConfigFile`]: every number against its range (`check_ranges`),
//! `[delivery]`, the two-way settings (REST API and `[ackback]`), `[http]`, and the one-line
//! form of a TOML problem. Each check appends one `key: rule` line per problem, so that
//! `check-config` reports every problem in one run.

use std::time::Duration;

use crate::config::delivery::{DeliverySection, MAX_RATE_LIMIT};
use crate::config::sections::{ConfigFile, HttpSection};
use crate::event::RoutingKey;

/// Checks `[delivery]`: the outage threshold, the probe interval and the rate limits.
pub(super) fn check_delivery(d: &DeliverySection, problems: &mut Vec<String>) {
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
pub(super) fn check_two_way(file: &ConfigFile, problems: &mut Vec<String>) {
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

/// Checks `[http]`: the listen address, the TLS pair and the allow-list, and the rule that a
/// listener off loopback needs both TLS and an allow-list. The certificate and key files are read
/// when the daemon starts, not here (`send` and `nagios` read this config too, as users who may
/// not be able to read the key).
pub(super) fn check_http(
    http: &HttpSection,
    problems: &mut Vec<String>,
) -> (Option<std::net::SocketAddr>, Vec<crate::config::allow::AllowEntry>) {
    let listen = http.listen.parse::<std::net::SocketAddr>().ok();
    let mut allow = Vec::new();
    for entry in &http.allow {
        match crate::config::allow::AllowEntry::parse(entry) {
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
pub(super) fn check_ranges(file: &ConfigFile, problems: &mut Vec<String>) {
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
pub(super) fn toml_problem(e: &toml::de::Error, line: Option<(usize, &str)>) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::delivery::RateLimits;
    use crate::config::{Config, ConfigError};

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
        assert_eq!(c.http_allow, vec![crate::config::allow::AllowEntry::parse("127.0.0.1").unwrap()]);
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
