//! A local stand-in for the PagerDuty Events API that prints every event it accepts, one line
//! each: `<path> <json>`. It validates like PagerDuty (the same fake the tests use), so what it
//! prints is what PagerDuty would have taken.
//!
//! Usage: `cargo run --example receiver -- [ADDR] [throttle SECONDS]` (default
//! 127.0.0.1:18765), then set `pagerduty.events_url = "http://127.0.0.1:18765"`. Each line printed
//! is `<unix time, s> <path> <json>`. With `throttle SECONDS`, every request in the first SECONDS
//! gets 429 with `Retry-After: SECONDS` (the benchmarks use it to build a backlog).

#[path = "../tests/it/fake_api.rs"]
mod fake_api;

fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:18765".to_owned());
    let addr = match addr.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("receiver: {addr:?} is not an address such as 127.0.0.1:18765: {e}");
            std::process::exit(2);
        }
    };
    let fake = fake_api::FakeApi::start_on(addr, true);
    if std::env::args().nth(2).as_deref() == Some("throttle") {
        let seconds: u64 = std::env::args().nth(3).and_then(|s| s.parse().ok()).unwrap_or(60);
        fake.throttle_until(std::time::Instant::now() + std::time::Duration::from_secs(seconds), seconds);
    }
    eprintln!("receiver: fake Events API listening on {}", fake.url());
    loop {
        std::thread::park();
    }
}
