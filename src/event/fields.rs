//! The primitives every event shape is made of: routing key, event action, severity, the
//! event kinds, images and links, intake defaults, and the intake rules PagerDuty's Events API
//! sets for them (limits from the Events API v2 overview: summary at most 1024 characters, dedup
//! key at most 255 characters, request body at most 512 KB; timestamps in RFC 3339). Each rule
//! either makes a value valid or refuses it with an [`EventError`] naming the field and the rule.
//!
//! The three shapes (`v2`, `change`, `v1`) are built from these; nothing here knows them.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Longest summary (v2) or description (v1) PagerDuty accepts, in characters.
pub const MAX_SUMMARY_CHARS: usize = 1024;
/// Longest dedup key (v2) or incident key (v1) PagerDuty accepts, in characters.
pub const MAX_DEDUP_KEY_CHARS: usize = 255;
/// Largest request body PagerDuty accepts, in bytes (512 KB).
pub const MAX_REQUEST_BYTES: usize = 512 * 1024;
/// Length of a routing key (integration key), in ASCII alphanumeric characters.
pub const ROUTING_KEY_CHARS: usize = 32;
/// Deepest nesting of arrays and objects accepted in an event. The stored record wraps the event
/// in a few more levels, and must stay under serde_json's limit of 128 to be read back.
pub const MAX_NESTING: usize = 120;
/// Key under `custom_details` (v2) or `details` (v1) that keeps a severity pdrelay had to map.
pub const ORIGINAL_SEVERITY_DETAIL: &str = "pdrelay_original_severity";

/// An input that breaks an intake rule: the field (a JSON path such as `payload.summary`) and
/// the rule it breaks. Displays as one line, `field: rule`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct EventError {
    /// Dotted path of the offending field, or `event` for the whole object.
    pub field: String,
    /// What the field must be.
    pub rule: String,
}

impl EventError {
    /// An error for `field` breaking `rule`.
    pub fn new(field: impl Into<String>, rule: impl Into<String>) -> Self {
        EventError { field: field.into(), rule: rule.into() }
    }
}

/// A routing key (integration key, v1's service key): exactly 32 ASCII alphanumeric characters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RoutingKey(String);

impl RoutingKey {
    /// Parses a routing key; `field` names it in the error (`routing_key` or `service_key`).
    pub fn parse(value: &str, field: &str) -> Result<Self, EventError> {
        if value.len() == ROUTING_KEY_CHARS && value.bytes().all(|b| b.is_ascii_alphanumeric()) {
            Ok(RoutingKey(value.to_owned()))
        } else {
            Err(EventError::new(field, "must be 32 alphanumeric characters (an integration key)"))
        }
    }

    /// The key in full, for the request body only: never log it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 6 characters and an ellipsis: the only form that goes into logs and listings.
    pub fn redacted(&self) -> String {
        redact_routing_key(&self.0)
    }
}

/// A routing key as logs and listings show it: its first 6 characters and an ellipsis (all of
/// it, then the ellipsis, when shorter, as a stored key never is).
pub fn redact_routing_key(key: &str) -> String {
    format!("{}…", key.get(..6).unwrap_or(key))
}

impl TryFrom<String> for RoutingKey {
    type Error = EventError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        RoutingKey::parse(&value, "routing_key")
    }
}

impl From<RoutingKey> for String {
    fn from(key: RoutingKey) -> String {
        key.0
    }
}

impl fmt::Debug for RoutingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RoutingKey({})", self.redacted())
    }
}

/// What an alert event asks of PagerDuty (v2 `event_action`, v1 `event_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventAction {
    /// Open an alert, or add to the open alert with the same dedup key.
    Trigger,
    /// Acknowledge the alert with this dedup key.
    Acknowledge,
    /// Resolve the alert with this dedup key.
    Resolve,
}

