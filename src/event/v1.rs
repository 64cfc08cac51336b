//! Events API v1 (generic): `POST {events_url}/generic/2010-04-15/create_event.json`, as in
//! PagerDuty's events-v1 OpenAPI: service key, event type, incident key, description, details,
//! client, client URL and contexts. This is what pd-send and pdagent's queue files carry.

use serde::{Deserialize, Serialize};

use super::fields::{
    details_object, fit_dedup_key, new_dedup_key, routing_key_or_default, truncate_chars, EventAction, EventError,
    IntakeDefaults, RoutingKey, MAX_SUMMARY_CHARS,
};

/// A v1 event as sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct V1Event {
    /// Integration key of the service (v1's name for the routing key).
    pub service_key: RoutingKey,
    /// trigger, acknowledge or resolve.
    pub event_type: EventAction,
    /// v1's dedup key; at most 255 characters; always set after intake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident_key: Option<String>,
    /// Required for triggers; at most 1024 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Free-form details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
    /// Name of the monitoring client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// URL of the monitoring client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_url: Option<String>,
    /// Link and image contexts, passed through.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contexts: Vec<serde_json::Value>,
}

/// A v1 event as a producer writes it (pdagent's queue files add an `agent` object, ignored).
#[derive(Debug, Default, Deserialize)]
pub struct V1Input {
    #[serde(default)]
    pub service_key: Option<String>,
    pub event_type: String,
    #[serde(default)]
    pub incident_key: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub details: Option<serde_json::Value>,
    #[serde(default)]
    pub client: Option<String>,
    #[serde(default)]
    pub client_url: Option<String>,
    #[serde(default)]
    pub contexts: Vec<serde_json::Value>,
}

impl V1Event {
    /// Applies the intake rules: service key (or the default), event type, an incident key for a
    /// trigger without one, description required for a trigger and cut to 1024 characters,
    /// incident key fit to 255.
    pub fn from_input(input: V1Input, defaults: &IntakeDefaults) -> Result<Self, EventError> {
        let service_key = routing_key_or_default(input.service_key.as_deref(), "service_key", defaults)?;
        let event_type = EventAction::parse(&input.event_type, "event_type")?;
        let incident_key = match input.incident_key.filter(|k| !k.is_empty()) {
            Some(key) => Some(fit_dedup_key(key)),
            None if event_type == EventAction::Trigger => Some(new_dedup_key()),
            None => return Err(EventError::new("incident_key", format!("is required for {event_type}"))),
        };
        let mut description = input.description.filter(|d| !d.is_empty());
        if let Some(d) = &mut description {
            truncate_chars(d, MAX_SUMMARY_CHARS);
        }
        // As pd-send and v2's summary: a trigger's description must have more than blanks.
        if event_type == EventAction::Trigger && description.as_deref().is_none_or(|d| d.trim().is_empty()) {
            return Err(EventError::new("description", "is required for trigger and must not be blank"));
        }
        for (i, context) in input.contexts.iter().enumerate() {
            check_context(context, i)?;
        }
        Ok(V1Event {
            service_key,
            event_type,
            incident_key,
            description,
            details: details_object(input.details),
            client: input.client.filter(|c| !c.is_empty()),
            client_url: input.client_url.filter(|c| !c.is_empty()),
            contexts: input.contexts,
        })
    }
}

/// One v1 context as PagerDuty's events-v1 schema requires it: an object whose `type` is `link`
/// (with a non-empty string `href`) or `image` (with a non-empty string `src`).
fn check_context(context: &serde_json::Value, i: usize) -> Result<(), EventError> {
    let field = |name: &str| format!("contexts[{i}]{name}");
    if !context.is_object() {
        return Err(EventError::new(field(""), "must be an object"));
    }
    let required = match context.get("type").and_then(serde_json::Value::as_str) {
        Some("link") => "href",
        Some("image") => "src",
        _ => return Err(EventError::new(field(".type"), "must be link or image")),
    };
    match context.get(required).and_then(serde_json::Value::as_str) {
        Some(url) if !url.is_empty() => Ok(()),
        _ => Err(EventError::new(field(&format!(".{required}")), "is required (a non-empty string)")),
    }
}

#[cfg(test)]
mod tests {
    use crate::event::{Event, IntakeDefaults, Severity};

    #[test]
    fn pdagent_queue_file_with_unicode_escape_is_read() {
        let text = r#"{"agent":{"agent_id":"SOME_ID","queued_at":"SOME_TIME","queued_by":"pd-send"},"description":"\u00e9","details":{},"event_type":"acknowledge","incident_key":"server.fire","service_key":"abcdefabcdefabcdefabcdefabcdefab"}"#;
        let d = IntakeDefaults { routing_key: None, source: "h".into(), severity: Severity::Error };
        let Event::V1(e) = Event::from_json(text.as_bytes(), &d).unwrap() else { panic!("v1") };
        assert_eq!(e.description.as_deref(), Some("é"));
        assert_eq!(e.incident_key.as_deref(), Some("server.fire"));
        let body: serde_json::Value = serde_json::from_slice(&Event::V1(e).request_body()).unwrap();
        assert!(body.get("agent").is_none());
        assert_eq!(body["event_type"], "acknowledge");
    }
}
