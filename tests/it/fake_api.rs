//! A fake PagerDuty Events API for tests and the local demo: a real HTTP/1.1 server on
//! 127.0.0.1:0 (hyper) that validates requests as PagerDuty documents them (the OpenAPI files in
//! shared/reference and the Events API v2 limits), records what it accepts, and injects faults on
//! request: a status (5xx, 429 with Retry-After, 400, v1's 403), a hang, a connection reset.
//!
//! It runs on its own thread and runtime, so sync and async tests can use it alike.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{json, Value};
use tokio::sync::Notify;

/// One injected fault, used by the next request it matches.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer this status with a PagerDuty-like body (`errors: ["injected"]`).
    Status(u16),
    /// 429 with an optional Retry-After in seconds.
    TooMany(Option<u64>),
    /// Read the request, then say nothing for this long, then close.
    Hang(Duration),
    /// Read the request, then reset the connection (RST).
    Reset,
    /// Accept the event (it counts as accepted), then cut the 202 answer off inside its body.
    CutOff,
    /// Wait this long, then answer normally.
    Slow(Duration),
}

/// A request the fake accepted.
#[derive(Debug, Clone)]
pub struct Received {
    /// `/v2/enqueue`, `/v2/change/enqueue` or `/generic/2010-04-15/create_event.json`.
    pub path: String,
    /// The JSON body.
    pub body: Value,
    /// When it was accepted.
    pub at: Instant,
}

#[derive(Default)]
struct State {
    accepted: Vec<Received>,
    rejected: Vec<(String, Value, Vec<String>)>,
    requests: u64,
    /// (routing key filter, fault)
    faults: VecDeque<(Option<String>, Fault)>,
    /// Probability of a random fault per request, and the RNG.
    chaos: Option<(f64, fastrand::Rng)>,
    /// Answer 503 to everything while set.
    down: bool,
    /// Print each accepted event to stdout (the demo receiver).
    print: bool,
    /// Answer 429 with this Retry-After (seconds) until this instant (benchmarks).
    throttle: Option<(Instant, u64)>,
    /// PagerDuty's rate limit per routing key: at most this many events in any window of this
    /// length; more get 429 (no Retry-After, as PagerDuty's Events API).
    rate_limit: Option<(usize, Duration)>,
    /// Arrival times of the events counted against the limit, per routing key.
    arrivals: std::collections::HashMap<String, VecDeque<Instant>>,
    /// 429s the rate limit answered, per routing key.
    limited: std::collections::HashMap<String, u64>,
}

/// Handle on a running fake.
#[derive(Clone)]
pub struct FakeApi {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
}

impl FakeApi {
    /// Starts on 127.0.0.1 with an ephemeral port.
    pub fn start() -> FakeApi {
        FakeApi::start_on("127.0.0.1:0".parse().unwrap(), false)
    }

