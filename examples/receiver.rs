//! A local stand-in for the PagerDuty Events API that prints every event it accepts, one line
//! each: `<path> <json>`. It validates like PagerDuty (the same fake the tests use), so what it
//! prints is what PagerDuty would have taken.
//!
//! Usage: `cargo run --example receiver -- [ADDR] [throttle SECONDS] [down SECONDS] [limit N]`
//! (default 127.0.0.1:18765), then set `pagerduty.events_url = "http://127.0.0.1:18765"`. Each
//! line printed is `<unix time, s> <path> <json>`. With `throttle SECONDS`, every request in the
//! first SECONDS gets 429 with `Retry-After: SECONDS` (the benchmarks use it to build a backlog).
//! With `down SECONDS`, every request in the first SECONDS gets 503, and the moment it answers
//! again is printed as `<unix time, s> UP`. With `limit N`, more than N events of one routing key
//! within any 60 s get 429, as PagerDuty's rate limit.

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
    let args: Vec<String> = std::env::args().skip(2).collect();
    for pair in args.chunks(2) {
        let n: u64 = pair.get(1).and_then(|s| s.parse().ok()).unwrap_or(60);
        match pair[0].as_str() {
            "throttle" => fake.throttle_until(std::time::Instant::now() + std::time::Duration::from_secs(n), n),
            "down" => {
                fake.set_down(true);
                let f = fake.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(std::time::Duration::from_secs(n));
                    f.set_down(false);
                    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                    println!("{:.6} UP", now.as_secs_f64());
                });
            }
            "limit" => fake.enforce_rate_limit(n as usize, std::time::Duration::from_secs(60)),
            other => {
                eprintln!("receiver: unknown option {other:?} (throttle, down, limit)");
                std::process::exit(2);
            }
        }
    }
    eprintln!("receiver: fake Events API listening on {}", fake.url());
    loop {
        std::thread::park();
    }
}
