//! The domain of one PagerDuty event: its three shapes, the keys and enums it carries, and the
//! intake rules that make it valid before it is stored.
//!
//! Owns: parsing a JSON object into an [`Event`] (v2 alert, v2 change or v1), and normalizing it
//! as PagerDuty's Events API would require (limits from the Events API v2 overview: summary and
//! description at most 1024 characters, dedup key at most 255 characters, request body at most
//! 512 KB, severity one of `critical`, `error`, `warning`, `info`). What can be made valid is made
//! valid here; what cannot is refused with an [`EventError`] naming the field and the rule.
//! Does not own: transport (see `pagerduty::client`) or storage (see `queue`).

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::pagerduty::{change::ChangeEvent, v1::V1Event, v2::AlertEvent};

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

/// One validated event in one of the three shapes, ready to be stored and sent as it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "body", rename_all = "snake_case")]
pub enum Event {
    /// Events API v2 alert event (PD-CEF).
    Alert(AlertEvent),
    /// Events API v2 change event.
    Change(ChangeEvent),
    /// Events API v1 event.
    V1(V1Event),
}

impl Event {
    /// Parses and normalizes one event from JSON text (one object, any of the three shapes).
    ///
    /// Shape: an object with `event_type`, `service_key` or `incident_key` is v1; one with
    /// `event_action` is a v2 alert; otherwise one with `payload` is a v2 change event; one with
    /// fields of both v1 and v2 is refused (see [`shape_of`]).
    /// Errors name the field and the rule; a body over [`MAX_REQUEST_BYTES`] is refused.
    pub fn from_json(text: &[u8], defaults: &IntakeDefaults) -> Result<Event, EventError> {
        if text.len() > MAX_REQUEST_BYTES * 2 {
            return Err(EventError::new("event", "must be at most 512 KB"));
        }
        let value: serde_json::Value =
            serde_json::from_slice(text).map_err(|e| EventError::new("event", format!("is not valid JSON ({e})")))?;
        Event::from_value(value, defaults)
    }

    /// As [`Event::from_json`], from an already parsed JSON value.
    pub fn from_value(value: serde_json::Value, defaults: &IntakeDefaults) -> Result<Event, EventError> {
        if !value.is_object() {
            return Err(EventError::new("event", "must be a JSON object"));
        }
        if nesting(&value) > MAX_NESTING {
            let rule = format!("must not nest arrays and objects more than {MAX_NESTING} levels deep");
            return Err(EventError::new("event", rule));
        }
        check_numbers(&value)?;
        let event = match shape_of(&value)? {
            Some(EventKind::V1) => Event::V1(V1Event::from_input(typed(value)?, defaults)?),
            Some(EventKind::Alert) => Event::Alert(AlertEvent::from_input(typed(value)?, defaults)?),
            Some(EventKind::Change) => Event::Change(ChangeEvent::from_input(typed(value)?, defaults)?),
            None => {
                return Err(EventError::new(
                    "event",
                    "must have event_action (v2 alert), event_type (v1) or payload (v2 change)",
                ))
            }
        };
        let size = event.request_body().len();
        if size > MAX_REQUEST_BYTES {
            return Err(EventError::new(
                "event",
                format!("request body must be at most 512 KB (524288 bytes), is {size} bytes"),
            ));
        }
        Ok(event)
    }

    /// Which API the event goes to.
    pub fn kind(&self) -> EventKind {
        match self {
            Event::Alert(_) => EventKind::Alert,
            Event::Change(_) => EventKind::Change,
            Event::V1(_) => EventKind::V1,
        }
    }

    /// The routing key (v1: service key).
    pub fn routing_key(&self) -> &RoutingKey {
        match self {
            Event::Alert(e) => &e.routing_key,
            Event::Change(e) => &e.routing_key,
            Event::V1(e) => &e.service_key,
        }
    }

    /// The dedup key (v1: incident key); `None` only for change events.
    pub fn dedup_key(&self) -> Option<&str> {
        match self {
            Event::Alert(e) => e.dedup_key.as_deref(),
            Event::Change(_) => None,
            Event::V1(e) => e.incident_key.as_deref(),
        }
    }