impl EventAction {
    /// Parses `trigger`, `acknowledge` or `resolve`; `field` names the field in the error.
    pub fn parse(value: &str, field: &str) -> Result<Self, EventError> {
        match value {
            "trigger" => Ok(EventAction::Trigger),
            "acknowledge" => Ok(EventAction::Acknowledge),
            "resolve" => Ok(EventAction::Resolve),
            _ => Err(EventError::new(field, format!("must be one of trigger, acknowledge, resolve (got {value:?})"))),
        }
    }

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            EventAction::Trigger => "trigger",
            EventAction::Acknowledge => "acknowledge",
            EventAction::Resolve => "resolve",
        }
    }
}

impl fmt::Display for EventAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// PD-CEF severity, the only four values the Events API v2 accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// `critical`
    Critical,
    /// `error`
    Error,
    /// `warning`
    Warning,
    /// `info`
    Info,
}

impl Severity {
    /// The exact PagerDuty value, or `None` for anything else (case matters to PagerDuty).
    pub fn exact(value: &str) -> Option<Self> {
        match value {
            "critical" => Some(Severity::Critical),
            "error" => Some(Severity::Error),
            "warning" => Some(Severity::Warning),
            "info" => Some(Severity::Info),
            _ => None,
        }
    }

    /// Maps a severity spelled by another tool (syslog levels, Nagios states, Zabbix and
    /// Sensu words, any case) to PagerDuty's enum; `None` when the word is unknown.
    pub fn from_alias(value: &str) -> Option<Self> {
        let lower = value.trim().to_ascii_lowercase();
        Some(match lower.as_str() {
            "critical" | "crit" | "fatal" | "emergency" | "emerg" | "alert" | "disaster" | "high" | "down"
            | "unreachable" | "page" | "p1" => Severity::Critical,
            "error" | "err" | "average" | "major" | "unknown" | "failure" | "p2" => Severity::Error,
            "warning" | "warn" | "minor" | "medium" | "p3" => Severity::Warning,
            "info" | "information" | "informational" | "notice" | "debug" | "ok" | "up" | "low" | "not classified"
            | "success" | "p4" | "p5" => Severity::Info,
            _ => return None,
        })
    }

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

impl std::str::FromStr for Severity {
    type Err = EventError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Severity::exact(s).ok_or_else(|| EventError::new("severity", "must be one of critical, error, warning, info"))
    }
}

/// Which Events API an event is written for: `--api` of `pdrelay send`, `nagios`, `zabbix` and
/// `sensu`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ApiVersion {
    /// Events API v1 (pd-send's format).
    V1,
    /// Events API v2 (PD-CEF).
    V2,
}

/// Which Events API an event goes to, and so its endpoint under `events_url`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Events API v2 alert event: `POST {events_url}/v2/enqueue`.
    Alert,
    /// Events API v2 change event: `POST {events_url}/v2/change/enqueue`.
    Change,
    /// Events API v1 (generic): `POST {events_url}/generic/2010-04-15/create_event.json`.
    V1,
}

impl EventKind {
    /// Path of the endpoint, to append to `events_url` (no trailing slash there).
    pub fn endpoint_path(self) -> &'static str {
        match self {
            EventKind::Alert => "/v2/enqueue",
            EventKind::Change => "/v2/change/enqueue",
            EventKind::V1 => "/generic/2010-04-15/create_event.json",
        }
    }

    /// Short name for logs and listings: `v2`, `change`, `v1`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Alert => "v2",
            EventKind::Change => "change",
            EventKind::V1 => "v1",
        }
    }
}

/// What intake fills in when an event leaves it out.
#[derive(Debug, Clone)]
pub struct IntakeDefaults {
    /// Routing key for events that carry none (config `pagerduty.default_routing_key`).
    pub routing_key: Option<RoutingKey>,
    /// `payload.source` for v2 triggers without one (config, else this host's name).
    pub source: String,
    /// Severity for a v2 trigger that has none or an unknown word.
    pub severity: Severity,
}

impl Default for IntakeDefaults {
    fn default() -> Self {
        IntakeDefaults { routing_key: None, source: local_hostname(), severity: Severity::Error }
    }
}