    /// Starts on `addr`; `print` echoes accepted events to stdout.
    pub fn start_on(addr: SocketAddr, print: bool) -> FakeApi {
        let state = Arc::new(Mutex::new(State { print, ..State::default() }));
        let changed = Arc::new(Notify::new());
        let (tx, rx) = std::sync::mpsc::channel();
        let (s, c) = (state.clone(), changed.clone());
        std::thread::Builder::new()
            .name("fake-events-api".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
                    tx.send(listener.local_addr().unwrap()).unwrap();
                    loop {
                        let (stream, _) = match listener.accept().await {
                            Ok(x) => x,
                            Err(_) => continue,
                        };
                        tokio::spawn(serve_connection(stream, s.clone(), c.clone()));
                    }
                });
            })
            .unwrap();
        let addr = rx.recv().unwrap();
        FakeApi { addr, state, changed }
    }

    /// Base URL for `pagerduty.events_url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Injects a fault for the next matching request (any routing key).
    pub fn push_fault(&self, fault: Fault) {
        self.state.lock().unwrap().faults.push_back((None, fault));
    }

    /// Injects a fault for the next request carrying `routing_key`.
    pub fn push_fault_for(&self, routing_key: &str, fault: Fault) {
        self.state.lock().unwrap().faults.push_back((Some(routing_key.to_owned()), fault));
    }

    /// Random faults (500, 503, 429, reset, 408) with probability `p` per request, seeded.
    pub fn chaos(&self, p: f64, seed: u64) {
        self.state.lock().unwrap().chaos = Some((p, fastrand::Rng::with_seed(seed)));
    }

    /// Stops random faults.
    pub fn calm(&self) {
        self.state.lock().unwrap().chaos = None;
    }

    /// Until `until`, every request gets 429 with `Retry-After: retry_after_s` (pauses the
    /// routing key in pdrelay: a way to build a backlog without retry traffic).
    pub fn throttle_until(&self, until: Instant, retry_after_s: u64) {
        self.state.lock().unwrap().throttle = Some((until, retry_after_s));
    }

    /// Enforces a rate limit per routing key as PagerDuty does: at most `events` in any window
    /// of `window` (a sliding window over arrival times); a request over it gets 429.
    pub fn enforce_rate_limit(&self, events: usize, window: Duration) {
        self.state.lock().unwrap().rate_limit = Some((events, window));
    }

    /// 429s answered by the enforced rate limit, per routing key.
    pub fn rate_limited(&self) -> std::collections::HashMap<String, u64> {
        self.state.lock().unwrap().limited.clone()
    }

    /// While down, every request gets 503.
    pub fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
    }

    /// Everything accepted so far, in order of acceptance.
    pub fn accepted(&self) -> Vec<Received> {
        self.state.lock().unwrap().accepted.clone()
    }

    /// Requests refused as invalid: (path, body, errors).
    pub fn rejected(&self) -> Vec<(String, Value, Vec<String>)> {
        self.state.lock().unwrap().rejected.clone()
    }

    /// Requests seen, of any outcome.
    pub fn requests(&self) -> u64 {
        self.state.lock().unwrap().requests
    }

    /// Waits until at least `n` events were accepted, or panics after `deadline`.
    pub fn wait_accepted(&self, n: usize, deadline: Duration) -> Vec<Received> {
        let end = Instant::now() + deadline;
        loop {
            let got = self.accepted();
            if got.len() >= n {
                return got;
            }
            assert!(Instant::now() < end, "fake Events API: {} of {n} events accepted after {deadline:?}", got.len());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Notified on every request.
    pub fn changed(&self) -> Arc<Notify> {
        self.changed.clone()
    }
}

fn routing_key_of(body: &Value) -> Option<String> {
    body.get("routing_key").or_else(|| body.get("service_key")).and_then(Value::as_str).map(str::to_owned)
}

/// Chooses the fault for this request, if any.
fn take_fault(state: &mut State, routing_key: Option<&str>) -> Option<Fault> {
    if state.down {
        return Some(Fault::Status(503));
    }
    if let Some((until, after)) = state.throttle {
        if Instant::now() < until {
            return Some(Fault::TooMany(Some(after)));
        }
    }
    let pos = state.faults.iter().position(|(filter, _)| filter.is_none() || filter.as_deref() == routing_key);
    if let Some(i) = pos {
        return state.faults.remove(i).map(|(_, f)| f);
    }
    if let (Some((events, window)), Some(rk)) = (state.rate_limit, routing_key) {
        let now = Instant::now();
        let seen = state.arrivals.entry(rk.to_owned()).or_default();
        while seen.front().is_some_and(|&at| now.duration_since(at) >= window) {
            seen.pop_front();
        }
        if seen.len() >= events {
            *state.limited.entry(rk.to_owned()).or_insert(0) += 1;
            return Some(Fault::TooMany(None));
        }
        seen.push_back(now);
    }
    if let Some((p, rng)) = state.chaos.as_mut() {
        if rng.f64() < *p {
            return Some(match rng.u8(0..5) {
                0 => Fault::Status(500),
                1 => Fault::Status(503),
                2 => Fault::TooMany(Some(0)),
                3 => Fault::Reset,
                _ => Fault::Status(408),
            });
        }
    }
    None
}

async fn serve_connection(stream: tokio::net::TcpStream, state: Arc<Mutex<State>>, changed: Arc<Notify>) {
    let fd = stream.as_raw_fd();
    let reset = Arc::new(Notify::new());
    let r = reset.clone();
    let service = hyper::service::service_fn(move |req| handle(req, state.clone(), changed.clone(), r.clone()));
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    tokio::select! {
        _ = conn => {}
        _ = reset.notified() => {
            // SO_LINGER 0, then close: the peer sees a connection reset.
            let linger = libc::linger { l_onoff: 1, l_linger: 0 };
            unsafe {
                libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_LINGER, &linger as *const _ as *const libc::c_void, std::mem::size_of::<libc::linger>() as libc::socklen_t);
            }
        }
    }
}

