//! Events API v2 change events: `POST {events_url}/v2/change/enqueue`, as in PagerDuty's
//! events-v2 OpenAPI (`SendChangeEvent`): routing key, payload with summary, source, timestamp
//! and custom details; links; images. A change event has no event action and no dedup key.

use serde::{Deserialize, Serialize};

use super::fields::{
    check_images, check_links, details_object, normalize_timestamp, required_summary, routing_key_or_default,
    EventError, Image, IntakeDefaults, Link, RoutingKey,
};

/// A change event as sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeEvent {
    /// Integration key of the service.
    pub routing_key: RoutingKey,
    /// What changed.
    pub payload: ChangePayload,
    /// Links for the change.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<Link>,
    /// Images for the change (events-v2 OpenAPI `images`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<Image>,
}

/// Payload of a change event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangePayload {
    /// At most 1024 characters, cut on a character boundary.
    pub summary: String,
    /// Where the change happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// ISO 8601 (RFC 3339) date-time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    /// Free-form details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_details: Option<serde_json::Value>,
}

/// A change event as a producer writes it.
#[derive(Debug, Default, Deserialize)]
pub struct ChangeInput {
    #[serde(default)]
    pub routing_key: Option<String>,
    pub payload: ChangePayloadInput,
    #[serde(default)]
    pub links: Vec<Link>,
    #[serde(default)]
    pub images: Vec<Image>,
}

/// A change payload as a producer writes it.
#[derive(Debug, Default, Deserialize)]
pub struct ChangePayloadInput {
    #[serde(default)]
    pub summary: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub timestamp: Option<String>,
    #[serde(default)]
    pub custom_details: Option<serde_json::Value>,
}

impl ChangeEvent {
    /// Applies the intake rules: routing key (or the default), summary required and cut to
    /// 1024 characters, timestamp normalized, custom details made an object, links and images
    /// checked.
    pub fn from_input(input: ChangeInput, defaults: &IntakeDefaults) -> Result<Self, EventError> {
        let routing_key = routing_key_or_default(input.routing_key.as_deref(), "routing_key", defaults)?;
        let summary = required_summary(input.payload.summary, "payload.summary")?;
        let timestamp =
            input.payload.timestamp.as_deref().map(|ts| normalize_timestamp(ts, "payload.timestamp")).transpose()?;
        check_links(&input.links, "links")?;
        check_images(&input.images)?;
        Ok(ChangeEvent {
            routing_key,
            payload: ChangePayload {
                summary,
                source: input.payload.source.filter(|s| !s.is_empty()),
                timestamp,
                custom_details: details_object(input.payload.custom_details),
            },
            links: input.links,
            images: input.images,
        })
    }
}
