//! What an answer from PagerDuty means, as a pure function, and how long to wait before the next
//! attempt. Follows the Events API v2 "Response Codes & Retry Logic" page: 202 accepted; 400
//! invalid (do not retry); 429 too many events for the routing key (retry later); 5xx retry. For v1,
//! 403 is its throttling answer and is treated like 429.

use std::time::Duration;

use backoff::backoff::Backoff;

use crate::config::sections::RetrySection;
use crate::delivery::client::Attempt;
use crate::event::EventKind;

/// What to do with an event after one attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// 2xx: done.
    Delivered,
    /// Try again later.
    Retry {
        /// One line: status and message, or the transport error.
        reason: String,
        /// The server's `Retry-After`, if it gave one.
        retry_after: Option<Duration>,
        /// 429 (or v1 403): the routing key as a whole is over its rate; pause all its events.
        pause_routing_key: bool,
    },
    /// Refused for good (400 and other 4xx): kept as failed, with PagerDuty's `errors[]`.
    Failed {
        /// One line: status and message.
        reason: String,
        /// PagerDuty's `errors[]`.
        errors: Vec<String>,
    },
}

/// Classifies one attempt.
pub fn classify(kind: EventKind, attempt: &Attempt) -> Decision {
    match attempt {
        Attempt::Transport { message, timeout } => Decision::Retry {
            reason: if *timeout { format!("timed out: {message}") } else { message.clone() },
            retry_after: None,
            pause_routing_key: false,
        },
        Attempt::Response { status, retry_after, body, text } => {
            let message = body.message.clone().unwrap_or_else(|| text.chars().take(200).collect());
            let reason = format!("HTTP {status}: {}", message.replace('\n', " "));
            match *status {
                200..=299 => Decision::Delivered,
                429 => Decision::Retry { reason, retry_after: *retry_after, pause_routing_key: true },
                403 if kind == EventKind::V1 => {
                    Decision::Retry { reason, retry_after: *retry_after, pause_routing_key: true }
                }
                408 | 500..=599 => Decision::Retry { reason, retry_after: *retry_after, pause_routing_key: false },
                _ => Decision::Failed { reason, errors: body.errors.clone() },
            }
        }
    }
}

/// Whether an answer (its HTTP status; `None` when there was none: network error, timeout) says
/// PagerDuty or the path to it is in trouble, rather than something about one event or one
/// routing key: no answer, 408 or 5xx. Such failures count towards an outage; every other
/// answer proves PagerDuty reachable.
pub fn systemic(status: Option<u16>) -> bool {
    matches!(status, None | Some(408) | Some(500..=599))
}

/// Time to the next probe while PagerDuty is unreachable: `interval` with +-20% jitter drawn by
/// the backoff crate, so that a fleet of hosts does not probe in step.
pub fn probe_delay(interval: Duration) -> Duration {
    let mut backoff = backoff::ExponentialBackoff {
        current_interval: interval,
        initial_interval: interval,
        randomization_factor: 0.2,
        multiplier: 1.0,
        max_interval: interval,
        max_elapsed_time: None,
        ..backoff::ExponentialBackoff::default()
    };
    backoff.next_backoff().unwrap_or(interval)
}

