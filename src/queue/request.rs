//! What is asked of the store and what it answers: the events handed in, the outcomes recorded,
//! the pending entries handed out, and the requests queued for the committer thread.

use tokio::sync::oneshot;

use super::error::StoreError;
use super::view::PagerDutyView;
use crate::event::{Event, RoutingKey};

/// An event handed to `Store::insert`.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// A producer-chosen id (a UUID), so that a retried hand-over stores the event once; `None`
    /// gets a fresh one.
    pub id: Option<String>,
    /// How it came in: `socket`, `spool`, `send`.
    pub intake: &'static str,
    /// The validated event.
    pub event: Event,
}

/// What `Store::insert` gives back for each event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// Public id.
    pub id: String,
    /// Acceptance order.
    pub seq: u64,
    /// The dedup key that will be sent (`None` for change events).
    pub dedup_key: Option<String>,
}

/// The result of one delivery attempt, to record.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// PagerDuty accepted the event.
    Delivered {
        /// HTTP status.
        status: u16,
    },
    /// PagerDuty refused it for good.
    Failed {
        /// HTTP status, if any.
        status: Option<u16>,
        /// One-line reason.
        reason: String,
        /// PagerDuty's `errors[]`.
        errors: Vec<String>,
    },
    /// Try again at a time.
    Retry {
        /// HTTP status, if there was an answer.
        status: Option<u16>,
        /// One-line reason.
        reason: String,
        /// Earliest next attempt, ms since the epoch.
        next_attempt_at_ms: u64,
        /// Pause the event's whole routing key until then (429, v1 403).
        pause_routing_key: bool,
    },
    /// Not sent: made moot by a later resolve (`delivery.drop_stale_pairs`). Not an attempt.
    Superseded {
        /// Id of the resolve that supersedes it.
        by: String,
    },
}

/// A pending event as the dispatcher needs it: no body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEntry {
    /// Acceptance order.
    pub seq: u64,
    /// Routing key.
    pub routing_key: String,
    /// Dedup key; `None` for change events, which need no order among themselves.
    pub dedup_key: Option<String>,
}

impl PendingEntry {
    pub(super) fn of(seq: u64, event: &Event) -> PendingEntry {
        PendingEntry {
            seq,
            routing_key: event.routing_key().as_str().to_owned(),
            dedup_key: event.dedup_key().map(str::to_owned),
        }
    }
}

/// Routing key of a pending entry, parsed.
impl PendingEntry {
    /// The routing key as a typed value.
    pub fn routing_key(&self) -> Option<RoutingKey> {
        RoutingKey::parse(&self.routing_key, "routing_key").ok()
    }
}

pub(super) enum Op {
    Insert(Vec<NewEvent>),
    Outcome {
        seq: u64,
        outcome: Outcome,
    },
    /// Failed events back to pending.
    Retry(Vec<u64>),
    /// Waiting events (pending with a retry time ahead) made sendable now, and their routing
    /// keys' pauses lifted.
    SendNow(Vec<u64>),
    /// Pending events that reached the maximum age: to failed, reason "expired".
    Expire(Vec<u64>),
    /// Delivered or failed records removed for good (pending ones are never removed).
    Remove(Vec<u64>),
    /// Dedup-key tracking of resolved alerts older than this (ms since the epoch) removed.
    ForgetResolved(u64),
    /// PagerDuty's views of dedup keys written (`Some`) or removed (`None`).
    PutViews(Vec<(PagerDutyView, bool)>),
    /// Nothing: answers once the committer gets to it (a liveness probe for the watchdog).
    Ping,
    /// Keys set (`Some`) or removed (`None`) as they are: stored silences.
    Put(Vec<(Vec<u8>, Option<Vec<u8>>)>),
}

/// A submitted insert; [`InsertTicket::wait`] completes once it is durable (or failed).
pub struct InsertTicket(pub(super) oneshot::Receiver<Result<Reply, StoreError>>);

impl InsertTicket {
    /// Waits for the group commit holding these events.
    pub async fn wait(self) -> Result<Vec<Accepted>, StoreError> {
        match self.0.await.map_err(|_| StoreError::Closed)?? {
            Reply::Inserted(accepted) => Ok(accepted),
            _ => Err(StoreError::Corrupt("insert answered as an outcome".into())),
        }
    }
}

/// What the committer answers.
pub enum Reply {
    /// Insert: what was accepted.
    Inserted(Vec<Accepted>),
    /// Outcome recorded.
    Done,
    /// Retry, expire, remove: how many records changed.
    Changed(usize),
}

pub(super) struct Request {
    pub(super) op: Op,
    pub(super) reply: oneshot::Sender<Result<Reply, StoreError>>,
}