    /// The event action (v1: event type); `None` for change events.
    pub fn action(&self) -> Option<EventAction> {
        match self {
            Event::Alert(e) => Some(e.event_action),
            Event::Change(_) => None,
            Event::V1(e) => Some(e.event_type),
        }
    }

    /// The summary (v1: description), if any.
    pub fn summary(&self) -> Option<&str> {
        match self {
            Event::Alert(e) => e.payload.as_ref().map(|p| p.summary.as_str()),
            Event::Change(e) => Some(e.payload.summary.as_str()),
            Event::V1(e) => e.description.as_deref(),
        }
    }

    /// The exact JSON body that is POSTed to the endpoint.
    pub fn request_body(&self) -> Vec<u8> {
        let result = match self {
            Event::Alert(e) => serde_json::to_vec(e),
            Event::Change(e) => serde_json::to_vec(e),
            Event::V1(e) => serde_json::to_vec(e),
        };
        result.expect("event types serialize to JSON without fail")
    }
}

/// Fields that make an object an Events API v1 event.
pub const V1_MARKERS: [&str; 3] = ["event_type", "service_key", "incident_key"];
/// Fields of Events API v2 (alert or change) events that the v1 shape has no place for.
pub const V2_MARKERS: [&str; 6] = ["event_action", "routing_key", "dedup_key", "payload", "images", "links"];

/// Which shape a JSON object is: v1 if it has any of [`V1_MARKERS`], else a v2 alert if it has
/// `event_action`, else a v2 change event if it has `payload`; `Ok(None)` for none of these (or
/// not an object).
///
/// Errors: an object with fields of both v1 ([`V1_MARKERS`]) and v2 ([`V2_MARKERS`]) is
/// ambiguous and refused, naming one field of each (`event: has both event_type (Events API v1)
/// and event_action (v2) ...`): taken as either shape, some of what the producer wrote would be
/// dropped.
pub fn shape_of(value: &serde_json::Value) -> Result<Option<EventKind>, EventError> {
    let Some(object) = value.as_object() else { return Ok(None) };
    let v1 = V1_MARKERS.iter().find(|k| object.contains_key(**k));
    let v2 = V2_MARKERS.iter().find(|k| object.contains_key(**k));
    Ok(match (v1, v2) {
        (Some(v1), Some(v2)) => {
            return Err(EventError::new(
                "event",
                format!(
                    "has both {v1} (Events API v1) and {v2} (v2), so its shape is ambiguous; send v1 \
                     (service_key, event_type, incident_key, description) or v2 (routing_key, event_action, \
                     dedup_key, payload), not a mix"
                ),
            ))
        }
        (Some(_), None) => Some(EventKind::V1),
        (None, _) if object.contains_key("event_action") => Some(EventKind::Alert),
        (None, _) if object.contains_key("payload") => Some(EventKind::Change),
        (None, _) => None,
    })
}

/// Refuses a number past a double's range (such as `1e400`): PagerDuty could not read it. Other
/// numbers, integers past 2^64 included, are kept exactly as written (serde_json's
/// `arbitrary_precision`). The error names the field's path.
fn check_numbers(value: &serde_json::Value) -> Result<(), EventError> {
    let out_of_range = |n: &serde_json::Number| n.as_f64().is_none_or(|f| !f.is_finite());
    // A first walk without paths: the common case, every number fine, costs no allocation.
    let mut stack = vec![value];
    let mut found = false;
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::Number(n) if out_of_range(n) => {
                found = true;
                break;
            }
            serde_json::Value::Array(a) => stack.extend(a.iter()),
            serde_json::Value::Object(o) => stack.extend(o.values()),
            _ => {}
        }
    }
    if !found {
        return Ok(());
    }
    let mut stack = vec![(value, String::new())];
    while let Some((v, path)) = stack.pop() {
        let join = |key: &str| if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") };
        match v {
            serde_json::Value::Number(n) if out_of_range(n) => {
                let field = if path.is_empty() { "event".to_owned() } else { path };
                let mut text = n.to_string();
                if truncate_chars(&mut text, 40) {
                    text.push('…');
                }
                let rule = format!("must be a number within a double's range, ±1.8e308 (got {text})");
                return Err(EventError::new(field, rule));
            }
            serde_json::Value::Array(a) => stack.extend(a.iter().enumerate().map(|(i, c)| (c, join(&i.to_string())))),
            serde_json::Value::Object(o) => stack.extend(o.iter().map(|(k, c)| (c, join(k)))),
            _ => {}
        }
    }
    Ok(())
}

