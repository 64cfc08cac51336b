//! A local stand-in for the PagerDuty Events API that prints every event it accepts, one line
//! each: `<path> <json>`. It validates like PagerDuty (the same fake the tests use), so what it
//! prints is what PagerDuty would have taken.
//!
//! Usage: `cargo run --example receiver -- [ADDR]` (default 127.0.0.1:18765), then set
//! `pagerduty.events_url = "http://127.0.0.1:18765"`.

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
    eprintln!("receiver: fake Events API listening on {}", fake.url());
    loop {
        std::thread::park();
    }
}