/// Delay before attempt number `attempts + 1`, after `attempts` failed ones (at least 1):
/// exponential from `initial_interval` by `multiplier`, capped at `max_interval`, with jitter of
/// `randomization_factor` drawn by the backoff crate. A `Retry-After` wins, capped at
/// `max_retry_after`. There is no give-up time.
pub fn retry_delay(policy: &RetrySection, attempts: u32, retry_after: Option<Duration>) -> Duration {
    if let Some(after) = retry_after {
        return after.min(policy.max_retry_after);
    }
    let exponent = attempts.saturating_sub(1).min(64) as i32;
    let base = policy.initial_interval.as_secs_f64() * policy.multiplier.powi(exponent);
    let current = Duration::from_secs_f64(base.min(policy.max_interval.as_secs_f64()));
    let mut backoff = backoff::ExponentialBackoff {
        current_interval: current,
        initial_interval: policy.initial_interval,
        randomization_factor: policy.randomization_factor,
        multiplier: policy.multiplier,
        max_interval: policy.max_interval,
        max_elapsed_time: None,
        ..backoff::ExponentialBackoff::default()
    };
    backoff.next_backoff().unwrap_or(policy.max_interval)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::client::ApiResponse;

    fn response(status: u16, errors: &[&str]) -> Attempt {
        Attempt::Response {
            status,
            retry_after: None,
            body: ApiResponse {
                message: Some("m".into()),
                errors: errors.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
            text: String::new(),
        }
    }

    #[test]
    fn answers_are_classified() {
        use EventKind::*;
        let retry = |pause| Decision::Retry { reason: String::new(), retry_after: None, pause_routing_key: pause };
        let cases = [
            (Alert, 202, Decision::Delivered),
            (V1, 200, Decision::Delivered),
            (Change, 202, Decision::Delivered),
            (Alert, 429, retry(true)),
            (V1, 429, retry(true)),
            (V1, 403, retry(true)),
            (Alert, 408, retry(false)),
            (Alert, 500, retry(false)),
            (Alert, 502, retry(false)),
            (Alert, 503, retry(false)),
            (Change, 504, retry(false)),
            (Alert, 400, Decision::Failed { reason: String::new(), errors: vec!["x".into()] }),
            (Alert, 403, Decision::Failed { reason: String::new(), errors: vec!["x".into()] }),
            (Alert, 404, Decision::Failed { reason: String::new(), errors: vec!["x".into()] }),
            (Alert, 413, Decision::Failed { reason: String::new(), errors: vec!["x".into()] }),
        ];
        for (kind, status, want) in cases {
            let got = classify(kind, &response(status, &["x"]));
            let same = match (&got, &want) {
                (Decision::Delivered, Decision::Delivered) => true,
                (
                    Decision::Retry { pause_routing_key: a, reason, .. },
                    Decision::Retry { pause_routing_key: b, .. },
                ) => a == b && reason.starts_with(&format!("HTTP {status}")),
                (Decision::Failed { errors, reason }, Decision::Failed { .. }) => {
                    errors == &["x"] && reason.contains(&status.to_string())
                }
                _ => false,
            };
            assert!(same, "{kind:?} {status}: got {got:?}, want {want:?}");
        }
        let t = classify(Alert, &Attempt::Transport { message: "connection reset".into(), timeout: false });
        assert!(matches!(t, Decision::Retry { pause_routing_key: false, .. }));
        let t = classify(Alert, &Attempt::Transport { message: "x".into(), timeout: true });
        assert!(matches!(t, Decision::Retry { ref reason, .. } if reason.starts_with("timed out")));
    }

    #[test]
    fn systemic_failures_and_probe_jitter() {
        for status in [None, Some(408), Some(500), Some(502), Some(503), Some(599)] {
            assert!(systemic(status), "{status:?}");
        }
        for status in [Some(202), Some(400), Some(403), Some(404), Some(429)] {
            assert!(!systemic(status), "{status:?}");
        }
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let d = probe_delay(Duration::from_secs(5)).as_secs_f64();
            assert!((4.0..=6.0).contains(&d), "{d}");
            seen.insert((d * 1000.0) as u64);
        }
        assert!(seen.len() > 10, "probe delays are jittered: {seen:?}");
    }

    #[test]
    fn delays_grow_cap_and_honour_retry_after() {
        let policy = RetrySection { randomization_factor: 0.0, ..RetrySection::default() };
        let secs = |n| retry_delay(&policy, n, None).as_secs_f64();
        assert_eq!(secs(1), 1.0);
        assert_eq!(secs(2), 2.0);
        assert_eq!(secs(5), 16.0);
        assert_eq!(secs(20), 300.0);
        assert_eq!(secs(u32::MAX), 300.0);
        assert_eq!(retry_delay(&policy, 3, Some(Duration::from_secs(30))), Duration::from_secs(30));
        assert_eq!(retry_delay(&policy, 3, Some(Duration::from_secs(86_400))), Duration::from_secs(3600));
        let jittered = RetrySection::default();
        for _ in 0..100 {
            let d = retry_delay(&jittered, 3, None).as_secs_f64();
            assert!((2.0..=6.0).contains(&d), "{d}");
        }
    }
}
