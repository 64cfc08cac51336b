//! PagerDuty's REST API, read side: the incidents behind a dedup key (`GET /incidents` with
//! `incident_key`), paged, within the API's rate limits. Separate from the Events API client
//! (`delivery::client`): another host, another key, another purpose. It never logs: the key is in every
//! request, and the caller decides what an error means (see `reconcile`).
//!
//! Rate limits: PagerDuty answers every request with `ratelimit-limit`, `ratelimit-remaining`
//! and `ratelimit-reset` (seconds until the window resets). When `remaining` reaches 0 the client
//! waits `reset` seconds (at most [`MAX_WAIT`]) before its next request; a 429 is retried after
//! `reset` (or an exponential backoff from 1 s when the header is missing), at most
//! [`MAX_429_RETRIES`] times, then given up for this pass.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// Incidents per page asked for (PagerDuty's maximum is 100).
pub const PAGE_LIMIT: u32 = 100;
/// Pages read for one incident key at most (a key reused for years has many resolved incidents).
pub const MAX_PAGES: u32 = 20;
/// Retries of one request answered 429.
pub const MAX_429_RETRIES: u32 = 5;
/// Longest wait the client takes for a rate limit, per wait.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// Largest answer body read, in bytes.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Why the REST API gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestError {
    /// 401 or 403: the key is wrong, revoked, or lacks access.
    #[error(
        "pagerduty.rest_api_key: PagerDuty's REST API refused the key ({status}): check it is a valid REST API key \
         (read-only is enough); reconciliation is paused, delivery goes on"
    )]
    Unauthorized {
        /// 401 or 403.
        status: u16,
    },
    /// Still 429 after the retries.
    #[error("PagerDuty's REST API rate limit: still 429 after {MAX_429_RETRIES} retries; trying again next pass")]
    RateLimited,
    /// Another status.
    #[error("PagerDuty's REST API answered {status}: {text}")]
    Status {
        /// HTTP status.
        status: u16,
        /// The first 200 characters of the body, escaped.
        text: String,
    },
    /// No whole answer.
    #[error("PagerDuty's REST API: {0}")]
    Transport(String),
    /// An answer not shaped as documented.
    #[error("PagerDuty's REST API: unreadable answer: {0}")]
    Decode(String),
}

/// A PagerDuty user or other actor, as a reference.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Reference {
    /// Its id.
    #[serde(default)]
    pub id: Option<String>,
    /// Its name (for a user, the user's name).
    #[serde(default)]
    pub summary: Option<String>,
}

/// One acknowledgement of an incident.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Acknowledgement {
    /// When (RFC 3339).
    #[serde(default)]
    pub at: Option<String>,
    /// Who.
    #[serde(default)]
    pub acknowledger: Option<Reference>,
}

/// The fields of an incident that reconciliation reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Incident {
    /// Incident id.
    pub id: String,
    /// `triggered`, `acknowledged` or `resolved`.
    pub status: String,
    /// Its web page.
    #[serde(default)]
    pub html_url: Option<String>,
    /// Created (RFC 3339); the newest incident of a key is the one that counts.
    #[serde(default)]
    pub created_at: Option<String>,
    /// Last status change (RFC 3339).
    #[serde(default)]
    pub last_status_change_at: Option<String>,
    /// Who made it.
    #[serde(default)]
    pub last_status_change_by: Option<Reference>,
    /// Current acknowledgements.
    #[serde(default)]
    pub acknowledgements: Vec<Acknowledgement>,
}

impl Incident {
    /// Who acknowledged or resolved it, and when: the latest acknowledgement for an acknowledged
    /// incident, the last status change otherwise.
    pub fn by_and_at(&self) -> (Option<String>, Option<String>) {
        if self.status == "acknowledged" {
            if let Some(ack) = self.acknowledgements.iter().max_by(|a, b| a.at.cmp(&b.at)) {
                let by = ack.acknowledger.as_ref().and_then(|r| r.summary.clone());
                return (by, ack.at.clone().or_else(|| self.last_status_change_at.clone()));
            }
        }
        (self.last_status_change_by.as_ref().and_then(|r| r.summary.clone()), self.last_status_change_at.clone())
    }
}

#[derive(Deserialize)]
struct Page {
    incidents: Vec<Incident>,
    #[serde(default)]
    more: bool,
}

/// Requests made and waits taken, for tests and the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestStats {
    /// HTTP requests sent.
    pub requests: u64,
    /// 429 answers seen.
    pub throttled: u64,
}

/// The REST API client.
pub struct RestClient {
    http: reqwest::Client,
    base: String,
    auth: String,
    service_ids: Vec<String>,
    /// No request before this (a rate-limit window reset).
    not_before: Mutex<Option<Instant>>,
    stats: Mutex<RestStats>,
}