/// This host's name, as `gethostname(2)` gives it; `localhost` if it is not valid UTF-8.
pub fn local_hostname() -> String {
    gethostname::gethostname().into_string().unwrap_or_else(|_| "localhost".to_owned())
}

/// A link shown on the alert or incident (Events API v2 `links[]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Link {
    /// URL of the link; required.
    pub href: String,
    /// Text shown for the link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// An image shown on the alert or incident (Events API v2 `images[]`); PagerDuty shows only
/// images served over HTTPS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Image {
    /// URL of the image; required.
    pub src: String,
    /// Link opened when the image is clicked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub href: Option<String>,
    /// Alternative text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alt: Option<String>,
}

pub(crate) fn check_links(links: &[Link], field: &str) -> Result<(), EventError> {
    for (i, link) in links.iter().enumerate() {
        if link.href.is_empty() {
            return Err(EventError::new(format!("{field}[{i}].href"), "must not be empty"));
        }
    }
    Ok(())
}

pub(crate) fn check_images(images: &[Image]) -> Result<(), EventError> {
    for (i, image) in images.iter().enumerate() {
        if image.src.is_empty() {
            return Err(EventError::new(format!("images[{i}].src"), "must not be empty"));
        }
    }
    Ok(())
}

/// A required summary (v2 alert, change): present, cut to [`MAX_SUMMARY_CHARS`], and not blank
/// after the cut.
pub(crate) fn required_summary(summary: Option<String>, field: &str) -> Result<String, EventError> {
    let mut summary = summary.unwrap_or_default();
    truncate_chars(&mut summary, MAX_SUMMARY_CHARS);
    if summary.trim().is_empty() {
        return Err(EventError::new(field, "is required and must not be blank (in its first 1024 characters)"));
    }
    Ok(summary)
}

/// Cuts `text` to at most `max` characters, on a character boundary. Returns whether it cut.
pub fn truncate_chars(text: &mut String, max: usize) -> bool {
    match text.char_indices().nth(max) {
        Some((byte_index, _)) => {
            text.truncate(byte_index);
            true
        }
        None => false,
    }
}

/// Makes a dedup key fit [`MAX_DEDUP_KEY_CHARS`]: a longer key becomes its first 190 characters,
/// `~` and the SHA-256 of the whole key in hex (64 characters), so the same long key always maps
/// to the same short one and a later resolve still finds its trigger.
pub fn fit_dedup_key(key: String) -> String {
    if key.chars().count() <= MAX_DEDUP_KEY_CHARS {
        return key;
    }
    let digest = Sha256::digest(key.as_bytes());
    let mut short = key;
    truncate_chars(&mut short, MAX_DEDUP_KEY_CHARS - 65);
    short.push('~');
    for byte in digest {
        short.push_str(&format!("{byte:02x}"));
    }
    short
}

/// A fresh dedup key for a trigger that has none: 32 lowercase hex digits (a random UUID).
pub fn new_dedup_key() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Resolves an optional routing key from the event, else the default; `field` names it.
pub(crate) fn routing_key_or_default(
    value: Option<&str>,
    field: &str,
    defaults: &IntakeDefaults,
) -> Result<RoutingKey, EventError> {
    match value.filter(|v| !v.is_empty()) {
        Some(key) => RoutingKey::parse(key, field),
        None => defaults
            .routing_key
            .clone()
            .ok_or_else(|| EventError::new(field, "is required (no pagerduty.default_routing_key is configured)")),
    }
}