type Body = BoxBody<Bytes, std::io::Error>;

fn reply(status: u16, body: Value, retry_after: Option<u64>) -> Response<Body> {
    let mut builder = Response::builder().status(status).header("content-type", "application/json");
    if let Some(s) = retry_after {
        builder = builder.header("retry-after", s.to_string());
    }
    builder.body(Full::new(Bytes::from(body.to_string())).map_err(|never| match never {}).boxed()).unwrap()
}

/// A body that sends its first bytes, then fails: hyper closes the connection mid-body.
struct CutBody(Option<Bytes>);

impl hyper::body::Body for CutBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        std::task::Poll::Ready(Some(match self.0.take() {
            Some(first) => Ok(hyper::body::Frame::data(first)),
            None => Err(std::io::Error::other("answer cut off by the fake")),
        }))
    }
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
    reset: Arc<Notify>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let bytes = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(reply(400, json!({"status": "invalid event", "message": "unreadable body"}), None)),
    };
    let body: Option<Value> = serde_json::from_slice(&bytes).ok();
    let fault = {
        let mut s = state.lock().unwrap();
        s.requests += 1;
        take_fault(&mut s, body.as_ref().and_then(routing_key_of).as_deref())
    };
    changed.notify_waiters();
    match fault {
        Some(Fault::Status(code)) => {
            return Ok(reply(
                code,
                json!({"status": "unavailable", "message": format!("injected {code}"), "errors": ["injected"]}),
                None,
            ))
        }
        Some(Fault::TooMany(after)) => {
            return Ok(reply(
                429,
                json!({"status": "throttle event", "message": "Requests for this service are arriving too quickly."}),
                after,
            ))
        }
        Some(Fault::Hang(d)) => {
            tokio::time::sleep(d).await;
            reset.notify_one();
            std::future::pending::<()>().await;
        }
        Some(Fault::Reset) => {
            reset.notify_one();
            std::future::pending::<()>().await;
        }
        Some(Fault::Slow(d)) => tokio::time::sleep(d).await,
        Some(Fault::CutOff) | None => {}
    }
    let cut_off = matches!(fault, Some(Fault::CutOff));
    if method != hyper::Method::POST {
        return Ok(reply(405, json!({"status": "error", "message": "POST only"}), None));
    }
    if bytes.len() > 512 * 1024 {
        return Ok(reply(
            413,
            json!({"status": "invalid event", "message": "Request too large", "errors": ["body is over 512 KB"]}),
            None,
        ));
    }
    let Some(body) = body else {
        return Ok(reply(
            400,
            json!({"status": "invalid event", "message": "Event object is invalid", "errors": ["Malformed JSON"]}),
            None,
        ));
    };
    let (errors, ok_body, ok_status) = match path.as_str() {
        "/v2/enqueue" => {
            let e = validate_v2(&body);
            let key = body.get("dedup_key").and_then(Value::as_str).unwrap_or("generated-by-fake").to_owned();
            (e, json!({"status": "success", "message": "Event processed", "dedup_key": key}), 202)
        }
        "/v2/change/enqueue" => {
            (validate_change(&body), json!({"status": "success", "message": "Change event processed"}), 202)
        }
        "/generic/2010-04-15/create_event.json" => {
            let e = validate_v1(&body);
            let key = body.get("incident_key").and_then(Value::as_str).unwrap_or("generated-by-fake").to_owned();
            (e, json!({"status": "success", "message": "Event processed", "incident_key": key}), 200)
        }
        _ => return Ok(reply(404, json!({"status": "error", "message": "not found"}), None)),
    };
    let mut s = state.lock().unwrap();
    if !errors.is_empty() {
        s.rejected.push((path, body, errors.clone()));
        return Ok(reply(
            400,
            json!({"status": "invalid event", "message": "Event object is invalid", "errors": errors}),
            None,
        ));
    }
    if s.print {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        println!("{:.6} {path} {body}", now.as_secs_f64());
    }
    s.accepted.push(Received { path, body, at: Instant::now() });
    if cut_off {
        let text = Bytes::from(ok_body.to_string());
        let first = text.slice(..text.len() / 2);
        return Ok(Response::builder()
            .status(ok_status)
            .header("content-type", "application/json")
            .header("content-length", text.len().to_string())
            .body(CutBody(Some(first)).boxed())
            .unwrap());
    }
    Ok(reply(ok_status, ok_body, None))
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn check_key(body: &Value, key: &str, errors: &mut Vec<String>) {
    match str_field(body, key) {
        Some(k) if k.len() == 32 && k.bytes().all(|b| b.is_ascii_alphanumeric()) => {}
        _ => errors.push(format!("'{key}' is invalid")),
    }
}