impl RestClient {
    /// A client for `base` (such as `https://api.pagerduty.com`) with `key`, reading only
    /// incidents of `service_ids` when not empty. `http` carries the timeouts and proxy.
    pub fn new(http: reqwest::Client, base: &str, key: &str, service_ids: Vec<String>) -> RestClient {
        RestClient {
            http,
            base: base.trim_end_matches('/').to_owned(),
            auth: format!("Token token={key}"),
            service_ids,
            not_before: Mutex::new(None),
            stats: Mutex::new(RestStats::default()),
        }
    }

    /// Requests and 429s so far.
    pub fn stats(&self) -> RestStats {
        *self.stats.lock().expect("stats lock")
    }

    /// The newest incident whose incident key is `dedup_key`, over all pages (at most
    /// [`MAX_PAGES`]); `None` when PagerDuty has none.
    pub async fn newest_incident(&self, dedup_key: &str) -> Result<Option<Incident>, RestError> {
        let mut newest: Option<Incident> = None;
        // The next offset: what was read so far (PagerDuty may answer fewer than asked).
        let mut offset = 0usize;
        for _ in 0..MAX_PAGES {
            let mut query: Vec<(&str, String)> = vec![
                ("incident_key", dedup_key.to_owned()),
                ("date_range", "all".to_owned()),
                ("limit", PAGE_LIMIT.to_string()),
                ("offset", offset.to_string()),
            ];
            for id in &self.service_ids {
                query.push(("service_ids[]", id.clone()));
            }
            let page: Page = self.get("/incidents", &query).await?;
            if page.incidents.is_empty() {
                break;
            }
            offset += page.incidents.len();
            for incident in page.incidents {
                if newest.as_ref().is_none_or(|n| incident.created_at > n.created_at) {
                    newest = Some(incident);
                }
            }
            if !page.more {
                break;
            }
        }
        Ok(newest)
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str, query: &[(&str, String)]) -> Result<T, RestError> {
        let mut backoff = Duration::from_secs(1);
        let mut retries = 0;
        loop {
            let wait =
                self.not_before.lock().expect("rate lock").take().map(|t| t.saturating_duration_since(Instant::now()));
            if let Some(wait) = wait.filter(|w| !w.is_zero()) {
                tokio::time::sleep(wait.min(MAX_WAIT)).await;
            }
            self.stats.lock().expect("stats lock").requests += 1;
            let response = self
                .http
                .get(format!("{}{path}", self.base))
                .query(query)
                .header(reqwest::header::AUTHORIZATION, &self.auth)
                .header(reqwest::header::ACCEPT, "application/vnd.pagerduty+json;version=2")
                .send()
                .await
                .map_err(|e| RestError::Transport(one_line(&e)))?;
            let status = response.status().as_u16();
            let header = |name: &str| {
                response.headers().get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok())
            };
            let reset = header("ratelimit-reset").map(|s| Duration::from_secs(s).min(MAX_WAIT));
            if header("ratelimit-remaining") == Some(0) || status == 429 {
                let wait = reset.unwrap_or(backoff);
                *self.not_before.lock().expect("rate lock") = Some(Instant::now() + wait);
            }
            let body = read_bounded(response).await?;
            match status {
                200..=299 => {
                    return serde_json::from_slice(&body).map_err(|e| RestError::Decode(e.to_string()));
                }
                401 | 403 => return Err(RestError::Unauthorized { status }),
                429 => {
                    self.stats.lock().expect("stats lock").throttled += 1;
                    retries += 1;
                    if retries > MAX_429_RETRIES {
                        return Err(RestError::RateLimited);
                    }
                    backoff = (backoff * 2).min(MAX_WAIT);
                }
                _ => {
                    let text: String = String::from_utf8_lossy(&body).chars().take(200).collect();
                    return Err(RestError::Status { status, text: crate::text::escape_controls(&text) });
                }
            }
        }
    }
}

async fn read_bounded(mut response: reqwest::Response) -> Result<Vec<u8>, RestError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| RestError::Transport(one_line(&e)))? {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(RestError::Decode(format!("answer larger than {MAX_BODY_BYTES} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn one_line(e: &reqwest::Error) -> String {
    // reqwest's errors name the URL; the query holds the dedup key only, never the key.
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledged_incidents_name_the_latest_acknowledger() {
        let incident: Incident = serde_json::from_value(serde_json::json!({
            "id": "P1", "status": "acknowledged", "created_at": "2026-01-01T00:00:00Z",
            "last_status_change_at": "2026-01-01T00:05:00Z",
            "last_status_change_by": {"id": "S1", "summary": "a service"},
            "acknowledgements": [
                {"at": "2026-01-01T00:01:00Z", "acknowledger": {"id": "U1", "summary": "Ann"}},
                {"at": "2026-01-01T00:04:00Z", "acknowledger": {"id": "U2", "summary": "Bob"}}
            ]
        }))
        .unwrap();
        assert_eq!(incident.by_and_at(), (Some("Bob".into()), Some("2026-01-01T00:04:00Z".into())));
        let resolved = Incident { status: "resolved".into(), ..incident };
        assert_eq!(resolved.by_and_at(), (Some("a service".into()), Some("2026-01-01T00:05:00Z".into())));
    }
}
