//! PagerDuty's side: the wire types of the three Events APIs (what is sent), their mapping from
//! producers' input, and the HTTP client that sends them.
//!
//! Owns: request bodies (`v2`, `change`, `v1`), response bodies and the transport
//! (`client`), and the REST API read client (`rest`, for reconciliation). Does not own: retry decisions (see `delivery::retry`) or storage.

pub mod change;
pub mod client;
pub mod rest;
pub mod v1;
pub mod v2;

use serde::{Deserialize, Serialize};

use crate::event::EventError;

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

/// The body PagerDuty answers with (v2: `status`, `message`, `dedup_key`; v1: `incident_key`;
/// errors: `errors[]`). Every field is optional: a proxy or a cut-off answer may have none.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ApiResponse {
    /// `success`, `invalid event`, ...
    #[serde(default)]
    pub status: Option<String>,
    /// Human text.
    #[serde(default)]
    pub message: Option<String>,
    /// v2: the dedup key PagerDuty used.
    #[serde(default)]
    pub dedup_key: Option<String>,
    /// v1: the incident key PagerDuty used.
    #[serde(default)]
    pub incident_key: Option<String>,
    /// What PagerDuty found invalid.
    #[serde(default)]
    pub errors: Vec<String>,
}
