//! Reconciliation: what happened in PagerDuty to the incidents behind the open-alerts ledger.
//!
//! Off unless `[pagerduty] rest_api_key` (or `rest_api_key_file`) is set. Every
//! `reconcile_interval`, and at `pdrelay alerts --refresh`, it reads from PagerDuty's REST API
//! (`sync::rest`) the newest incident of each *unsettled* tracked dedup key, and stores
//! PagerDuty's side beside pdrelay's ([`PagerDutyView`]). Unsettled: open here, or open in
//! PagerDuty when last read, or resolved here after the last read. A key resolved on both sides
//! costs nothing more. `pdrelay alerts` shows both sides and [`disagreement`]s.
//!
//! Owns: which keys to read ([`plan`]), turning incidents into views ([`read_views`]), the
//! daemon's loop ([`run`]). Does not own: HTTP (`sync::rest`), storage (`queue`), passing
//! acknowledgements back (`ackback`).

use std::collections::HashMap;
use std::time::Duration;

use tracing::{debug, error, info, warn};

use crate::clock::now_ms;
use crate::config::Config;
use crate::event::EventAction;
use crate::ops::shutdown::Shutdown;
use crate::queue::alerts::AlertState;
use crate::queue::store::Store;
use crate::queue::view::PagerDutyView;
#[cfg(test)]
use crate::queue::view::{OPEN_HERE_NONE_THERE, OPEN_HERE_RESOLVED_THERE, RESOLVED_HERE_OPEN_THERE};
use crate::sync::ackback::AckBack;
use crate::sync::rest::{RestClient, RestError};

/// Most keys read in one pass (the rest wait for the next pass, oldest reads first).
pub const MAX_KEYS_PER_PASS: usize = 500;