/// Reads a timestamp in one of the ISO 8601 date-time forms PagerDuty documents and its client
/// libraries write, and returns it in the one form pdrelay sends: RFC 3339 in UTC with an upper-case
/// `T` and `Z`, and the fraction of a second only when there is one
/// (`2015-07-17T08:42:58.315Z`).
///
/// Accepted: `YYYY-MM-DD`, then `T`, `t` or a space, then `hh:mm:ss` with an optional fraction
/// (`.` and 1 to 9 digits), then an optional offset: `Z`, `z`, `+hh:mm`, `+hhmm` (PagerDuty's own
/// example, `2015-07-17T08:42:58.315+0000`, and what Python's `%z` writes) or `+hh` (or `-`). A
/// time without an offset (what Python's `isoformat()` writes for a naive datetime) is read as
/// UTC. Errors: anything else, or an impossible date or time, refused naming `field`.
pub fn normalize_timestamp(value: &str, field: &str) -> Result<String, EventError> {
    let refuse = || {
        EventError::new(
            field,
            format!(
                "must be an ISO 8601 date-time with seconds, such as 2026-11-29T16:55:00Z or \
                 2015-07-17T08:42:58.315+0000 (got {:?})",
                value.chars().take(64).collect::<String>()
            ),
        )
    };
    let bytes = value.as_bytes();
    if value.len() < 19 || !value.is_ascii() || !matches!(bytes[10], b'T' | b't' | b' ') {
        return Err(refuse());
    }
    let (date, rest) = (&value[..10], &value[11..]);
    // The time runs to the first character that is not a digit, ':' or '.'; the offset follows.
    let split = rest.find(|c: char| !(c.is_ascii_digit() || c == ':' || c == '.')).unwrap_or(rest.len());
    let (clock, offset) = rest.split_at(split);
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let offset = match offset {
        "" | "Z" | "z" => "Z".to_owned(),
        o if o.len() == 6 && o.as_bytes()[3] == b':' => o.to_owned(),
        o if o.len() == 5 && digits(&o[1..]) => format!("{}:{}", &o[..3], &o[3..]),
        o if o.len() == 3 && digits(&o[1..]) => format!("{o}:00"),
        _ => return Err(refuse()),
    };
    if !offset.starts_with(['Z', '+', '-'])
        || clock.len() < 8
        || clock.as_bytes()[8..].first().is_some_and(|&b| b != b'.')
    {
        return Err(refuse());
    }
    let rfc3339 = format!("{date}T{clock}{offset}");
    let parsed =
        time::OffsetDateTime::parse(&rfc3339, &time::format_description::well_known::Rfc3339).map_err(|_| refuse())?;
    parsed.to_offset(time::UtcOffset::UTC).format(&time::format_description::well_known::Rfc3339).map_err(|_| refuse())
}

/// Key under which a `custom_details` (v2) or `details` (v1) that is not a JSON object is kept.
pub const WRAPPED_DETAILS_KEY: &str = "details";

/// Makes `custom_details` (v2) or `details` (v1) what PagerDuty's schema allows, a JSON object:
/// `null` is left out, an object is kept as it is, and any other value (a string, a number, an
/// array, a boolean) is kept under [`WRAPPED_DETAILS_KEY`] in a new object (`"disk full"`
/// becomes `{"details": "disk full"}`).
pub fn details_object(details: Option<serde_json::Value>) -> Option<serde_json::Value> {
    match details {
        None | Some(serde_json::Value::Null) => None,
        Some(object @ serde_json::Value::Object(_)) => Some(object),
        Some(other) => {
            let mut map = serde_json::Map::new();
            map.insert(WRAPPED_DETAILS_KEY.to_owned(), other);
            Some(serde_json::Value::Object(map))
        }
    }
}