fn check_len(value: Option<&str>, max: usize, name: &str, errors: &mut Vec<String>) {
    if let Some(v) = value {
        if v.chars().count() > max {
            errors.push(format!("'{name}' is too long (max {max} characters)"));
        }
    }
}

/// Events API v2 alert rules.
pub fn validate_v2(body: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    check_key(body, "routing_key", &mut errors);
    let action = str_field(body, "event_action");
    if !matches!(action, Some("trigger" | "acknowledge" | "resolve")) {
        errors.push("'event_action' is invalid".into());
    }
    check_len(str_field(body, "dedup_key"), 255, "dedup_key", &mut errors);
    if action == Some("trigger") {
        let p = body.get("payload").cloned().unwrap_or(Value::Null);
        match str_field(&p, "summary") {
            Some(s) if !s.is_empty() => check_len(Some(s), 1024, "payload.summary", &mut errors),
            _ => errors.push("'payload.summary' is missing or blank".into()),
        }
        if str_field(&p, "source").is_none_or(str::is_empty) {
            errors.push("'payload.source' is missing or blank".into());
        }
        if !matches!(str_field(&p, "severity"), Some("critical" | "error" | "warning" | "info")) {
            errors.push("'payload.severity' is invalid (must be one of critical, error, warning, info)".into());
        }
    } else if action.is_some() && str_field(body, "dedup_key").is_none_or(str::is_empty) {
        errors.push("'dedup_key' is required for acknowledge and resolve".into());
    }
    errors
}

/// Events API v2 change rules.
pub fn validate_change(body: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    check_key(body, "routing_key", &mut errors);
    let p = body.get("payload").cloned().unwrap_or(Value::Null);
    match str_field(&p, "summary") {
        Some(s) if !s.is_empty() => check_len(Some(s), 1024, "payload.summary", &mut errors),
        _ => errors.push("'payload.summary' is missing or blank".into()),
    }
    errors
}

/// Events API v1 rules.
pub fn validate_v1(body: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    check_key(body, "service_key", &mut errors);
    let t = str_field(body, "event_type");
    if !matches!(t, Some("trigger" | "acknowledge" | "resolve")) {
        errors.push("'event_type' is invalid".into());
    }
    check_len(str_field(body, "incident_key"), 255, "incident_key", &mut errors);
    check_len(str_field(body, "description"), 1024, "description", &mut errors);
    if t == Some("trigger") && str_field(body, "description").is_none_or(str::is_empty) {
        errors.push("'description' is required for trigger".into());
    }
    if matches!(t, Some("acknowledge" | "resolve")) && str_field(body, "incident_key").is_none_or(str::is_empty) {
        errors.push("'incident_key' is required".into());
    }
    errors
}