/// Deepest nesting of arrays and objects in `value` (a scalar is 0), walked without recursion.
fn nesting(value: &serde_json::Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((v, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &serde_json::Value>> = match v {
            serde_json::Value::Array(a) => Box::new(a.iter()),
            serde_json::Value::Object(o) => Box::new(o.values()),
            _ => continue,
        };
        deepest = deepest.max(depth + 1);
        stack.extend(children.map(|c| (c, depth + 1)));
    }
    deepest
}

/// Deserializes into a wire type, naming the offending field on error.
fn typed<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, EventError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "event".to_owned() } else { path };
        EventError::new(field, e.into_inner().to_string())
    })
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
    fn details_outside_the_schema_are_made_objects() {
        use serde_json::json;
        assert_eq!(details_object(Some(json!("disk full"))), Some(json!({"details": "disk full"})));
        assert_eq!(details_object(Some(json!(3))), Some(json!({"details": 3})));
        assert_eq!(details_object(Some(json!([1, 2]))), Some(json!({"details": [1, 2]})));
        assert_eq!(details_object(Some(json!({"a": 1}))), Some(json!({"a": 1})));
        assert_eq!(details_object(Some(json!(null))), None);
        let d = IntakeDefaults { routing_key: None, source: "h".into(), severity: Severity::Error };
        let key = "a".repeat(32);
        let body = |text: String| -> serde_json::Value {
            serde_json::from_slice(&Event::from_json(text.as_bytes(), &d).unwrap().request_body()).unwrap()
        };
        let v2 = body(format!(
            r#"{{"routing_key":"{key}","event_action":"trigger","payload":{{"summary":"s","custom_details":"text"}}}}"#
        ));
        assert_eq!(v2["payload"]["custom_details"], json!({"details": "text"}));
        let v1 = body(format!(r#"{{"service_key":"{key}","event_type":"trigger","description":"d","details":[1]}}"#));
        assert_eq!(v1["details"], json!({"details": [1]}));
        let change = body(format!(
            r#"{{"routing_key":"{key}","payload":{{"summary":"s","custom_details":7}},"images":[{{"src":"https://i/x.png","alt":"a"}}]}}"#
        ));
        assert_eq!(change["payload"]["custom_details"], json!({"details": 7}));
        assert_eq!(change["images"], json!([{"src": "https://i/x.png", "alt": "a"}]));
    }

    #[test]
    fn v1_contexts_follow_the_schema() {
        let d = IntakeDefaults { routing_key: None, source: "h".into(), severity: Severity::Error };
        let key = "a".repeat(32);
        let event = |contexts: &str| {
            let text =
                format!(r#"{{"service_key":"{key}","event_type":"trigger","description":"d","contexts":{contexts}}}"#);
            Event::from_json(text.as_bytes(), &d)
        };
        assert!(event(r#"[{"type":"link","href":"https://a"},{"type":"image","src":"https://i","text":"t"}]"#).is_ok());
        for (contexts, field) in [
            (r#"[{"href":"https://a"}]"#, "contexts[0].type"),
            (r#"[{"type":"graph","href":"https://a"}]"#, "contexts[0].type"),
            (r#"[{"type":"link","href":"https://a"},{"type":"link"}]"#, "contexts[1].href"),
            (r#"[{"type":"image","src":""}]"#, "contexts[0].src"),
            (r#"["https://a"]"#, "contexts[0]"),
        ] {
            assert_eq!(event(contexts).unwrap_err().field, field, "{contexts}");
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

    #[test]
    fn routing_key_rules() {
        assert!(RoutingKey::parse(&"a".repeat(32), "routing_key").is_ok());
        assert!(RoutingKey::parse(&"A1b2".repeat(8), "routing_key").is_ok());
        for bad in ["", "short", &"a".repeat(33), &format!("{}-", "a".repeat(31)), &"é".repeat(16)] {
            let err = RoutingKey::parse(bad, "service_key").unwrap_err();
            assert_eq!(err.field, "service_key");
        }
        let key = RoutingKey::parse(&"abcdef".repeat(6)[..32], "routing_key").unwrap();
        assert_eq!(key.redacted(), "abcdef…");
        assert!(!format!("{key:?}").contains(&"abcdef".repeat(2)));
    }

    #[test]
    fn shape_is_chosen_by_fields() {
        let d = IntakeDefaults { routing_key: None, source: "h".into(), severity: Severity::Error };
        let key = "k".repeat(32);
        let v2 = format!(
            r#"{{"routing_key":"{key}","event_action":"trigger","payload":{{"summary":"s","source":"x","severity":"info"}}}}"#
        );
        assert_eq!(Event::from_json(v2.as_bytes(), &d).unwrap().kind(), EventKind::Alert);
        let v1 = format!(r#"{{"service_key":"{key}","event_type":"trigger","description":"d"}}"#);
        assert_eq!(Event::from_json(v1.as_bytes(), &d).unwrap().kind(), EventKind::V1);
        let change = format!(r#"{{"routing_key":"{key}","payload":{{"summary":"deployed"}}}}"#);
        assert_eq!(Event::from_json(change.as_bytes(), &d).unwrap().kind(), EventKind::Change);
        let none = format!(r#"{{"routing_key":"{key}"}}"#);
        assert_eq!(Event::from_json(none.as_bytes(), &d).unwrap_err().field, "event");
    }

    #[test]
    fn rejections_name_the_field_and_the_rule() {
        let d = IntakeDefaults { routing_key: None, source: "h".into(), severity: Severity::Error };
        let key = "k".repeat(32);
        let cases: Vec<(String, &str)> = vec![
            ("not json".into(), "event"),
            ("[1,2]".into(), "event"),
            (r#"{"event_action":"trigger","payload":{"summary":"s"}}"#.into(), "routing_key"),
            (
                format!(r#"{{"routing_key":"{key}","event_action":"explode","payload":{{"summary":"s"}}}}"#),
                "event_action",
            ),
            (
                format!(r#"{{"routing_key":"{key}","event_action":"trigger","payload":{{"summary":12}}}}"#),
                "payload.summary",
            ),
            (format!(r#"{{"routing_key":"{key}","event_action":"trigger"}}"#), "payload"),
            (
                format!(r#"{{"routing_key":"{key}","event_action":"trigger","payload":{{"summary":""}}}}"#),
                "payload.summary",
            ),
            (format!(r#"{{"routing_key":"{key}","event_action":"resolve"}}"#), "dedup_key"),
            (
                format!(
                    r#"{{"routing_key":"{key}","event_action":"trigger","payload":{{"summary":"s","timestamp":"yesterday"}}}}"#
                ),
                "payload.timestamp",
            ),
            (format!(r#"{{"service_key":"{key}","event_type":"trigger"}}"#), "description"),
            (format!(r#"{{"service_key":"{key}","event_type":"resolve","description":"d"}}"#), "incident_key"),
            (format!(r#"{{"routing_key":"{key}","payload":{{"source":"x"}}}}"#), "payload.summary"),
            (
                format!(
                    r#"{{"routing_key":"{key}","event_action":"trigger","payload":{{"summary":"s","custom_details":{{"big":"{}"}}}}}}"#,
                    "x".repeat(600_000)
                ),
                "event",
            ),
        ];
        for (input, field) in cases {
            let err = Event::from_json(input.as_bytes(), &d).unwrap_err();
            assert_eq!(err.field, field, "{input:.120} gave {err}");
            assert!(!err.rule.is_empty());
            assert!(!err.to_string().contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn ambiguous_shapes_are_refused_naming_both_fields() {
        let d = IntakeDefaults {
            routing_key: Some(RoutingKey::parse(&"d".repeat(32), "routing_key").unwrap()),
            source: "h".into(),
            severity: Severity::Error,
        };
        let key = "k".repeat(32);
        let payload = r#"{"summary":"s","source":"x","severity":"info"}"#;
        let cases: Vec<(String, &str, &str)> = vec![
            (
                format!(
                    r#"{{"routing_key":"{key}","event_action":"trigger","event_type":"trigger","payload":{payload}}}"#
                ),
                "event_type",
                "event_action",
            ),
            (
                r#"{"event_action":"trigger","event_type":"trigger","description":"d"}"#.to_owned(),
                "event_type",
                "event_action",
            ),
            (
                format!(r#"{{"service_key":"{key}","routing_key":"{key}","event_type":"trigger","description":"d"}}"#),
                "event_type",
                "routing_key",
            ),
            (
                format!(r#"{{"service_key":"{key}","routing_key":"{key}","payload":{{"summary":"deployed"}}}}"#),
                "service_key",
                "routing_key",
            ),
            (
                format!(r#"{{"routing_key":"{key}","event_action":"resolve","incident_key":"i","dedup_key":"i"}}"#),
                "incident_key",
                "event_action",
            ),
            (
                format!(r#"{{"service_key":"{key}","event_type":"trigger","description":"d","payload":{payload}}}"#),
                "event_type",
                "payload",
            ),
            (
                format!(r#"{{"service_key":"{key}","event_type":"resolve","incident_key":"i","dedup_key":"i"}}"#),
                "event_type",
                "dedup_key",
            ),
            (
                format!(r#"{{"service_key":"{key}","event_type":"trigger","description":"d","links":[]}}"#),
                "event_type",
                "links",
            ),
        ];
        for (input, v1, v2) in cases {
            let err = Event::from_json(input.as_bytes(), &d).unwrap_err();
            let text = err.to_string();
            assert_eq!(err.field, "event", "{input}: {text}");
            assert!(text.contains(&format!("has both {v1} (Events API v1) and {v2} (v2)")), "{input}: {text}");
            assert!(!text.contains('\n'), "one line: {text}");
        }
        // Fields both shapes have (client, client_url) or v1-only fields that are not markers do
        // not make a shape ambiguous.
        let v2 = format!(r#"{{"routing_key":"{key}","event_action":"trigger","client":"c","payload":{payload}}}"#);
        assert_eq!(Event::from_json(v2.as_bytes(), &d).unwrap().kind(), EventKind::Alert);
        let v1 = format!(r#"{{"service_key":"{key}","event_type":"trigger","client":"c","description":"d"}}"#);
        assert_eq!(Event::from_json(v1.as_bytes(), &d).unwrap().kind(), EventKind::V1);
    }

    #[test]
    fn integers_past_2_64_in_details_are_kept_exactly() {
        let d = IntakeDefaults { routing_key: None, source: "h".into(), severity: Severity::Error };
        let key = "k".repeat(32);
        let numbers = [
            "18446744073709551617",
            "-18446744073709551617",
            "340282366920938463463374607431768211457",
            "123456789012345678901234567890.5",
            "0.1000000000000000055511151231257827",
        ];
        for n in numbers {
            let text = format!(
                r#"{{"routing_key":"{key}","event_action":"trigger","payload":{{"summary":"s","custom_details":{{"n":{n},"list":[{n}]}}}}}}"#
            );
            let event = Event::from_json(text.as_bytes(), &d).unwrap();
            let body = String::from_utf8(event.request_body()).unwrap();
            assert!(body.contains(&format!(r#""n":{n}"#)) && body.contains(&format!("[{n}]")), "{n}: {body}");
            let v1 =
                format!(r#"{{"service_key":"{key}","event_type":"trigger","description":"d","details":{{"n":{n}}}}}"#);
            let body = String::from_utf8(Event::from_json(v1.as_bytes(), &d).unwrap().request_body()).unwrap();
            assert!(body.contains(&format!(r#""n":{n}"#)), "{n}: {body}");
        }
    }

    #[test]
    fn numbers_past_a_doubles_range_are_refused_with_their_path() {
        let d = IntakeDefaults { routing_key: None, source: "h".into(), severity: Severity::Error };
        let key = "k".repeat(32);
        for (details, field) in [
            (r#"{"n":1e400}"#, "payload.custom_details.n"),
            (r#"{"a":[1,{"b":-1E309}]}"#, "payload.custom_details.a.1.b"),
            (&format!(r#"{{"big":{}}}"#, "9".repeat(400)), "payload.custom_details.big"),
        ] {
            let text = format!(
                r#"{{"routing_key":"{key}","event_action":"trigger","payload":{{"summary":"s","custom_details":{details}}}}}"#
            );
            let err = Event::from_json(text.as_bytes(), &d).unwrap_err();
            assert_eq!(err.field, field, "{err}");
            assert!(err.rule.contains("within a double's range") && err.rule.len() < 120, "{err}");
        }
    }
}
