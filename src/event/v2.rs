//! Events API v2 alert events (PD-CEF): `POST {events_url}/v2/enqueue`, as in PagerDuty's
//! events-v2 OpenAPI (`SendEvent`): routing key, event action, dedup key, payload with summary,
//! source, severity, timestamp, component, group, class and custom details; images; links.

use serde::{Deserialize, Serialize};

use super::fields::{
    check_images, check_links, details_object, fit_dedup_key, keep_original_severity, new_dedup_key,
    normalize_timestamp, required_summary, routing_key_or_default, EventAction, EventError, Image, IntakeDefaults,
    Link, RoutingKey, Severity,
};

/// An alert event as sent: every rule of intake already holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertEvent {
    /// Integration key of the service.
    pub routing_key: RoutingKey,
    /// trigger, acknowledge or resolve.
    pub event_action: EventAction,
    /// At most 255 characters; always set after intake (a trigger without one gets a new one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_key: Option<String>,
    /// Required for triggers; kept for acknowledge and resolve when it has a summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<AlertPayload>,
    /// Images for the alert.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<Image>,
    /// Links for the alert.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<Link>,
    /// Name of the monitoring client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// URL of the monitoring client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_url: Option<String>,
}

/// PD-CEF payload of an alert event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertPayload {
    /// At most 1024 characters, cut on a character boundary.
    pub summary: String,
    /// The affected system; this host's name by default.
    pub source: String,
    /// One of critical, error, warning, info.
    pub severity: Severity,
    /// ISO 8601 (RFC 3339) date-time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    /// Part of the source responsible (Nagios: the service description).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    /// Logical group of components.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Class or type of the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// Free-form details; any JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_details: Option<serde_json::Value>,
}

/// An alert event as a producer writes it: keys optional, severity any word.
#[derive(Debug, Default, Deserialize)]
pub struct AlertInput {
    #[serde(default)]
    pub routing_key: Option<String>,
    pub event_action: String,
    #[serde(default)]
    pub dedup_key: Option<String>,
    #[serde(default)]
    pub payload: Option<PayloadInput>,
    #[serde(default)]
    pub images: Vec<Image>,
    #[serde(default)]
    pub links: Vec<Link>,
    #[serde(default)]
    pub client: Option<String>,
    #[serde(default)]
    pub client_url: Option<String>,
}

/// The payload as a producer writes it.
#[derive(Debug, Default, Deserialize)]
pub struct PayloadInput {
    #[serde(default)]
    pub summary: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub severity: Option<String>,
    #[serde(default)]
    pub timestamp: Option<String>,
    #[serde(default)]
    pub component: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub class: Option<String>,
    #[serde(default)]
    pub custom_details: Option<serde_json::Value>,
}

impl AlertEvent {
    /// Applies the intake rules: routing key (or the default), event action, a dedup key for a
    /// trigger without one, summary cut to 1024 characters, source defaulted, severity mapped
    /// (the original word kept in `custom_details`), timestamp checked, dedup key fit to 255.
    pub fn from_input(input: AlertInput, defaults: &IntakeDefaults) -> Result<Self, EventError> {
        let routing_key = routing_key_or_default(input.routing_key.as_deref(), "routing_key", defaults)?;
        let event_action = EventAction::parse(&input.event_action, "event_action")?;
        let dedup_key = match input.dedup_key.filter(|k| !k.is_empty()) {
            Some(key) => Some(fit_dedup_key(key)),
            None if event_action == EventAction::Trigger => Some(new_dedup_key()),
            None => return Err(EventError::new("dedup_key", format!("is required for {event_action}"))),
        };
        let payload = match input.payload {
            Some(p) if event_action == EventAction::Trigger || p.summary.as_deref().is_some_and(|s| !s.is_empty()) => {
                Some(AlertPayload::from_input(p, defaults)?)
            }
            Some(_) => None,
            None if event_action == EventAction::Trigger => {
                return Err(EventError::new("payload", "is required for trigger (summary, source, severity)"))
            }
            None => None,
        };
        check_images(&input.images)?;
        check_links(&input.links, "links")?;
        Ok(AlertEvent {
            routing_key,
            event_action,
            dedup_key,
            payload,
            images: input.images,
            links: input.links,
            client: input.client.filter(|c| !c.is_empty()),
            client_url: input.client_url.filter(|c| !c.is_empty()),
        })
    }
}

