//! The admin protocol: the requests `pdrelay queue`, `alerts` and `silence` send, the answers,
//! the reply line and the errors, as JSON on the admin socket (one line each way), and a
//! small helper both sides share ([`list_state`]). The bottom of `admin`: the
//! server, retention and rendering import from here, never the other way.

use serde::{Deserialize, Serialize};

use crate::queue::error::StoreError;
use crate::queue::record::{Record, State};

/// Most records a `list` returns unless asked for more.
pub const DEFAULT_LIST_LIMIT: usize = 1000;

/// A state as listings show it: `waiting` is a pending event whose retry time is ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ListState {
    /// Waiting to be sent now.
    Pending,
    /// Waiting for its retry time.
    Waiting,
    /// Refused by PagerDuty, or expired.
    Failed,
    /// Delivered.
    Delivered,
    /// Not sent: made moot by a later resolve (`delivery.drop_stale_pairs`).
    Superseded,
}

/// States a purge may remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum PurgeState {
    /// Failed records.
    Failed,
    /// Delivered records.
    Delivered,
    /// Superseded records.
    Superseded,
}

/// Which failed events `retry` puts back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryTarget {
    /// One event, by id.
    Id(String),
    /// Every failed event.
    All,
    /// Failed events of a routing key (the full key or its first characters).
    RoutingKey(String),
    /// Pending events waiting for a retry time (of one routing key, when given, full or its
    /// first characters): sent now, and their keys' 429 pauses lifted.
    Waiting(Option<String>),
}

/// One admin request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum AdminRequest {
    /// Counts, ages, pauses, last success and error.
    Status,
    /// Records, filtered.
    List {
        /// Only this state.
        state: Option<ListState>,
        /// Only this routing key (full, or its first characters).
        routing_key: Option<String>,
        /// At most this many, oldest first.
        limit: usize,
    },
    /// One record in full.
    Show {
        /// Event id.
        id: String,
    },
    /// Failed back to pending.
    Retry {
        /// Which.
        target: RetryTarget,
    },
    /// Open alerts (dedup-key tracking), with PagerDuty's side when reconciliation is on.
    Alerts,
    /// Every tracked dedup key and PagerDuty's views, in full (for `alerts --refresh`, which
    /// reads the REST API in the CLI and stores what it read with `put_views`).
    Ledger,
    /// PagerDuty's views read by `alerts --refresh`, stored.
    PutViews {
        /// The views.
        views: Vec<crate::queue::view::PagerDutyView>,
    },
    /// A resolve queued again for every alert resolved here and still open in PagerDuty.
    ResendResolves,
    /// Remove finished records.
    Purge {
        /// Failed or delivered.
        state: PurgeState,
        /// Only those finished at least this many seconds ago.
        older_than_s: Option<u64>,
    },
    /// Store a silence (`pdrelay silence add`).
    SilenceAdd(crate::rules::silence::Silence),
    /// Every stored silence (`pdrelay silence list`).
    Silences,
    /// End a silence now and send what it held (`pdrelay silence expire`).
    SilenceExpire {
        /// The silence's id.
        id: String,
    },
}

/// Counts for one routing key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Pending, to be sent now.
    pub pending: u64,
    /// Pending, waiting for a retry time.
    pub waiting: u64,
    /// Failed.
    pub failed: u64,
    /// Delivered and still kept.
    pub delivered: u64,
    /// Superseded by a later resolve and kept (not sent); left out of JSON when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub superseded: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A routing key whose pending backlog is more than its rate limit lets out in a minute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Throttled {
    /// Routing key, redacted.
    pub routing_key: String,
    /// Pending events of the key (including waiting ones).
    pub pending: u64,
    /// Its limit, events a minute.
    pub limit_per_min: u32,
    /// How long the backlog takes to drain at that limit, in seconds (rounded up).
    pub drains_in_s: u64,
}

/// `queue status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Totals.
    pub total: Counts,
    /// Per routing key (redacted: first 6 characters).
    pub routing_keys: Vec<(String, Counts)>,
    /// Age of the oldest pending event, in seconds.
    pub oldest_pending_age_s: Option<u64>,
    /// Paused routing keys (redacted) and until when (RFC 3339).
    pub paused: Vec<(String, String)>,
    /// Last delivery: when (RFC 3339) and which event id.
    pub last_success: Option<(String, String)>,
    /// Last error: when (RFC 3339) and what.
    pub last_error: Option<(String, String)>,
    /// Routing keys whose backlog is over a minute at their rate limit, longest drain first;
    /// left out of JSON when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub throttled: Vec<Throttled>,
    /// Since when (RFC 3339) the running daemon holds PagerDuty for unreachable and probes;
    /// left out of JSON when it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outage_since: Option<String>,
}

