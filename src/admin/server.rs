//! The daemon's side of the admin socket: [`serve`] answers one request line per connection
//! from root or the daemon's own user, and [`execute`] carries a request out against the store
//! (also used by the CLI on the store directly when no daemon runs): listings, status, retries,
//! purges, open alerts, silences.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as AsyncBufReader};
use tokio::net::UnixListener;
use tracing::{debug, warn};

use crate::admin::protocol::{
    list_state, AdminAnswer, AdminError, AdminReply, AdminRequest, Counts, ListState, OpenAlert, PurgeState,
    RecordSummary, RetryTarget, StatusReport, Throttled,
};
use crate::admin::retention::finished_before;
use crate::clock::now_ms;
use crate::clock::rfc3339;
use crate::ops::shutdown::Shutdown;
use crate::queue::error::StoreError;
use crate::queue::record::{Record, State};
use crate::queue::store::Store;

/// Longest admin request line, in bytes.
const MAX_REQUEST_BYTES: u64 = 64 * 1024;

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
                drains_in_s: crate::config::delivery::drain_seconds(pending, limit),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::render::render;
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
        let mut limits = crate::config::delivery::RateLimits { default_per_min: 10, ..Default::default() };
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
        assert_eq!(crate::config::delivery::drain_seconds(121, 120), 61);
        store.close();
    }
}
