//! Queue administration: `pdrelay queue status|list|show|retry|purge`, and the retention sweep.
//!
//! The same [`execute`] serves both paths: with the daemon running, the CLI sends one JSON
//! request line over the admin socket (`ingest.admin_socket`, mode 0600; the daemon also checks
//! the caller's uid with SO_PEERCRED: root or its own user only, since a purge is not for every
//! member of the send group) and reads one JSON reply line; with the daemon stopped, the CLI
//! opens the store itself (sled's lock tells which case holds).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as AsyncBufReader};
use tokio::net::UnixListener;
use tracing::{debug, error, info, warn};

use crate::config::{Config, RetentionSection};
use crate::intake::Shutdown;
use crate::queue::clock::now_ms;
use crate::queue::error::StoreError;
use crate::queue::record::{Record, State};
use crate::queue::store::Store;

/// Longest admin request line, in bytes.
const MAX_REQUEST_BYTES: u64 = 64 * 1024;
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
    SilenceAdd(crate::silence::Silence),
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
    Silences(Vec<crate::silence::Silence>),
    /// For `silence expire`: the silence as it is now, and how many held events were released.
    SilenceExpired {
        /// The silence.
        silence: crate::silence::Silence,
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

/// RFC 3339 for ms since the epoch.
pub fn rfc3339(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

fn list_state(record: &Record, now: u64) -> ListState {
    match record.state {
        State::Pending if record.next_attempt_at_ms.is_some_and(|at| at > now) => ListState::Waiting,
        State::Pending => ListState::Pending,
        State::Failed => ListState::Failed,
        State::Delivered => ListState::Delivered,
        State::Superseded => ListState::Superseded,
    }
}

fn summarize(record: &Record, now: u64) -> RecordSummary {
    RecordSummary {
        id: record.id.clone(),
        state: list_state(record, now),
        kind: record.event.kind().as_str().to_owned(),
        routing_key: record.event.routing_key().redacted(),
        dedup_key: record.event.dedup_key().map(str::to_owned),
        action: record.event.action().map(|a| a.as_str().to_owned()),
        summary: record.event.summary().map(|s| s.chars().take(60).collect()),
        accepted_at: rfc3339(record.accepted_at_ms),
        attempts: record.attempts,
        next_attempt_at: record.next_attempt_at_ms.map(rfc3339),
        last_status: record.last_status,
        last_error: record.last_error.clone(),
        route: record.route.clone(),
        hold: record.hold.clone(),
    }
}

fn matches_key(record: &Record, key: &str) -> bool {
    record.event.routing_key().as_str().starts_with(key.trim_end_matches('…'))
}

/// Carries out one request against the store.
pub async fn execute(store: &Store, request: AdminRequest) -> Result<AdminAnswer, AdminError> {
    let now = now_ms();
    match request {
        AdminRequest::Status => {
            let s = store.clone();
            let report = tokio::task::spawn_blocking(move || status(&s, now))
                .await
                .map_err(|e| AdminError::Failed(e.to_string()))??;
            Ok(AdminAnswer::Status(Box::new(report)))
        }
        AdminRequest::List { state, routing_key, limit } => {
            let mut out = Vec::new();
            for record in store.records() {
                let record = record?;
                if state.is_some_and(|s| s != list_state(&record, now)) {
                    continue;
                }
                if routing_key.as_deref().is_some_and(|k| !matches_key(&record, k)) {
                    continue;
                }
                out.push(summarize(&record, now));
                if out.len() >= limit {
                    break;
                }
            }
            Ok(AdminAnswer::List(out))
        }
        AdminRequest::Alerts => Ok(AdminAnswer::Alerts(open_alerts(store)?)),
        AdminRequest::Ledger => Ok(AdminAnswer::Ledger { alerts: store.alerts()?, views: store.pagerduty_views()? }),
        AdminRequest::PutViews { views } => {
            Ok(AdminAnswer::Changed(store.put_pagerduty_views(views.into_iter().map(|v| (v, true)).collect()).await?))
        }
        AdminRequest::ResendResolves => resend_resolves(store).await,
        AdminRequest::Show { id } => match store.get_by_id(&id)? {
            Some(record) => Ok(AdminAnswer::Show(Box::new(record))),
            None => Err(AdminError::Invalid(format!("id: no event {id:?} in the queue"))),
        },
        AdminRequest::Retry { target } => {
            let seqs: Vec<u64> = match &target {
                RetryTarget::Id(id) => match store.get_by_id(id)? {
                    Some(r) if r.state == State::Failed => vec![r.seq],
                    Some(r) => {
                        return Err(AdminError::Invalid(format!(
                            "id: event {id} is {}, only failed events can be retried",
                            r.state.as_str()
                        )))
                    }
                    None => return Err(AdminError::Invalid(format!("id: no event {id:?} in the queue"))),
                },
                RetryTarget::Waiting(key) => {
                    let seqs: Vec<u64> = store
                        .records()
                        .filter_map(Result::ok)
                        .filter(|r| list_state(r, now) == ListState::Waiting)
                        .filter(|r| key.as_deref().is_none_or(|k| matches_key(r, k)))
                        .map(|r| r.seq)
                        .collect();
                    return Ok(AdminAnswer::Changed(store.send_now(seqs).await?));
                }
                RetryTarget::All | RetryTarget::RoutingKey(_) => store
                    .records()
                    .filter_map(Result::ok)
                    .filter(|r| r.state == State::Failed)
                    .filter(|r| match &target {
                        RetryTarget::RoutingKey(k) => matches_key(r, k),
                        _ => true,
                    })
                    .map(|r| r.seq)
                    .collect(),
            };
            Ok(AdminAnswer::Changed(store.retry_failed(seqs).await?))
        }
        AdminRequest::Purge { state, older_than_s } => {
            let cutoff = now.saturating_sub(older_than_s.unwrap_or(0) * 1000);
            let want = match state {
                PurgeState::Failed => State::Failed,
                PurgeState::Delivered => State::Delivered,
                PurgeState::Superseded => State::Superseded,
            };
            let seqs = finished_before(store, want, cutoff);
            Ok(AdminAnswer::Changed(store.remove_finished(seqs).await?))
        }
        AdminRequest::SilenceAdd(silence) => {
            silence.check().map_err(AdminError::Invalid)?;
            store.save_silence(&silence).await?;
            Ok(AdminAnswer::Silences(vec![silence]))
        }
        AdminRequest::Silences => Ok(AdminAnswer::Silences(store.silences()?)),
        AdminRequest::SilenceExpire { id } => match store.expire_silence(&id).await? {
            Some((silence, released)) => Ok(AdminAnswer::SilenceExpired { silence, released }),
            None => Err(AdminError::Invalid(format!("id: no silence {id:?}"))),
        },
    }
}

fn finished_before(store: &Store, state: State, cutoff_ms: u64) -> Vec<u64> {
    store
        .records()
        .filter_map(Result::ok)
        .filter(|r| r.state == state && r.last_attempt_at_ms.unwrap_or(r.accepted_at_ms) <= cutoff_ms)
        .map(|r| r.seq)
        .collect()
}

fn status(store: &Store, now: u64) -> Result<StatusReport, StoreError> {
    let mut total = Counts::default();
    let mut per_key: std::collections::BTreeMap<String, Counts> = Default::default();
    let mut oldest: Option<u64> = None;
    for record in store.records() {
        let record = record?;
        let c = per_key.entry(record.event.routing_key().redacted()).or_default();
        for counts in [&mut total, c] {
            match list_state(&record, now) {
                ListState::Pending => counts.pending += 1,
                ListState::Waiting => counts.waiting += 1,
                ListState::Failed => counts.failed += 1,
                ListState::Delivered => counts.delivered += 1,
                ListState::Superseded => counts.superseded += 1,
            }
        }
        if record.state == State::Pending {
            oldest = Some(oldest.map_or(record.accepted_at_ms, |o| o.min(record.accepted_at_ms)));
        }
    }
    let paused = store
        .pauses()?
        .into_iter()
        .filter(|(_, until)| *until > now)
        .map(|(k, until)| (crate::event::redact_routing_key(&k), rfc3339(until)))
        .collect();
    let (success, error) = store.last_events()?;
    let limits = store.rate_limits();
    let mut throttled: Vec<Throttled> = store
        .pending_by_key()
        .into_iter()
        .filter_map(|(rk, pending)| {
            let limit = limits.of(&rk);
            (limit > 0 && pending > u64::from(limit)).then(|| Throttled {
                routing_key: crate::event::redact_routing_key(&rk),
                pending,
                limit_per_min: limit,
                drains_in_s: drain_seconds(pending, limit),
            })
        })
        .collect();
    throttled.sort_by(|a, b| b.drains_in_s.cmp(&a.drains_in_s).then_with(|| a.routing_key.cmp(&b.routing_key)));
    Ok(StatusReport {
        total,
        routing_keys: per_key.into_iter().collect(),
        oldest_pending_age_s: oldest.map(|o| now.saturating_sub(o) / 1000),
        paused,
        last_success: success.map(|(at, id)| (rfc3339(at), id)),
        last_error: error.map(|(at, text)| (rfc3339(at), text)),
        throttled,
        outage_since: store.outage_since().map(rfc3339),
    })
}

/// Seconds to send `pending` events at `limit_per_min` (not 0), rounded up.
pub fn drain_seconds(pending: u64, limit_per_min: u32) -> u64 {
    (pending * 60).div_ceil(u64::from(limit_per_min.max(1)))
}

/// Applies `[retention]` once: removes delivered and failed records past their keep time, and
/// moves pending events past `max_pending_age` (when set) to failed with the reason "expired".
/// Returns (removed, expired).
pub async fn sweep(store: &Store, retention: &RetentionSection) -> Result<(usize, usize), StoreError> {
    let now = now_ms();
    let s = store.clone();
    let r = retention.clone();
    let (remove, expire) = tokio::task::spawn_blocking(move || {
        let mut remove = finished_before(&s, State::Delivered, now.saturating_sub(r.delivered.as_millis() as u64));
        remove.extend(finished_before(&s, State::Failed, now.saturating_sub(r.failed.as_millis() as u64)));
        let delivered_cutoff = now.saturating_sub(r.delivered.as_millis() as u64);
        remove.extend(finished_before(&s, State::Superseded, delivered_cutoff));
        let expire: Vec<u64> = if r.max_pending_age.is_zero() {
            Vec::new()
        } else {
            let cutoff = now.saturating_sub(r.max_pending_age.as_millis() as u64);
            s.records()
                .filter_map(Result::ok)
                .filter(|x| x.state == State::Pending && x.accepted_at_ms <= cutoff)
                .map(|x| x.seq)
                .collect()
        };
        (remove, expire)
    })
    .await
    .map_err(|e| StoreError::Io(e.to_string()))?;
    let removed = if remove.is_empty() { 0 } else { store.remove_finished(remove).await? };
    store.forget_resolved(now.saturating_sub(retention.delivered.as_millis() as u64)).await?;
    let expired = if expire.is_empty() { 0 } else { store.expire(expire).await? };
    Ok((removed, expired))
}

/// Runs [`sweep`] at start and every `sweep_interval` until shutdown.
pub async fn run_retention(store: Store, retention: RetentionSection, mut shutdown: Shutdown) {
    let mut tick = tokio::time::interval(retention.sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tick.tick() => {}
        }
        match sweep(&store, &retention).await {
            Ok((removed, expired)) => {
                if expired > 0 {
                    error!(expired, max_pending_age = ?retention.max_pending_age, "events expired undelivered; see `pdrelay queue list --state failed`");
                }
                if removed > 0 {
                    info!(removed, "old delivered and failed records removed");
                }
            }
            Err(e) => warn!(error = %e, "retention sweep failed; will try again"),
        }
    }
}

/// Open alerts, both sides: open here, or open in PagerDuty while resolved here.
fn open_alerts(store: &Store) -> Result<Vec<OpenAlert>, AdminError> {
    let views: std::collections::HashMap<(String, String), crate::queue::view::PagerDutyView> =
        store.pagerduty_views()?.into_iter().map(|v| ((v.routing_key.clone(), v.dedup_key.clone()), v)).collect();
    let mut out = Vec::new();
    for a in store.alerts()? {
        let view = views.get(&(a.routing_key.clone(), a.dedup_key.clone()));
        let disagreement = view.and_then(|v| v.disagreement(a.is_open(), a.last_action.as_str() == "trigger", a.at_ms));
        if !a.is_open() && disagreement.is_none() {
            continue;
        }
        out.push(OpenAlert {
            routing_key: crate::event::redact_routing_key(&a.routing_key),
            dedup_key: a.dedup_key,
            last_action: a.last_action.as_str().to_owned(),
            at: rfc3339(a.at_ms),
            summary: a.summary,
            pagerduty: view.map(|v| v.status.clone()),
            pagerduty_by: view.and_then(|v| v.by.clone()),
            pagerduty_at: view.and_then(|v| v.changed_at.clone()),
            pagerduty_checked: view.map(|v| rfc3339(v.checked_ms)),
            disagreement: disagreement.map(str::to_owned),
        });
    }
    Ok(out)
}

/// Queues a resolve again for every alert resolved here and still open in PagerDuty (a resolve
/// PagerDuty dropped, as during a maintenance window). Returns how many.
async fn resend_resolves(store: &Store) -> Result<AdminAnswer, AdminError> {
    let views: std::collections::HashMap<(String, String), crate::queue::view::PagerDutyView> =
        store.pagerduty_views()?.into_iter().map(|v| ((v.routing_key.clone(), v.dedup_key.clone()), v)).collect();
    let mut events = Vec::new();
    for a in store.alerts()? {
        let view = views.get(&(a.routing_key.clone(), a.dedup_key.clone()));
        let disagreement = view.and_then(|v| v.disagreement(a.is_open(), a.last_action.as_str() == "trigger", a.at_ms));
        if disagreement != Some(crate::queue::view::RESOLVED_HERE_OPEN_THERE) {
            continue;
        }
        let body =
            serde_json::json!({"routing_key": a.routing_key, "event_action": "resolve", "dedup_key": a.dedup_key});
        let event =
            crate::event::Event::from_json(body.to_string().as_bytes(), &crate::event::IntakeDefaults::default())
                .map_err(|e| AdminError::Failed(format!("dedup_key {}: {e}", crate::text::escaped(&a.dedup_key))))?;
        events.push(crate::queue::request::NewEvent { id: None, intake: "send", event });
    }
    let n = events.len();
    if n > 0 {
        store.insert(events).await?;
    }
    Ok(AdminAnswer::Changed(n))
}

/// Serves the admin socket until shutdown, then removes it.
pub async fn serve(listener: UnixListener, path: PathBuf, store: Store, mut shutdown: Shutdown) {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let own_uid = unsafe { libc::geteuid() };
    loop {
        let stream = tokio::select! {
            _ = shutdown.wait() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!(error = %e, "admin socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        };
        let store = store.clone();
        tokio::spawn(async move {
            let uid = stream.peer_cred().map(|c| c.uid()).ok();
            debug!(?uid, "admin connection");
            let (read, mut write) = stream.into_split();
            // Read the request first, even from a caller to be refused: closing on unread input
            // would reset the connection and lose the reply.
            let mut line = String::new();
            let mut limited = AsyncBufReader::new(read.take(MAX_REQUEST_BYTES));
            let got_line = tokio::time::timeout(Duration::from_secs(10), limited.read_line(&mut line)).await;
            let failed = |error: String| AdminReply { ok: false, answer: None, error: Some(error) };
            let reply = if uid != Some(0) && uid != Some(own_uid) {
                warn!(?uid, "admin request refused: not root or the daemon's user");
                failed(format!(
                    "permission denied: queue administration is for root and the daemon's user (uid {own_uid})"
                ))
            } else {
                match got_line {
                    Ok(Ok(_)) => match serde_json::from_str::<AdminRequest>(&line) {
                        Ok(request) => match execute(&store, request).await {
                            Ok(answer) => AdminReply { ok: true, answer: Some(answer), error: None },
                            Err(e) => failed(e.to_string()),
                        },
                        Err(e) => failed(format!("request: {e}")),
                    },
                    _ => failed("request: no complete line within 10s".into()),
                }
            };
            let mut bytes = serde_json::to_vec(&reply).expect("admin replies serialize");
            bytes.push(b'\n');
            let _ = write.write_all(&bytes).await;
        });
    }
    let _ = std::fs::remove_file(&path);
}

/// Carries out `request` for the CLI: through the running daemon's admin socket, or on the
/// store directly when no daemon runs.
pub fn call(config: &Config, request: AdminRequest) -> Result<AdminAnswer, AdminError> {
    let socket = &config.file.ingest.admin_socket;
    match std::os::unix::net::UnixStream::connect(socket) {
        Ok(stream) => via_socket(stream, &request),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(AdminError::Denied(format!(
            "permission denied on {}: queue commands are for root and the pdrelay daemon's user",
            socket.display()
        ))),
        Err(_) => direct(
            &config.queue_path(),
            socket,
            request,
            crate::config::RateLimits::from_section(&config.file.delivery),
        ),
    }
}

fn via_socket(stream: std::os::unix::net::UnixStream, request: &AdminRequest) -> Result<AdminAnswer, AdminError> {
    let io = |e: std::io::Error| AdminError::Failed(format!("admin socket: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(120))).map_err(io)?;
    let mut writer = stream.try_clone().map_err(io)?;
    let mut line = serde_json::to_vec(request).expect("admin requests serialize");
    line.push(b'\n');
    // A daemon that refuses the caller answers without reading the request; its reply still
    // counts, so a failed write is not the end.
    let wrote = writer.write_all(&line);
    let mut reply = String::new();
    let read = BufReader::new(stream).read_line(&mut reply);
    if reply.is_empty() {
        wrote.map_err(io)?;
        read.map_err(io)?;
    }
    let reply: AdminReply =
        serde_json::from_str(&reply).map_err(|e| AdminError::Failed(format!("admin socket: unreadable reply: {e}")))?;
    match (reply.ok, reply.answer, reply.error) {
        (true, Some(answer), _) => Ok(answer),
        (_, _, Some(error)) if error.starts_with("permission denied") => Err(AdminError::Denied(error)),
        (_, _, Some(error)) if error.starts_with("id: ") => Err(AdminError::Invalid(error)),
        (_, _, error) => Err(AdminError::Failed(error.unwrap_or_else(|| "admin socket: empty reply".into()))),
    }
}

fn direct(
    queue: &Path,
    socket: &Path,
    request: AdminRequest,
    limits: crate::config::RateLimits,
) -> Result<AdminAnswer, AdminError> {
    crate::queue::disk::act_as_queue_owner(queue).map_err(|e| {
        AdminError::Failed(format!(
            "cannot act as the owner of {} (root runs queue commands as the daemon's user, so the queue stays usable by it): {e}",
            queue.display()
        ))
    })?;
    let store = Store::open(queue).map_err(|e| match e {
        StoreError::Locked { .. } => AdminError::Failed(format!(
            "a running daemon holds the queue at {} but its admin socket {} does not answer",
            queue.display(),
            socket.display()
        )),
        other => AdminError::Failed(other.to_string()),
    })?;
    store.set_rate_limits(limits);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| AdminError::Failed(e.to_string()))?;
    let result = runtime.block_on(execute(&store, request));
    store.close();
    result
}

/// Renders an answer as the human tables the CLI prints. Producer text (dedup keys, summaries)
/// and PagerDuty's error texts are shown escaped ([`crate::text::Escaped`]).
pub fn render(answer: &AdminAnswer) -> String {
    use crate::text::{escaped, Escaped};
    use std::fmt::Write as _;
    let mut out = String::new();
    match answer {
        AdminAnswer::Silences(silences) => {
            let now = now_ms();
            for s in silences {
                let state = if s.active(now) {
                    "active"
                } else if s.starts_at_ms > now {
                    "pending"
                } else {
                    "expired"
                };
                let matchers: Vec<String> = s.matchers.iter().map(|(k, v)| format!("{k}={}", Escaped(v))).collect();
                let _ = writeln!(
                    out,
                    "{}  {state:<7}  {} .. {}  {}  by {}: {}",
                    s.id,
                    rfc3339(s.starts_at_ms),
                    rfc3339(s.ends_at_ms),
                    matchers.join(","),
                    Escaped(&s.created_by),
                    Escaped(&s.comment)
                );
            }
        }
        AdminAnswer::SilenceExpired { silence, released } => {
            let _ = writeln!(out, "silence {} expired; {released} held events released", silence.id);
        }
        AdminAnswer::Status(s) => {
            let t = &s.total;
            let _ = writeln!(
                out,
                "pending    {}\nwaiting    {}\nfailed     {}\ndelivered  {}",
                t.pending, t.waiting, t.failed, t.delivered
            );
            let age = s.oldest_pending_age_s.map(|a| humantime::format_duration(Duration::from_secs(a)).to_string());
            if t.superseded > 0 {
                let _ = writeln!(out, "superseded {}", t.superseded);
            }
            let _ = writeln!(out, "oldest pending  {}", age.as_deref().unwrap_or("-"));
            if let Some(since) = &s.outage_since {
                let _ = writeln!(out, "delivery        PagerDuty unreachable since {since}; probing, events wait");
            }
            let _ = writeln!(
                out,
                "last success    {}",
                s.last_success.as_ref().map(|(at, id)| format!("{at} ({id})")).as_deref().unwrap_or("-")
            );
            let _ = writeln!(
                out,
                "last error      {}",
                s.last_error.as_ref().map(|(at, e)| format!("{at} {}", Escaped(e))).as_deref().unwrap_or("-")
            );
            if !s.routing_keys.is_empty() {
                let _ = writeln!(
                    out,
                    "\n{:<10} {:>9} {:>9} {:>9} {:>9}",
                    "ROUTING", "PENDING", "WAITING", "FAILED", "DELIVERED"
                );
                for (key, c) in &s.routing_keys {
                    let _ = writeln!(
                        out,
                        "{:<10} {:>9} {:>9} {:>9} {:>9}",
                        key, c.pending, c.waiting, c.failed, c.delivered
                    );
                }
            }
            if !s.paused.is_empty() {
                let _ = writeln!(out, "\nPAUSED     UNTIL");
                for (key, until) in &s.paused {
                    let _ = writeln!(out, "{key:<10} {until}");
                }
            }
            if !s.throttled.is_empty() {
                let _ = writeln!(out, "\n{:<10} {:>9} {:>9}  DRAINS IN", "THROTTLED", "PENDING", "LIMIT/MIN");
                for t in &s.throttled {
                    let eta = humantime::format_duration(Duration::from_secs(t.drains_in_s));
                    let _ = writeln!(out, "{:<10} {:>9} {:>9}  {eta}", t.routing_key, t.pending, t.limit_per_min);
                }
            }
        }
        AdminAnswer::List(rows) => {
            let _ = writeln!(
                out,
                "{:<36} {:<9} {:<6} {:<8} {:<11} {:>3} {:<24} SUMMARY",
                "ID", "STATE", "API", "ROUTING", "ACTION", "TRY", "DEDUP KEY"
            );
            for r in rows {
                let state =
                    serde_json::to_value(r.state).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
                let dedup: String = r.dedup_key.as_deref().unwrap_or("-").chars().take(24).collect();
                let dedup = escaped(&dedup);
                let _ = writeln!(
                    out,
                    "{:<36} {:<9} {:<6} {:<8} {:<11} {:>3} {:<24} {}",
                    r.id,
                    state,
                    r.kind,
                    r.routing_key,
                    r.action.as_deref().unwrap_or("change"),
                    r.attempts,
                    dedup,
                    Escaped(r.summary.as_deref().unwrap_or(""))
                );
            }
        }
        AdminAnswer::Show(record) => {
            let _ = writeln!(out, "id           {}", record.id);
            // The same word `queue list` and `queue status` use: a pending event whose retry
            // time is ahead is `waiting`.
            let state = serde_json::to_value(list_state(record, now_ms()))
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let _ = writeln!(out, "state        {state}");
            let _ = writeln!(out, "api          {}", record.event.kind().as_str());
            let _ = writeln!(out, "routing key  {}", record.event.routing_key().redacted());
            let _ = writeln!(out, "dedup key    {}", Escaped(record.event.dedup_key().unwrap_or("-")));
            let _ = writeln!(out, "accepted     {} (via {})", rfc3339(record.accepted_at_ms), record.intake);
            let _ = writeln!(out, "attempts     {}", record.attempts);
            if let Some(at) = record.last_attempt_at_ms {
                let _ = writeln!(out, "last attempt {}", rfc3339(at));
            }
            if let Some(at) = record.next_attempt_at_ms {
                let _ = writeln!(out, "next attempt {}", rfc3339(at));
            }
            if let Some(status) = record.last_status {
                let _ = writeln!(out, "last status  {status}");
            }
            if let Some(e) = &record.last_error {
                let _ = writeln!(out, "last error   {}", Escaped(e));
            }
            for e in &record.errors {
                let _ = writeln!(out, "error        {}", Escaped(e));
            }
            let mut body: serde_json::Value = serde_json::from_slice(&record.event.request_body()).unwrap_or_default();
            // Shortened here as in the header (`--json` has the whole record).
            for field in ["routing_key", "service_key"] {
                if let Some(key) = body.get_mut(field) {
                    if let Some(text) = key.as_str() {
                        *key = serde_json::Value::String(crate::event::redact_routing_key(text));
                    }
                }
            }
            let _ = writeln!(
                out,
                "event        {}",
                crate::text::escape_controls(&serde_json::to_string_pretty(&body).unwrap_or_default())
                    .replace('\n', "\n             ")
            );
        }
        AdminAnswer::Changed(n) => {
            let _ = writeln!(out, "{n} event(s) changed");
        }
        AdminAnswer::Alerts(alerts) => {
            let state = |a: &OpenAlert| match a.last_action.as_str() {
                "trigger" => "triggered",
                "acknowledge" => "acknowledged",
                _ => "resolved",
            };
            let theirs = |a: &OpenAlert| match (&a.pagerduty, &a.pagerduty_by) {
                (None, _) => "-".to_owned(),
                (Some(s), Some(by)) if s != "triggered" => format!("{s} by {}", escaped(by)),
                (Some(s), _) => s.clone(),
            };
            // Each column as wide as its widest cell (dedup keys vary: at most 255 characters).
            let width = |header: &str, cell: &dyn Fn(&OpenAlert) -> usize| {
                alerts.iter().map(cell).chain([header.chars().count()]).max().unwrap_or(0)
            };
            let w_key = width("ROUTING", &|a| a.routing_key.chars().count());
            let w_state = width("STATE", &|a| state(a).len());
            let w_at = width("SINCE", &|a| a.at.chars().count());
            let w_dedup = width("DEDUP KEY", &|a| escaped(&a.dedup_key).chars().count());
            let w_theirs = width("IN PAGERDUTY", &|a| theirs(a).chars().count());
            let _ = writeln!(
                out,
                "{:<w_key$} {:<w_state$} {:<w_at$} {:<w_dedup$} {:<w_theirs$} SUMMARY",
                "ROUTING", "STATE", "SINCE", "DEDUP KEY", "IN PAGERDUTY"
            );
            for a in alerts {
                let _ = writeln!(
                    out,
                    "{:<w_key$} {:<w_state$} {:<w_at$} {:<w_dedup$} {:<w_theirs$} {}",
                    a.routing_key,
                    state(a),
                    a.at,
                    escaped(&a.dedup_key),
                    theirs(a),
                    Escaped(a.summary.as_deref().unwrap_or(""))
                );
                if let Some(d) = &a.disagreement {
                    let hint = if d == crate::queue::view::RESOLVED_HERE_OPEN_THERE {
                        ": `pdrelay alerts --resend-resolves` sends the resolve again"
                    } else {
                        ""
                    };
                    let _ = writeln!(out, "         ! {d}{hint}");
                }
            }
        }
        AdminAnswer::Ledger { alerts, views } => {
            let _ = writeln!(out, "{} tracked dedup key(s), {} PagerDuty view(s)", alerts.len(), views.len());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, IntakeDefaults};
    use crate::queue::request::NewEvent;

    fn trigger(rk: &str, n: usize) -> NewEvent {
        let text = format!(
            r#"{{"routing_key":"{rk}","event_action":"trigger","dedup_key":"d{n}","payload":{{"summary":"s","source":"h","severity":"info"}}}}"#
        );
        NewEvent {
            id: None,
            intake: "socket",
            event: Event::from_json(text.as_bytes(), &IntakeDefaults::default()).unwrap(),
        }
    }

    #[tokio::test]
    async fn status_shows_throttled_keys_and_how_long_their_backlog_takes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("q")).unwrap();
        let (storm, calm, fast) = ("A".repeat(32), "B".repeat(32), "C".repeat(32));
        let mut events: Vec<NewEvent> = (0..30).map(|n| trigger(&storm, n)).collect();
        events.extend((0..5).map(|n| trigger(&calm, n)));
        events.extend((0..50).map(|n| trigger(&fast, n)));
        store.insert(events).await.unwrap();
        let mut limits = crate::config::RateLimits { default_per_min: 10, ..Default::default() };
        limits.per_key.insert(fast.clone(), 1000);
        store.set_rate_limits(limits);
        let AdminAnswer::Status(report) = execute(&store, AdminRequest::Status).await.unwrap() else {
            panic!("a status answer")
        };
        assert_eq!(
            report.throttled,
            vec![Throttled { routing_key: "AAAAAA…".into(), pending: 30, limit_per_min: 10, drains_in_s: 180 }]
        );
        let text = render(&AdminAnswer::Status(report));
        assert!(text.contains("THROTTLED") && text.contains("AAAAAA…") && text.contains("3m"), "{text}");
        assert_eq!(drain_seconds(121, 120), 61);
        store.close();
    }
}