/// One line of `queue list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordSummary {
    /// Event id.
    pub id: String,
    /// pending, waiting, failed, delivered.
    pub state: ListState,
    /// v2, change, v1.
    pub kind: String,
    /// Routing key, redacted.
    pub routing_key: String,
    /// Dedup key.
    pub dedup_key: Option<String>,
    /// trigger, acknowledge, resolve; none for change events.
    pub action: Option<String>,
    /// Summary, cut to 60 characters.
    pub summary: Option<String>,
    /// Accepted at (RFC 3339).
    pub accepted_at: String,
    /// Attempts so far.
    pub attempts: u32,
    /// Next attempt (RFC 3339), while waiting.
    pub next_attempt_at: Option<String>,
    /// Last HTTP status.
    pub last_status: Option<u16>,
    /// Last error.
    pub last_error: Option<String>,
    /// The `[[routes]]` entry that took it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Why it is held until `next_attempt_at` (flap damping, a silence), if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<String>,
}

/// What an admin request answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "answer", content = "result", rename_all = "snake_case")]
pub enum AdminAnswer {
    /// For `status`.
    Status(Box<StatusReport>),
    /// For `list`.
    List(Vec<RecordSummary>),
    /// For `show`.
    Show(Box<Record>),
    /// For `retry` and `purge`: records changed.
    Changed(usize),
    /// For `alerts`: the open alerts.
    Alerts(Vec<OpenAlert>),
    /// For `ledger`: every tracked key and PagerDuty's views.
    Ledger {
        /// Dedup-key tracking (full routing keys).
        alerts: Vec<crate::queue::alerts::AlertState>,
        /// PagerDuty's side.
        views: Vec<crate::queue::view::PagerDutyView>,
    },
    /// For `silence add` (the one added) and `silence list`.
    Silences(Vec<crate::rules::silence::Silence>),
    /// For `silence expire`: the silence as it is now, and how many held events were released.
    SilenceExpired {
        /// The silence.
        silence: crate::rules::silence::Silence,
        /// Events released.
        released: usize,
    },
}

/// One open alert, as `pdrelay alerts` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenAlert {
    /// Routing key, redacted.
    pub routing_key: String,
    /// Dedup key.
    pub dedup_key: String,
    /// trigger or acknowledge.
    pub last_action: String,
    /// When that was delivered (RFC 3339).
    pub at: String,
    /// Last summary.
    pub summary: Option<String>,
    /// PagerDuty's side, when reconciliation has read it: triggered, acknowledged, resolved or
    /// none (no incident with this key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pagerduty: Option<String>,
    /// Who acknowledged or resolved it in PagerDuty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pagerduty_by: Option<String>,
    /// When (RFC 3339, as PagerDuty wrote it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pagerduty_at: Option<String>,
    /// When pdrelay last read PagerDuty's side (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pagerduty_checked: Option<String>,
    /// How the two sides disagree (see `reconcile::disagreement`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disagreement: Option<String>,
}

/// The reply line on the admin socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminReply {
    /// Whether it worked.
    pub ok: bool,
    /// The answer, when ok.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<AdminAnswer>,
    /// One line, when not ok.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Why an admin command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The request names something that does not exist, or is malformed (exit 2).
    #[error("{0}")]
    Invalid(String),
    /// Not allowed: the caller is neither root nor the daemon's user (exit 1).
    #[error("{0}")]
    Denied(String),
    /// The store or the daemon could not do it (exit 1).
    #[error("{0}")]
    Failed(String),
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        AdminError::Failed(e.to_string())
    }
}

/// The state `record` shows in listings at `now` (ms since the epoch): a pending event whose
/// retry time is ahead is [`ListState::Waiting`].
pub fn list_state(record: &Record, now: u64) -> ListState {
    match record.state {
        State::Pending if record.next_attempt_at_ms.is_some_and(|at| at > now) => ListState::Waiting,
        State::Pending => ListState::Pending,
        State::Failed => ListState::Failed,
        State::Delivered => ListState::Delivered,
        State::Superseded => ListState::Superseded,
    }
}
