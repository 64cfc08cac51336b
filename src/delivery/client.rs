//! HTTP transport to the Events API: one keep-alive `reqwest` client (rustls) with explicit
//! connect and request timeouts, shared by all deliveries. It never logs: a routing key is in
//! every body, and the caller decides what an answer means (see `delivery::retry`).

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::config::sections::Network;
use crate::event::EventKind;

/// Longest answer body kept, in bytes; the rest is cut.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

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

/// What one POST produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    /// A whole HTTP answer.
    Response {
        /// Status code.
        status: u16,
        /// Parsed `Retry-After` (seconds or HTTP date), if present.
        retry_after: Option<Duration>,
        /// The body as JSON, when it is PagerDuty's shape; else default.
        body: ApiResponse,
        /// The first bytes of the body as text, for the record.
        text: String,
    },
    /// No whole answer: connect failure, timeout, reset, body cut off.
    Transport {
        /// What went wrong, in one line.
        message: String,
        /// Whether the request timed out.
        timeout: bool,
    },
}

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// reqwest refused a setting (a bad proxy URL, an unreadable certificate).
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    /// A file named in the config could not be read.
    #[error("{0}")]
    Setup(String),
}

/// The shared Events API client.
#[derive(Clone)]
pub struct EventsClient {
    http: reqwest::Client,
    base: String,
}

impl EventsClient {
    /// A client for `events_url` (no trailing slash) with the given timeouts.
    pub fn new(events_url: &str, connect_timeout: Duration, request_timeout: Duration) -> reqwest::Result<Self> {
        EventsClient::with_network(events_url, connect_timeout, request_timeout, &Network::default()).map_err(|e| {
            match e {
                ClientError::Http(e) => e,
                ClientError::Setup(_) => unreachable!("the default network settings need no files"),
            }
        })
    }

    /// A client with network settings: an explicit proxy (else the `HTTPS_PROXY`, `HTTP_PROXY`,
    /// `ALL_PROXY` and `NO_PROXY` environment variables apply, as reqwest reads them), an extra CA
    /// bundle (PEM, trusted besides the built-in roots), and a local address to connect from.
    pub fn with_network(
        events_url: &str,
        connect_timeout: Duration,
        request_timeout: Duration,
        network: &Network,
    ) -> Result<Self, ClientError> {
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("pdrelay/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(connect_timeout)
            .timeout(request_timeout)
            .pool_idle_timeout(Duration::from_secs(50));
        if let Some(proxy) = &network.proxy {
            builder = builder.proxy(reqwest::Proxy::all(proxy.as_str())?);
        }
        if let Some(path) = &network.ca_bundle {
            let pem = std::fs::read(path)
                .map_err(|e| ClientError::Setup(format!("pagerduty.ca_bundle {}: {e}", path.display())))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Some(addr) = network.local_address {
            builder = builder.local_address(addr);
        }
        Ok(EventsClient { http: builder.build()?, base: events_url.trim_end_matches('/').to_owned() })
    }

    /// POSTs `body` (JSON) to the endpoint of `kind` and reads the whole answer.
    pub async fn send(&self, kind: EventKind, body: Vec<u8>) -> Attempt {
        self.send_to(None, kind, body).await
    }

    /// As [`EventsClient::send`], to the base URL `events_url` (no trailing slash) instead of
    /// the client's own when one is given (a route's `events_url`); same proxy and timeouts.
    pub async fn send_to(&self, events_url: Option<&str>, kind: EventKind, body: Vec<u8>) -> Attempt {
        let url = format!("{}{}", events_url.unwrap_or(&self.base), kind.endpoint_path());
        let response =
            match self.http.post(url).header(reqwest::header::CONTENT_TYPE, "application/json").body(body).send().await
            {
                Ok(r) => r,
                Err(e) => return transport(&e),
            };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let bytes = match response.bytes().await {
            Ok(b) => b,
            Err(e) => return transport(&e),
        };
        let body = serde_json::from_slice::<ApiResponse>(&bytes).unwrap_or_default();
        let cut = &bytes[..bytes.len().min(MAX_RESPONSE_BYTES)];
        Attempt::Response { status, retry_after, body, text: String::from_utf8_lossy(cut).into_owned() }
    }
}

impl EventsClient {
    /// GETs `url` (a heartbeat, with this client's proxy and timeouts) and returns the status,
    /// or the transport error in one line. The body is not read past the first 64 KiB.
    pub async fn ping(&self, url: &str) -> Result<u16, String> {
        match self.http.get(url).send().await {
            Ok(response) => Ok(response.status().as_u16()),
            Err(e) => match transport(&e) {
                Attempt::Transport { message, .. } => Err(message),
                Attempt::Response { status, .. } => Ok(status),
            },
        }
    }
}

fn transport(e: &reqwest::Error) -> Attempt {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    Attempt::Transport { message, timeout: e.is_timeout() }
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP date (RFC 9110 section 10.2.3).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_and_dates() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        let d = parse_retry_after(&later).unwrap();
        assert!(d > Duration::from_secs(100) && d <= Duration::from_secs(120), "{d:?}");
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(parse_retry_after("-5"), None);
    }
}