/// Builds the REST client from the config; `Ok(None)` when no key is set.
pub fn client(config: &Config) -> Result<Option<RestClient>, String> {
    let p = &config.file.pagerduty;
    let Some(key) = p.rest_key()? else { return Ok(None) };
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("pdrelay/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(p.connect_timeout)
        .timeout(p.request_timeout);
    let network = config.network();
    if let Some(proxy) = &network.proxy {
        builder = builder.proxy(reqwest::Proxy::all(proxy.as_str()).map_err(|e| format!("pagerduty.proxy: {e}"))?);
    }
    if let Some(path) = &network.ca_bundle {
        let pem = std::fs::read(path).map_err(|e| format!("pagerduty.ca_bundle {}: {e}", path.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| format!("pagerduty.ca_bundle: {e}"))? {
            builder = builder.add_root_certificate(cert);
        }
    }
    let http = builder.build().map_err(|e| format!("REST API client: {e}"))?;
    Ok(Some(RestClient::new(http, &p.rest_api_url, &key, p.rest_service_ids.clone())))
}

/// The (routing key, dedup key) pairs to read, oldest read first, at most
/// [`MAX_KEYS_PER_PASS`]; and the views to drop (their key is no longer tracked here).
pub fn plan(alerts: &[AlertState], views: &[PagerDutyView]) -> (Vec<(String, String)>, Vec<PagerDutyView>) {
    let by_key: HashMap<(&str, &str), &PagerDutyView> =
        views.iter().map(|v| ((v.routing_key.as_str(), v.dedup_key.as_str()), v)).collect();
    let mut targets: Vec<(u64, String, String)> = Vec::new();
    for a in alerts {
        let view = by_key.get(&(a.routing_key.as_str(), a.dedup_key.as_str()));
        let unsettled = match view {
            None => true,
            Some(v) => a.is_open() || v.is_open() || v.checked_ms < a.at_ms,
        };
        if unsettled {
            targets.push((view.map_or(0, |v| v.checked_ms), a.routing_key.clone(), a.dedup_key.clone()));
        }
    }
    targets.sort();
    targets.truncate(MAX_KEYS_PER_PASS);
    let tracked: std::collections::HashSet<(&str, &str)> =
        alerts.iter().map(|a| (a.routing_key.as_str(), a.dedup_key.as_str())).collect();
    let gone =
        views.iter().filter(|v| !tracked.contains(&(v.routing_key.as_str(), v.dedup_key.as_str()))).cloned().collect();
    (targets.into_iter().map(|(_, rk, dk)| (rk, dk)).collect(), gone)
}

/// Reads the newest incident of each target and makes its view, keeping the ack-back mark of
/// `previous` views. Stops at the first error and returns the views read so far with it.
pub async fn read_views(
    client: &RestClient,
    targets: &[(String, String)],
    previous: &[PagerDutyView],
) -> (Vec<PagerDutyView>, Option<RestError>) {
    let marks: HashMap<(&str, &str), &Option<String>> =
        previous.iter().map(|v| ((v.routing_key.as_str(), v.dedup_key.as_str()), &v.acked_back)).collect();
    let mut out = Vec::new();
    for (rk, dk) in targets {
        // The time the read began: of two overlapping reads, the later-begun one is kept.
        let checked_ms = now_ms();
        let incident = match client.newest_incident(dk).await {
            Ok(i) => i,
            Err(e) => return (out, Some(e)),
        };
        let acked_back = marks.get(&(rk.as_str(), dk.as_str())).and_then(|m| (*m).clone());
        let view = match incident {
            Some(i) => {
                let (by, changed_at) = i.by_and_at();
                PagerDutyView {
                    routing_key: rk.clone(),
                    dedup_key: dk.clone(),
                    status: i.status.clone(),
                    incident_id: Some(i.id.clone()),
                    html_url: i.html_url.clone(),
                    by,
                    changed_at,
                    checked_ms,
                    acked_back,
                }
            }
            None => PagerDutyView {
                routing_key: rk.clone(),
                dedup_key: dk.clone(),
                status: "none".to_owned(),
                incident_id: None,
                html_url: None,
                by: None,
                changed_at: None,
                checked_ms,
                acked_back,
            },
        };
        out.push(view);
    }
    (out, None)
}

/// How pdrelay's side and PagerDuty's disagree, if they do (see
/// [`PagerDutyView::disagreement`]).
pub fn disagreement(local: &AlertState, view: Option<&PagerDutyView>) -> Option<&'static str> {
    view?.disagreement(local.is_open(), local.last_action == EventAction::Trigger, local.at_ms)
}

/// One pass on the daemon's store: plan, read, store. Returns how many views were written.
pub async fn pass(store: &Store, client: &RestClient) -> Result<usize, RestError> {
    let (alerts, views) = match (store.alerts(), store.pagerduty_views()) {
        (Ok(a), Ok(v)) => (a, v),
        (Err(e), _) | (_, Err(e)) => return Err(RestError::Transport(format!("reading the ledger: {e}"))),
    };
    let (targets, gone) = plan(&alerts, &views);
    let (read, error) = read_views(client, &targets, &views).await;
    let n = read.len();
    let mut writes: Vec<(PagerDutyView, bool)> = read.into_iter().map(|v| (v, true)).collect();
    writes.extend(gone.into_iter().map(|v| (v, false)));
    if !writes.is_empty() {
        if let Err(e) = store.put_pagerduty_views(writes).await {
            return Err(RestError::Transport(format!("storing PagerDuty's side: {e}")));
        }
    }
    match error {
        Some(e) => Err(e),
        None => Ok(n),
    }
}

/// The daemon's loop: a pass every `interval` (the first at once), then ack-back; logs an error
/// once when it starts and once when it clears, never the key.
pub async fn run(
    store: Store,
    client: RestClient,
    ackback: Option<AckBack>,
    interval: Duration,
    mut shutdown: Shutdown,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error: Option<String> = None;
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tick.tick() => {}
        }
        let result = tokio::select! {
            _ = shutdown.wait() => return,
            r = pass(&store, &client) => r,
        };
        match result {
            Ok(n) => {
                if last_error.take().is_some() {
                    info!(read = n, "reconciliation with PagerDuty's REST API works again");
                }
                debug!(read = n, stats = ?client.stats(), "reconciliation pass");
            }
            Err(e) => {
                let text = crate::text::escape_controls(&e.to_string());
                if last_error.as_deref() != Some(text.as_str()) {
                    match e {
                        RestError::Unauthorized { .. } => error!(error = %text, "reconciliation"),
                        _ => warn!(error = %text, "reconciliation pass incomplete"),
                    }
                    last_error = Some(text);
                }
            }
        }
        if let Some(ackback) = &ackback {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = ackback.pass(&store) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(dk: &str, action: EventAction, at_ms: u64) -> AlertState {
        AlertState {
            routing_key: "R".into(),
            dedup_key: dk.into(),
            last_action: action,
            at_ms,
            summary: None,
            event_id: "e".into(),
        }
    }

    fn view(dk: &str, status: &str, checked_ms: u64) -> PagerDutyView {
        PagerDutyView {
            routing_key: "R".into(),
            dedup_key: dk.into(),
            status: status.into(),
            incident_id: Some("P1".into()),
            html_url: None,
            by: None,
            changed_at: None,
            checked_ms,
            acked_back: None,
        }
    }

    #[test]
    fn settled_keys_are_not_read_again_and_forgotten_ones_dropped() {
        let alerts = vec![
            alert("open", EventAction::Trigger, 10),
            alert("settled", EventAction::Resolve, 10),
            alert("resolved-later", EventAction::Resolve, 50),
            alert("still-open-there", EventAction::Resolve, 10),
        ];
        let views = vec![
            view("open", "acknowledged", 20),
            view("settled", "resolved", 20),
            view("resolved-later", "acknowledged", 20),
            view("still-open-there", "triggered", 20),
            view("forgotten", "resolved", 20),
        ];
        let (targets, gone) = plan(&alerts, &views);
        let keys: Vec<&str> = targets.iter().map(|(_, d)| d.as_str()).collect();
        assert_eq!(keys, ["open", "resolved-later", "still-open-there"]);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].dedup_key, "forgotten");
    }

    #[test]
    fn disagreements_need_a_view_read_after_the_last_delivery() {
        let resolved = alert("k", EventAction::Resolve, 10);
        assert_eq!(disagreement(&resolved, Some(&view("k", "triggered", 20))), Some(RESOLVED_HERE_OPEN_THERE));
        assert_eq!(disagreement(&resolved, Some(&view("k", "triggered", 5))), None, "read before the resolve");
        let open = alert("k", EventAction::Trigger, 10);
        assert_eq!(disagreement(&open, Some(&view("k", "resolved", 20))), Some(OPEN_HERE_RESOLVED_THERE));
        assert_eq!(disagreement(&open, Some(&view("k", "acknowledged", 20))), None);
        assert_eq!(disagreement(&open, Some(&view("k", "none", 20))), Some(OPEN_HERE_NONE_THERE));
        assert_eq!(disagreement(&open, None), None);
    }
}
