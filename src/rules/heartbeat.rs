//! Heartbeats, both ways. Out: `[heartbeat]`, a dead man's switch URL (healthchecks.io, Dead
//! Man's Snitch, any HTTP endpoint) that the daemon pings while its own delivery works, so that a
//! dead host or a dead pdrelay pages from outside. In: `[[expected_senders]]` on a site relay,
//! producers that must be heard from within an interval; one that falls silent gets a trigger,
//! resolved when it is heard again.
//!
//! This module holds the settings and the in-memory "last heard" table that acceptance updates;
//! the task that pings and raises the alerts is `delivery::heartbeat`.

use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;

use crate::event::{Event, RoutingKey};
use crate::rules::routing::Matcher;

/// `[heartbeat]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeartbeatSection {
    /// URL to GET at each interval while delivery works; "" (the default) = none. Sent through
    /// `pagerduty.proxy` (or the proxy environment), `ca_bundle` and `local_address`.
    pub url: String,
    /// Time between pings, 1s to 1d. The switch's own grace period should be a few of these.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// How often expected senders are checked, 100ms to 1h.
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
}

impl Default for HeartbeatSection {
    fn default() -> Self {
        HeartbeatSection {
            url: String::new(),
            interval: Duration::from_secs(60),
            check_interval: Duration::from_secs(10),
        }
    }
}

/// One `[[expected_senders]]` entry as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExpectedSenderSection {
    /// The sender's name: in the alert's summary and dedup key (`pdrelay-silent/NAME`).
    pub name: String,
    /// Which events count as hearing from it, as in `[[routes]]` (e.g. `{ source = "db1" }`).
    #[serde(rename = "match")]
    pub matchers: std::collections::BTreeMap<String, String>,
    /// It must be heard from at least this often; 1s to 30d.
    #[serde(with = "humantime_serde")]
    pub within: Duration,
    /// Routing key of the alert; default `pagerduty.default_routing_key`.
    pub routing_key: String,
    /// Severity of the alert: critical, error, warning, info.
    pub severity: String,
}

/// A checked expected sender.
#[derive(Debug, Clone)]
pub struct Expected {
    /// Its name.
    pub name: String,
    matchers: Vec<Matcher>,
    /// Within, in ms.
    pub within_ms: u64,
    /// Where the alert goes.
    pub routing_key: RoutingKey,
    /// The alert's severity.
    pub severity: crate::event::Severity,
}

/// The expected senders and when each was last heard from.
#[derive(Debug, Default)]
pub struct Watch {
    /// Checked `[[expected_senders]]`.
    pub senders: Vec<Expected>,
    /// Last heard (ms since the epoch), by index into `senders`; starts at the daemon's start.
    last_heard: Mutex<Vec<u64>>,
}

/// The intake name of the alerts this module raises (never counted as hearing from a sender).
pub const INTAKE: &str = "heartbeat";

impl Watch {
    /// A watch whose senders all count as heard at `now_ms`.
    pub fn new(senders: Vec<Expected>, now_ms: u64) -> Watch {
        let n = senders.len();
        Watch { senders, last_heard: Mutex::new(vec![now_ms; n]) }
    }

    /// Notes `event` (come in through `intake`) as heard at `now_ms` for every sender it matches.
    pub fn heard(&self, event: &Event, intake: &str, now_ms: u64) {
        if self.senders.is_empty() || intake == INTAKE {
            return;
        }
        let mut last = self.last_heard.lock().expect("last heard lock");
        for (i, s) in self.senders.iter().enumerate() {
            if crate::rules::routing::all_match(&s.matchers, event, intake) {
                last[i] = last[i].max(now_ms);
            }
        }
    }

    /// Counts sender `i` as not heard since the epoch (its alert is open from before a restart).
    pub fn forget(&self, i: usize) {
        if let Some(t) = self.last_heard.lock().expect("last heard lock").get_mut(i) {
            *t = 0;
        }
    }

    /// When each sender was last heard, by index.
    pub fn last_heard(&self) -> Vec<u64> {
        self.last_heard.lock().expect("last heard lock").clone()
    }
}

