//! The on-disk record of one event, versioned from the start: the stored JSON carries `"v":1`,
//! and a later format adds a variant rather than changing this one.

use serde::{Deserialize, Serialize};

use crate::event::Event;

/// The key of the record with sequence number `seq` in the queue's tree: `e` and the number
/// (8 bytes, big-endian), so that records sort in acceptance order.
pub fn record_key(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'e';
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Where an event is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Waiting to be sent, or waiting for its retry time (`next_attempt_at_ms` set).
    Pending,
    /// PagerDuty accepted it (2xx).
    Delivered,
    /// PagerDuty refused it (400 or another 4xx that is not retried); `errors` says why.
    Failed,
    /// Not sent: a later resolve of the same routing and dedup key made it moot while both were
    /// undelivered (`delivery.drop_stale_pairs`); `last_error` names the resolve.
    Superseded,
}

impl State {
    /// The name used in listings: pending, delivered, failed.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Delivered => "delivered",
            State::Failed => "failed",
            State::Superseded => "superseded",
        }
    }
}

/// One accepted event and what happened to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Public id (a UUID), given to the producer.
    pub id: String,
    /// Position in acceptance order; events of one routing and dedup key go out by it.
    pub seq: u64,
    /// When it was durably accepted, in milliseconds since the Unix epoch.
    pub accepted_at_ms: u64,
    /// How it came in: `socket`, `spool`, `send`.
    pub intake: String,
    /// The event, exactly as it will be sent.
    pub event: Event,
    /// Pending, delivered or failed.
    pub state: State,
    /// Attempts made so far.
    pub attempts: u32,
    /// Set while waiting for a retry: the earliest next attempt, in ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at_ms: Option<u64>,
    /// When the last attempt ended, in ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_at_ms: Option<u64>,
    /// HTTP status of the last answer, if there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    /// Why the last attempt did not deliver (transport error, status and message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// PagerDuty's `errors[]` from a refusal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// The `[[routes]]` entry that matched at acceptance, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Events API base URL for this event when not `pagerduty.events_url` (set by a route).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_url: Option<String>,
    /// Why the event is held until `next_attempt_at_ms` (flap damping, a silence); cleared by
    /// the first attempt. A held event is never sent early as an outage probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<String>,
}

/// The stored form: a version tag around the record.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "v")]
pub enum StoredRecord {
    /// Format 1.
    #[serde(rename = "1")]
    V1(Record),
}

impl Record {
    /// A newly accepted event: pending, never attempted.
    pub fn pending(id: String, seq: u64, accepted_at_ms: u64, intake: &str, event: Event) -> Record {
        Record {
            id,
            seq,
            accepted_at_ms,
            intake: intake.to_owned(),
            event,
            state: State::Pending,
            attempts: 0,
            next_attempt_at_ms: None,
            last_attempt_at_ms: None,
            last_status: None,
            last_error: None,
            errors: Vec::new(),
            route: None,
            events_url: None,
            hold: None,
        }
    }

    /// Encodes for the database.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(&StoredRecordRef::V1(self)).expect("records serialize to JSON without fail")
    }

    /// Decodes a stored record of any known version.
    pub fn decode(bytes: &[u8]) -> Result<Record, serde_json::Error> {
        match serde_json::from_slice::<StoredRecord>(bytes)? {
            StoredRecord::V1(record) => Ok(record),
        }
    }
}

#[derive(Serialize)]
#[serde(tag = "v")]
enum StoredRecordRef<'a> {
    #[serde(rename = "1")]
    V1(&'a Record),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::IntakeDefaults;

    #[test]
    fn record_round_trips_with_its_version() {
        let event = Event::from_json(
            format!(r#"{{"routing_key":"{}","event_action":"trigger","dedup_key":"d","payload":{{"summary":"s","source":"h","severity":"info"}}}}"#, "r".repeat(32)).as_bytes(),
            &IntakeDefaults::default(),
        )
        .unwrap();
        let record = Record {
            id: "id".into(),
            seq: 7,
            accepted_at_ms: 1,
            intake: "socket".into(),
            event,
            state: State::Pending,
            attempts: 2,
            next_attempt_at_ms: Some(5),
            last_attempt_at_ms: None,
            last_status: Some(503),
            last_error: Some("503".into()),
            errors: vec![],
            route: Some("eu".into()),
            events_url: Some("https://events.eu.pagerduty.com".into()),
            hold: None,
        };
        let bytes = record.encode();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with(r#"{"v":"1","#), "{text}");
        assert_eq!(Record::decode(&bytes).unwrap(), record);
        assert!(Record::decode(br#"{"v":"9","id":"x"}"#).is_err());
    }
}
