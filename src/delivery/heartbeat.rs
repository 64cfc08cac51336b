//! The heartbeat task: pings `[heartbeat] url` while delivery works, and raises (and resolves)
//! the alerts for `[[expected_senders]]` that fall silent (see [`crate::rules::heartbeat`]).
//!
//! "Delivery works" means: PagerDuty is not held for unreachable (no outage, see `delivery::dispatcher::pacing`) and
//! the last delivery attempt did not fail for a reason that is not about one event. While it
//! does not, no ping goes out, so the switch fires from outside: a host whose alerts cannot
//! reach PagerDuty is as good as dead, and says so.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::clock::now_ms;
use crate::delivery::client::EventsClient;
use crate::event::Event;
use crate::ops::shutdown::Shutdown;
use crate::queue::request::NewEvent;
use crate::queue::store::Store;
use crate::rules::heartbeat::{alert_json, dedup_key, Watch, INTAKE};

/// What the task needs.
pub struct HeartbeatSettings {
    /// The dead man's switch URL, if any.
    pub url: Option<String>,
    /// Between pings.
    pub interval: Duration,
    /// Between checks of the expected senders.
    pub check_interval: Duration,
    /// A client with the daemon's network settings (proxy, CA bundle, local address).
    pub client: EventsClient,
    /// Set by the dispatcher while deliveries fail (shared with `DeliverySettings::failing`).
    pub failing: Arc<AtomicBool>,
    /// Expected senders and when they were last heard (shared with the queue's policy).
    pub watch: Arc<Watch>,
    /// Where to count pings.
    pub metrics: Option<Arc<crate::ops::metrics::Metrics>>,
}

/// Runs until `shutdown`.
pub async fn run(store: Store, settings: HeartbeatSettings, mut shutdown: Shutdown) {
    let senders = &settings.watch.senders;
    // Alerts open from before a restart stay open until their sender is really heard again.
    let mut raised: Vec<bool> = senders
        .iter()
        .map(|s| store.alert(s.routing_key.as_str(), &dedup_key(&s.name)).ok().flatten().is_some_and(|a| a.is_open()))
        .collect();
    for (i, r) in raised.iter().enumerate() {
        if *r {
            settings.watch.forget(i);
        }
    }
    if settings.url.is_none() && senders.is_empty() {
        return;
    }
    let tick = if senders.is_empty() { settings.interval } else { settings.interval.min(settings.check_interval) };
    let mut next_ping = 0u64;
    let mut pinging = true;
    let host = crate::event::local_hostname();
    loop {
        let now = now_ms();
        if let Some(url) = settings.url.as_deref().filter(|_| now >= next_ping) {
            next_ping = now + settings.interval.as_millis() as u64;
            let works = store.outage_since().is_none() && !settings.failing.load(Ordering::Relaxed);
            if works != pinging {
                pinging = works;
                if works {
                    info!("delivery works again; heartbeat pings resume");
                } else {
                    warn!("delivery to PagerDuty does not work; heartbeat pings stop until it does");
                }
            }
            let outcome = if works {
                match settings.client.ping(url).await {
                    Ok(status) if (200..300).contains(&status) => "ok",
                    Ok(status) => {
                        debug!(status, "the heartbeat URL answered with an error");
                        "error"
                    }
                    Err(e) => {
                        debug!(error = %e, "the heartbeat URL could not be reached");
                        "error"
                    }
                }
            } else {
                "skipped"
            };
            if let Some(m) = &settings.metrics {
                m.heartbeat(outcome);
            }
        }
        let last = settings.watch.last_heard();
        let mut silent_now = 0;
        for (i, s) in senders.iter().enumerate() {
            let quiet_for = now.saturating_sub(last[i]);
            let silent = quiet_for > s.within_ms;
            silent_now += usize::from(silent);
            if silent == raised[i] {
                continue;
            }
            let Ok(event) = Event::from_value(alert_json(s, !silent, quiet_for, &host), &Default::default()) else {
                continue;
            };
            match store.insert(vec![NewEvent { id: None, intake: INTAKE, event }]).await {
                Ok(_) => {
                    raised[i] = silent;
                    if silent {
                        warn!(sender = %crate::text::Escaped(&s.name), "an expected sender fell silent; alert raised");
                    } else {
                        info!(sender = %crate::text::Escaped(&s.name), "an expected sender is heard again; alert resolved");
                    }
                }
                Err(e) => warn!(error = %e, "cannot queue the alert for an expected sender; trying again"),
            }
        }
        if let Some(m) = &settings.metrics {
            m.silent_senders(silent_now);
        }
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(tick) => {}
        }
    }
}
