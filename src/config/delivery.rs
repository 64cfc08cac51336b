//! `[delivery]` and the per-routing-key rate limits it sets ([`RateLimits`], with the time a
//! backlog takes to drain at one: [`drain_seconds`]), which the store
//! and the dispatcher hold at run time. It imports nothing else of the crate, so that the queue
//! can use it without depending on the rest of the config.

use std::time::Duration;

use serde::Deserialize;

/// `[delivery]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliverySection {
    /// After this many failures in a row that are not about one event (network errors,
    /// timeouts, 408, 5xx) with no success between them, PagerDuty counts as unreachable: all
    /// sending stops and one event probes every `probe_interval`. 1 to 1000.
    pub outage_after: u32,
    /// Time between probes while PagerDuty is unreachable, with +-20% jitter; 100ms to 10m.
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
    /// Events a minute sent to one routing key at most (a sliding minute); 0 = no limit.
    /// PagerDuty documents about 120 a minute per integration key. 0 to 1,000,000.
    pub rate_limit: u32,
    /// Per routing key (the full 32-character key) limits that replace `rate_limit`, e.g. for
    /// an AIOps key allowed more.
    pub rate_limits: std::collections::BTreeMap<String, u32>,
    /// A trigger followed in the queue by a resolve of the same routing key and dedup key, both
    /// undelivered, is not sent: both are kept as `superseded`. Off by default.
    pub drop_stale_pairs: bool,
}

impl Default for DeliverySection {
    fn default() -> Self {
        DeliverySection {
            outage_after: 3,
            probe_interval: Duration::from_secs(5),
            rate_limit: DEFAULT_RATE_LIMIT,
            rate_limits: Default::default(),
            drop_stale_pairs: false,
        }
    }
}

/// PagerDuty's documented limit per integration key, in events a minute.
pub const DEFAULT_RATE_LIMIT: u32 = 120;
/// Highest `delivery.rate_limit` accepted, in events a minute.
pub const MAX_RATE_LIMIT: u32 = 1_000_000;

/// Proactive rate limits per routing key, in events a minute (0 = none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateLimits {
    /// For keys not listed.
    pub default_per_min: u32,
    /// By full routing key.
    pub per_key: std::collections::HashMap<String, u32>,
}

impl RateLimits {
    /// From a checked `[delivery]` section.
    pub fn from_section(d: &DeliverySection) -> RateLimits {
        RateLimits { default_per_min: d.rate_limit, per_key: d.rate_limits.clone().into_iter().collect() }
    }

    /// The limit of `routing_key`, events a minute; 0 = none.
    pub fn of(&self, routing_key: &str) -> u32 {
        self.per_key.get(routing_key).copied().unwrap_or(self.default_per_min)
    }
}

/// Seconds to send `pending` events at `limit_per_min` (not 0), rounded up.
pub fn drain_seconds(pending: u64, limit_per_min: u32) -> u64 {
    (pending * 60).div_ceil(u64::from(limit_per_min.max(1)))
}