impl AlertPayload {
    fn from_input(input: PayloadInput, defaults: &IntakeDefaults) -> Result<Self, EventError> {
        let summary = required_summary(input.summary, "payload.summary")?;
        let source = input.source.filter(|s| !s.is_empty()).unwrap_or_else(|| defaults.source.clone());
        let mut custom_details = details_object(input.custom_details);
        let severity = match input.severity.as_deref() {
            None | Some("") => defaults.severity,
            Some(word) => match Severity::exact(word) {
                Some(severity) => severity,
                None => {
                    keep_original_severity(&mut custom_details, word);
                    Severity::from_alias(word).unwrap_or(defaults.severity)
                }
            },
        };
        let timestamp =
            input.timestamp.as_deref().map(|ts| normalize_timestamp(ts, "payload.timestamp")).transpose()?;
        Ok(AlertPayload {
            summary,
            source,
            severity,
            timestamp,
            component: input.component.filter(|c| !c.is_empty()),
            group: input.group.filter(|c| !c.is_empty()),
            class: input.class.filter(|c| !c.is_empty()),
            custom_details,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;

    fn defaults() -> IntakeDefaults {
        IntakeDefaults {
            routing_key: Some(RoutingKey::parse(&"d".repeat(32), "k").unwrap()),
            source: "web1".into(),
            severity: Severity::Error,
        }
    }

    fn alert(json: &str) -> AlertEvent {
        match Event::from_json(json.as_bytes(), &defaults()).unwrap() {
            Event::Alert(a) => a,
            other => panic!("not an alert: {other:?}"),
        }
    }

    #[test]
    fn trigger_gets_defaults_and_a_dedup_key() {
        let a = alert(r#"{"event_action":"trigger","payload":{"summary":"disk full"}}"#);
        assert_eq!(a.routing_key.as_str(), "d".repeat(32));
        let key = a.dedup_key.clone().unwrap();
        assert_eq!(key.len(), 32);
        let p = a.payload.unwrap();
        assert_eq!(p.source, "web1");
        assert_eq!(p.severity, Severity::Error);
        assert_eq!(p.custom_details, None);
    }

    #[test]
    fn severity_outside_the_enum_is_mapped_and_kept() {
        let cases = [("CRITICAL", Severity::Critical), ("warn", Severity::Warning), ("banana", Severity::Error)];
        for (word, want) in cases {
            let a = alert(&format!(
                r#"{{"event_action":"trigger","payload":{{"summary":"s","severity":"{word}","custom_details":{{"a":1}}}}}}"#
            ));
            let p = a.payload.unwrap();
            assert_eq!(p.severity, want, "{word}");
            let details = p.custom_details.unwrap();
            assert_eq!(details["pdrelay_original_severity"], word);
            assert_eq!(details["a"], 1);
        }
        let a = alert(
            r#"{"event_action":"trigger","payload":{"summary":"s","severity":"sev9","custom_details":"plain text"}}"#,
        );
        let details = a.payload.unwrap().custom_details.unwrap();
        assert_eq!(details["details"], "plain text");
        assert_eq!(details["pdrelay_original_severity"], "sev9");
    }

    #[test]
    fn summary_is_cut_and_long_dedup_key_fit() {
        let long = "ø".repeat(3000);
        let key = "x".repeat(400);
        let a = alert(&format!(r#"{{"event_action":"trigger","dedup_key":"{key}","payload":{{"summary":"{long}"}}}}"#));
        assert_eq!(a.payload.unwrap().summary.chars().count(), 1024);
        assert_eq!(a.dedup_key.unwrap().chars().count(), 255);
    }

    #[test]
    fn resolve_without_payload_is_sent_without_one() {
        let a = alert(r#"{"event_action":"resolve","dedup_key":"abc"}"#);
        assert_eq!(a.payload, None);
        let body: serde_json::Value = serde_json::from_slice(&Event::Alert(a).request_body()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"routing_key": "d".repeat(32), "event_action": "resolve", "dedup_key": "abc"})
        );
    }
}