/// Checks `[heartbeat]` and `[[expected_senders]]`, one line per problem.
pub fn check(
    heartbeat: &HeartbeatSection,
    senders: &[ExpectedSenderSection],
    default_key: Option<&RoutingKey>,
    problems: &mut Vec<String>,
) -> Vec<Expected> {
    if !heartbeat.url.is_empty() {
        match reqwest::Url::parse(&heartbeat.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => problems.push(format!("heartbeat.url: must be an http or https URL (got {:?})", heartbeat.url)),
        }
    }
    if heartbeat.interval < Duration::from_secs(1) || heartbeat.interval > Duration::from_secs(86_400) {
        problems.push("heartbeat.interval: must be between 1s and 1d".to_owned());
    }
    if heartbeat.check_interval < Duration::from_millis(100) || heartbeat.check_interval > Duration::from_secs(3600) {
        problems.push("heartbeat.check_interval: must be between 100ms and 1h".to_owned());
    }
    let mut out = Vec::new();
    for (i, s) in senders.iter().enumerate() {
        let at = format!("expected_senders[{}]", i + 1);
        let mut ok = true;
        if s.name.is_empty() || s.name.len() > 200 || out.iter().any(|e: &Expected| e.name == s.name) {
            problems.push(format!("{at}.name: must be a unique name of 1 to 200 bytes"));
            ok = false;
        }
        if s.matchers.is_empty() {
            problems.push(format!("{at}.match: needs at least one matcher, e.g. {{ source = \"db1\" }}"));
            ok = false;
        }
        let (matchers, all_good) = crate::rules::routing::parse_matchers(&at, &s.matchers, problems);
        ok &= all_good;
        if s.within < Duration::from_secs(1) || s.within > Duration::from_secs(30 * 86_400) {
            problems.push(format!("{at}.within: must be between 1s and 30d"));
            ok = false;
        }
        let routing_key = match s.routing_key.as_str() {
            "" => default_key.cloned(),
            key => RoutingKey::parse(key, &format!("{at}.routing_key")).map_err(|e| problems.push(e.to_string())).ok(),
        };
        if routing_key.is_none() && s.routing_key.is_empty() {
            problems.push(format!("{at}.routing_key: needed when pagerduty.default_routing_key is not set"));
        }
        let severity = match s.severity.as_str() {
            "" => Some(crate::event::Severity::Critical),
            sev => crate::event::Severity::exact(sev).or_else(|| {
                problems.push(format!("{at}.severity: must be critical, error, warning or info (got {sev:?})"));
                None
            }),
        };
        if let (true, Some(routing_key), Some(severity)) = (ok, routing_key, severity) {
            out.push(Expected {
                name: s.name.clone(),
                matchers,
                within_ms: s.within.as_millis() as u64,
                routing_key,
                severity,
            });
        }
    }
    out
}

/// The dedup key of the alert for a silent sender.
pub fn dedup_key(name: &str) -> String {
    format!("pdrelay-silent/{name}")
}

/// The event raised for (`resolve` false) or resolving (true) a silent sender, as JSON for
/// [`Event::from_value`].
pub fn alert_json(sender: &Expected, resolve: bool, silent_for_ms: u64, host: &str) -> serde_json::Value {
    if resolve {
        return serde_json::json!({"routing_key": sender.routing_key.as_str(), "event_action": "resolve",
            "dedup_key": dedup_key(&sender.name)});
    }
    let silent = humantime::format_duration(Duration::from_secs(silent_for_ms / 1000)).to_string();
    serde_json::json!({"routing_key": sender.routing_key.as_str(), "event_action": "trigger",
        "dedup_key": dedup_key(&sender.name),
        "payload": {"summary": format!("{} has not been heard from for {silent} (expected within {})",
                sender.name, humantime::format_duration(Duration::from_millis(sender.within_ms))),
            "source": host, "severity": sender.severity.as_str(), "component": sender.name,
            "class": "expected sender silent"}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn senders_are_heard_by_their_matchers_but_not_from_their_own_alerts() {
        let mut problems = Vec::new();
        let key = RoutingKey::parse(&"k".repeat(32), "k").unwrap();
        let sections = [ExpectedSenderSection {
            name: "db1".into(),
            matchers: [("source".to_owned(), "db1".to_owned())].into(),
            within: Duration::from_secs(60),
            ..Default::default()
        }];
        let senders = check(&HeartbeatSection::default(), &sections, Some(&key), &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let watch = Watch::new(senders, 5);
        let alert =
            Event::from_value(alert_json(&watch.senders[0], false, 90_000, "db1"), &Default::default()).unwrap();
        watch.heard(&alert, INTAKE, 10);
        assert_eq!(watch.last_heard(), [5]);
        watch.heard(&alert, "socket", 10);
        assert_eq!(watch.last_heard(), [10]);
    }

    #[test]
    fn bad_senders_are_refused_one_line_each() {
        let mut problems = Vec::new();
        let hb = HeartbeatSection { url: "ftp://x".into(), interval: Duration::ZERO, ..Default::default() };
        let sections = [ExpectedSenderSection { severity: "high".into(), ..Default::default() }];
        assert!(check(&hb, &sections, None, &mut problems).is_empty());
        let joined = problems.join("\n");
        for want in [
            "heartbeat.url",
            "heartbeat.interval",
            "[1].name",
            "[1].match",
            "[1].within",
            "[1].routing_key",
            "[1].severity",
        ] {
            assert!(joined.contains(want), "{want}: {joined}");
        }
    }
}
