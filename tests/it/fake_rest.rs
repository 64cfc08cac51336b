//! A fake of the parts of PagerDuty's REST API that reconciliation reads, on 127.0.0.1:0 (hyper),
//! shaped as PagerDuty documents them: `GET /incidents` with `incident_key`, `date_range`,
//! `limit`/`offset` pagination (`more`), `Authorization: Token token=<key>` (401 otherwise),
//! `ratelimit-limit`/`-remaining`/`-reset` headers on every answer and 429 when throttled. It
//! pages by its own page size (as PagerDuty may cap `limit`), so tests see pagination.
//!
//! Also a fake of Icinga 2's `POST /v1/actions/acknowledge-problem` (basic auth), recording the
//! requests, for ack-back.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use serde_json::{json, Value};

#[derive(Default)]
struct State {
    token: String,
    /// Incidents, each with an `incident_key`, oldest first.
    incidents: Vec<Value>,
    page_size: usize,
    /// The next this many requests get 429.
    throttle: u32,
    /// Requests to /incidents: (query string, Authorization header).
    requests: Vec<(String, String)>,
    throttled: u64,
    /// Icinga 2 acknowledge-problem requests: (Authorization header, body).
    icinga: Vec<(String, Value)>,
}

/// The fake; the server thread runs as long as the test process.
pub struct FakeRest {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

/// The REST API key the fake accepts unless told otherwise (20 characters, as PagerDuty's).
pub const GOOD_KEY: &str = "u+Fake7RestKey_20chr";

impl FakeRest {
    /// Starts on 127.0.0.1 with an ephemeral port; accepts [`GOOD_KEY`], pages by 1.
    pub fn start() -> FakeRest {
        let state = Arc::new(Mutex::new(State { token: GOOD_KEY.to_owned(), page_size: 1, ..State::default() }));
        let (tx, rx) = std::sync::mpsc::channel();
        let s = state.clone();
        std::thread::Builder::new()
            .name("fake-rest-api".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                    tx.send(listener.local_addr().unwrap()).unwrap();
                    loop {
                        let Ok((stream, _)) = listener.accept().await else { continue };
                        let s = s.clone();
                        tokio::spawn(async move {
                            let service = hyper::service::service_fn(move |req| handle(req, s.clone()));
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                .await;
                        });
                    }
                });
            })
            .unwrap();
        FakeRest { addr: rx.recv().unwrap(), state }
    }

    /// Base URL for `pagerduty.rest_api_url` and `ackback.icinga2_url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds an incident for `key`, created at `created_at` (RFC 3339), with `status`; `by` names
    /// the acknowledger (acknowledged) or the resolver (resolved). Returns its id.
    pub fn add_incident(&self, key: &str, created_at: &str, status: &str, by: Option<&str>) -> String {
        let mut s = self.state.lock().unwrap();
        let id = format!("PINC{:03}", s.incidents.len() + 1);
        s.incidents.push(json!({
            "id": id, "type": "incident", "incident_key": key, "created_at": created_at,
            "html_url": format!("https://example.pagerduty.com/incidents/{id}"),
            "status": "triggered", "acknowledgements": [], "last_status_change_at": created_at,
            "last_status_change_by": {"id": "PSVC1", "type": "service_reference", "summary": "web service"},
        }));
        drop(s);
        self.set_status(&id, status, by, "2026-06-01T10:00:00Z");
        id
    }

    /// Changes an incident's status as a user would in PagerDuty.
    pub fn set_status(&self, id: &str, status: &str, by: Option<&str>, at: &str) {
        let mut s = self.state.lock().unwrap();
        let incident = s.incidents.iter_mut().find(|i| i["id"] == id).expect("an incident with that id");
        incident["status"] = json!(status);
        if status == "triggered" {
            incident["acknowledgements"] = json!([]);
            return;
        }
        let user = json!({"id": "PUSR1", "type": "user_reference", "summary": by.unwrap_or("nobody")});
        incident["last_status_change_at"] = json!(at);
        incident["last_status_change_by"] = user.clone();
        if status == "acknowledged" {
            incident["acknowledgements"] = json!([{"at": at, "acknowledger": user}]);
        } else {
            incident["acknowledgements"] = json!([]);
        }
    }

    /// The next `n` requests get 429.
    pub fn throttle_next(&self, n: u32) {
        self.state.lock().unwrap().throttle = n;
    }

    /// Requests to /incidents so far: (query, Authorization).
    pub fn requests(&self) -> Vec<(String, String)> {
        self.state.lock().unwrap().requests.clone()
    }

    /// 429s answered so far.
    pub fn throttled(&self) -> u64 {
        self.state.lock().unwrap().throttled
    }

    /// Icinga 2 acknowledge-problem requests so far: (Authorization, body).
    pub fn icinga_acks(&self) -> Vec<(String, Value)> {
        self.state.lock().unwrap().icinga.clone()
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

fn reply(status: u16, body: Value, remaining: u64) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("ratelimit-limit", "960")
        .header("ratelimit-remaining", remaining.to_string())
        .header("ratelimit-reset", "1")
        .body(Full::new(Bytes::from(body.to_string())).map_err(|never| match never {}).boxed())
        .unwrap()
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    state: Arc<Mutex<State>>,
) -> Result<Response<Body>, std::io::Error> {
    let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let accept = req.headers().get("accept").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let method = req.method().clone();
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let mut s = state.lock().unwrap();
    if path == "/v1/actions/acknowledge-problem" && method == hyper::Method::POST {
        let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        s.icinga.push((auth, value));
        return Ok(reply(
            200,
            json!({"results": [{"code": 200.0, "status": "Successfully acknowledged problem."}]}),
            0,
        ));
    }
    if path != "/incidents" || method != hyper::Method::GET {
        return Ok(reply(404, json!({"error": {"message": "Not Found", "code": 2100}}), 900));
    }
    s.requests.push((query.clone(), auth.clone()));
    if auth != format!("Token token={}", s.token) {
        return Ok(reply(401, json!({"error": {"message": "Authentication failed", "code": 2006}}), 900));
    }
    if s.throttle > 0 {
        s.throttle -= 1;
        s.throttled += 1;
        return Ok(reply(429, json!({"error": {"message": "Rate Limit Exceeded", "code": 2020}}), 0));
    }
    if !accept.contains("application/vnd.pagerduty+json;version=2") {
        return Ok(reply(400, json!({"error": {"message": "Invalid Accept header", "code": 2001}}), 900));
    }
    let pairs: Vec<(String, String)> =
        reqwest::Url::parse(&format!("http://x/?{query}")).unwrap().query_pairs().into_owned().collect();
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let Some(key) = get("incident_key") else {
        return Ok(reply(400, json!({"error": {"message": "test fake: incident_key expected", "code": 2001}}), 900));
    };
    if get("date_range").as_deref() != Some("all") {
        // Without it PagerDuty searches the last month only.
        return Ok(reply(400, json!({"error": {"message": "test fake: date_range=all expected", "code": 2001}}), 900));
    }
    let offset: usize = get("offset").and_then(|v| v.parse().ok()).unwrap_or(0);
    let limit: usize = get("limit").and_then(|v| v.parse().ok()).unwrap_or(25).min(s.page_size);
    let matching: Vec<Value> = s.incidents.iter().filter(|i| i["incident_key"] == key.as_str()).cloned().collect();
    let page: Vec<Value> = matching.iter().skip(offset).take(limit).cloned().collect();
    let more = offset + page.len() < matching.len();
    Ok(reply(200, json!({"incidents": page, "limit": limit, "offset": offset, "more": more, "total": null}), 900))
}