/// Records a severity word that had to be mapped in the details object, keeping the rest.
pub(crate) fn keep_original_severity(details: &mut Option<serde_json::Value>, original: &str) {
    let original = serde_json::Value::String(original.to_owned());
    match details {
        Some(serde_json::Value::Object(map)) => {
            map.insert(ORIGINAL_SEVERITY_DETAIL.to_owned(), original);
        }
        Some(other) => {
            let mut map = serde_json::Map::new();
            map.insert("details".to_owned(), other.take());
            map.insert(ORIGINAL_SEVERITY_DETAIL.to_owned(), original);
            *details = Some(serde_json::Value::Object(map));
        }
        None => {
            let mut map = serde_json::Map::new();
            map.insert(ORIGINAL_SEVERITY_DETAIL.to_owned(), original);
            *details = Some(serde_json::Value::Object(map));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_in_pagerdutys_forms_are_sent_in_one_form() {
        for (given, sent) in [
            ("2015-07-17T08:42:58.315+0000", "2015-07-17T08:42:58.315Z"),
            ("2026-12-01t10:00:00z", "2026-12-01T10:00:00Z"),
            ("2026-11-29T16:55:00Z", "2026-11-29T16:55:00Z"),
            ("2026-11-29T18:55:00+02:00", "2026-11-29T16:55:00Z"),
            ("2026-11-29T12:55:00-04", "2026-11-29T16:55:00Z"),
            ("2026-11-29 16:55:00.5+00:00", "2026-11-29T16:55:00.5Z"),
            ("2026-11-29T16:55:00.123456", "2026-11-29T16:55:00.123456Z"),
            ("2026-11-30T01:25:00+0830", "2026-11-29T16:55:00Z"),
        ] {
            assert_eq!(normalize_timestamp(given, "payload.timestamp").as_deref(), Ok(sent), "{given}");
        }
        for bad in [
            "yesterday",
            "2026-11-29",
            "2026-11-29T16:55Z",
            "2026-11-29T16:55:00 Z",
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-11-29T16:55:00+2",
            "2026-11-29T16:55:00+02:0",
            "2026-11-29T16:55:00UTC",
            "1479916549",
            "2026-11-29T16:55:00.Z",
            "2026/11/29T16:55:00Z",
            "２026-11-29T16:55:00Z",
        ] {
            let e = normalize_timestamp(bad, "payload.timestamp").unwrap_err();
            assert_eq!(e.field, "payload.timestamp", "{bad}");
            assert!(!e.to_string().contains('\n'));
        }
    }

    #[test]
    fn truncation_never_splits_a_character() {
        let cases: &[(&str, usize, &str, bool)] = &[
            ("abc", 5, "abc", false),
            ("abc", 3, "abc", false),
            ("abcd", 3, "abc", true),
            ("ééé", 2, "éé", true),
            ("日本語テキスト", 3, "日本語", true),
            ("🚨🚨", 1, "🚨", true),
            ("", 0, "", false),
        ];
        for (input, max, want, cut) in cases {
            let mut s = input.to_string();
            assert_eq!(truncate_chars(&mut s, *max), *cut, "{input}");
            assert_eq!(s, *want);
        }
    }

    #[test]
    fn summary_of_5000_multibyte_characters_is_cut_to_1024() {
        let mut s = "é".repeat(5000);
        truncate_chars(&mut s, MAX_SUMMARY_CHARS);
        assert_eq!(s.chars().count(), 1024);
        assert_eq!(s.len(), 2048);
    }

    #[test]
    fn long_dedup_keys_are_shortened_deterministically() {
        let short = "k".repeat(255);
        assert_eq!(fit_dedup_key(short.clone()), short);
        let long = "ü".repeat(300);
        let a = fit_dedup_key(long.clone());
        let b = fit_dedup_key(long);
        assert_eq!(a, b);
        assert_eq!(a.chars().count(), 255);
        assert!(a.starts_with(&"ü".repeat(190)));
        let other = fit_dedup_key(format!("{}x", "ü".repeat(299)));
        assert_ne!(a, other);
    }

    #[test]
    fn severity_aliases_map_to_the_enum() {
        let cases = [
            ("critical", Some(Severity::Critical)),
            ("CRITICAL", Some(Severity::Critical)),
            ("Disaster", Some(Severity::Critical)),
            ("err", Some(Severity::Error)),
            ("Average", Some(Severity::Error)),
            ("WARN", Some(Severity::Warning)),
            ("Information", Some(Severity::Info)),
            ("Not classified", Some(Severity::Info)),
            ("sev-banana", None),
            ("", None),
        ];
        for (word, want) in cases {
            assert_eq!(Severity::from_alias(word), want, "{word}");
        }
        assert_eq!(Severity::exact("Critical"), None);
    }
}
