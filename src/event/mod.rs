//! The domain of one PagerDuty event: its three shapes, the keys and enums it carries, and the
//! intake rules that make it valid before it is stored.
//!
//! Owns: parsing a JSON object into an [`Event`] (v2 alert, v2 change or v1), and normalizing it
//! as PagerDuty's Events API would require (limits from the Events API v2 overview: summary and
//! description at most 1024 characters, dedup key at most 255 characters, request body at most
//! 512 KB, severity one of `critical`, `error`, `warning`, `info`). What can be made valid is made
//! valid here; what cannot is refused with an [`EventError`] naming the field and the rule.
//! Does not own: transport (see `delivery::client`) or storage (see `queue`).
//!
//! Files, lowest first: [`fields`] (keys, enums, limits and the intake rules of single values),
//! then the three shapes PagerDuty accepts, [`v2`] (alert events, PD-CEF), [`change`] (change
//! events) and [`v1`] (the Events API v1 `create_event`), then this file: the [`Event`] union and
//! the choice of shape from a JSON object. The primitives are re-exported here, so the rest of
//! the program names them `event::RoutingKey` and so on.

pub mod change;
pub mod fields;
pub mod v1;
pub mod v2;

use serde::{Deserialize, Serialize};

use change::ChangeEvent;
pub use fields::*;
use v1::V1Event;
use v2::AlertEvent;

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

#[cfg(test)]
mod tests {
    use super::*;

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
