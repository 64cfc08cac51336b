//! The local Events API's requests: which path is which endpoint, reading a bounded body,
//! checking it is an event of the endpoint's kind, storing it, and PagerDuty's answers (the
//! table in `intake::http`). One request at a time; the connections are the listener's.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::event::{Event, EventKind, IntakeDefaults, MAX_REQUEST_BYTES};
use crate::queue::error::StoreError;
use crate::queue::request::NewEvent;
use crate::queue::store::Store;

/// Past the body limit, how long and how many bytes the rest of the body is read and discarded,
/// so that the client sees the 413 instead of a reset connection.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: u64 = 16 * 1024 * 1024;

/// `Retry-After` seconds with a 503 for a full queue, and for other storage errors.
const RETRY_AFTER_FULL: u64 = 30;
const RETRY_AFTER_UNAVAILABLE: u64 = 5;

/// What every connection shares.
pub(super) struct Context {
    pub(super) store: Store,
    pub(super) reloadable: crate::ops::reload::ReloadableSettings,
    pub(super) request_timeout: Duration,
}

/// The endpoint a path names.
enum Route {
    /// An event endpoint; for the integration URLs, the routing key the path carries.
    Events(EventKind, Option<PathKey>),
    Health,
}

/// The routing key in an integration URL's path, and which URL it was.
struct PathKey {
    key: String,
    /// `/x-ere/<key>` (PagerDuty's event-rules URL) rather than `/integration/<key>/enqueue`.
    ere: bool,
}

/// The single path segment after `prefix` (and before `suffix`), if the path is that shape.
fn key_segment<'a>(path: &'a str, prefix: &str, suffix: &str) -> Option<&'a str> {
    path.strip_prefix(prefix)?.strip_suffix(suffix).filter(|k| !k.is_empty() && !k.contains('/'))
}

fn route(path: &str) -> Option<Route> {
    match path {
        "/v2/enqueue" => Some(Route::Events(EventKind::Alert, None)),
        "/v2/change/enqueue" => Some(Route::Events(EventKind::Change, None)),
        "/generic/2010-04-15/create_event.json" => Some(Route::Events(EventKind::V1, None)),
        "/health" => Some(Route::Health),
        _ => {
            let keyed = |key: &str, ere| Route::Events(EventKind::Alert, Some(PathKey { key: key.to_owned(), ere }));
            if let Some(key) = key_segment(path, "/integration/", "/enqueue") {
                Some(keyed(key, false))
            } else {
                key_segment(path, "/x-ere/", "").map(|key| keyed(key, true))
            }
        }
    }
}

pub(super) async fn handle(request: Request<Incoming>, ctx: &Context) -> Response<Full<Bytes>> {
    match (route(request.uri().path()), request.method()) {
        (Some(Route::Events(kind, key)), &Method::POST) => enqueue(request, kind, key, ctx).await,
        (Some(Route::Health), &Method::GET | &Method::HEAD) => health(ctx),
        (Some(route), _) => {
            let allow = if matches!(route, Route::Health) { "GET, HEAD" } else { "POST" };
            let mut response = reply(
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"status": "error", "message": format!("method not allowed; use {allow}")}),
            );
            response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
            response
        }
        (None, _) => reply(
            StatusCode::NOT_FOUND,
            json!({"status": "error", "message": "not found: POST /v2/enqueue, /v2/change/enqueue, \
                   /generic/2010-04-15/create_event.json, /integration/<key>/enqueue or /x-ere/<key>; GET /health"}),
        ),
    }
}

/// A JSON response.
fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A response after which the connection is closed (the request was not read whole).
fn closing(mut response: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// PagerDuty's 400 for an event it would refuse.
fn invalid(errors: Vec<String>) -> Response<Full<Bytes>> {
    reply(
        StatusCode::BAD_REQUEST,
        json!({"status": "invalid event", "message": "Event object is invalid", "errors": errors}),
    )
}

fn too_large() -> Response<Full<Bytes>> {
    closing(reply(
        StatusCode::PAYLOAD_TOO_LARGE,
        json!({"status": "invalid event", "message": "Request too large",
               "errors": [format!("event: request body must be at most 512 KB ({MAX_REQUEST_BYTES} bytes)")]}),
    ))
}

fn unavailable(message: String, retry_after: u64) -> Response<Full<Bytes>> {
    let mut response = reply(StatusCode::SERVICE_UNAVAILABLE, json!({"status": "unavailable", "message": message}));
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    response
}

/// How reading a body ended.
enum Body {
    Whole(Vec<u8>),
    TooLarge,
    TimedOut,
    Broken(String),
}

/// Reads the body, at most [`MAX_REQUEST_BYTES`], within `timeout`. Past the limit, the rest is
/// read and discarded for a moment (see [`LINGER`]) unless the client waits for `100-continue`.
async fn read_body(request: Request<Incoming>, timeout: Duration) -> Body {
    let limit = MAX_REQUEST_BYTES as u64;
    let declared =
        request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let expects_continue =
        request.headers().get(header::EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if declared.is_some_and(|n| n > limit) && (expects_continue || declared.is_some_and(|n| n > LINGER_BYTES)) {
        // Never polling the body keeps hyper from sending 100 Continue: nothing more is sent.
        return Body::TooLarge;
    }
    let mut body = request.into_body();
    let mut deadline = Instant::now() + timeout;
    let mut data = Vec::new();
    let mut total = 0u64;
    let mut over = false;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) if over => return Body::TooLarge,
            Err(_) => return Body::TimedOut,
            Ok(None) => break,
            Ok(Some(Err(e))) if over => {
                debug!(error = %e, "http body ended while discarding");
                return Body::TooLarge;
            }
            Ok(Some(Err(e))) => return Body::Broken(e.to_string()),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(chunk) = frame.into_data() else { continue };
        total += chunk.len() as u64;
        if over {
            if total > LINGER_BYTES {
                return Body::TooLarge;
            }
        } else if total > limit {
            over = true;
            data = Vec::new();
            deadline = deadline.min(Instant::now() + LINGER);
        } else {
            data.extend_from_slice(&chunk);
        }
    }
    if over {
        Body::TooLarge
    } else {
        Body::Whole(data)
    }
}

/// Why an event of kind `got` is refused at the endpoint of kind `want`, as `field: rule`.
fn wrong_endpoint(want: EventKind, got: EventKind) -> String {
    let (field, rule) = match (want, got) {
        (EventKind::Alert, EventKind::V1) => (
            "event",
            "is an Events API v1 event (event_type, service_key or incident_key); /v2/enqueue takes v2 alert \
             events (routing_key, event_action, dedup_key); post v1 events to /generic/2010-04-15/create_event.json",
        ),
        (EventKind::Alert, _) => {
            ("event_action", "is required: trigger, acknowledge or resolve (post change events to /v2/change/enqueue)")
        }
        (EventKind::Change, EventKind::Alert) => {
            ("event_action", "must not be present in a change event (post alert events to /v2/enqueue)")
        }
        (EventKind::Change, _) => (
            "event",
            "is an Events API v1 event (event_type, service_key or incident_key); /v2/change/enqueue takes v2 \
             change events (routing_key, payload); post v1 events to /generic/2010-04-15/create_event.json",
        ),
        (EventKind::V1, _) => (
            "event_type",
            "is required: trigger, acknowledge or resolve (post v2 events to /v2/enqueue or /v2/change/enqueue)",
        ),
    };
    format!("{field}: {rule}")
}

/// Validates an event posted to the endpoint of `kind`: a JSON object of that kind that
/// PagerDuty would accept, normalized as every intake does.
pub fn parse_for(body: &[u8], kind: EventKind, defaults: &IntakeDefaults) -> Result<Event, String> {
    parse_keyed(body, kind, None, defaults)
}

/// [`parse_for`] for an integration URL (`/integration/<key>/enqueue`, `/x-ere/<key>`): the
/// path's key is the routing key (an event that names another one is refused), and `/x-ere/`
/// takes only Events API v2 alert events: pdrelay cannot run PagerDuty's event rules on other
/// JSON.
fn parse_keyed(
    body: &[u8],
    kind: EventKind,
    path_key: Option<&PathKey>,
    defaults: &IntakeDefaults,
) -> Result<Event, String> {
    let mut value: Value = serde_json::from_slice(body).map_err(|e| format!("event: is not valid JSON ({e})"))?;
    if let Some(PathKey { key, ere }) = path_key {
        if *ere && crate::event::shape_of(&value).ok().flatten() != Some(EventKind::Alert) {
            return Err("event: /x-ere/<key> takes Events API v2 alert events here (routing_key, event_action, \
                        payload): pdrelay cannot apply PagerDuty's event rules to other JSON"
                .to_owned());
        }
        if let Some(object) = value.as_object_mut() {
            match object.get("routing_key") {
                None | Some(Value::Null) => {
                    object.insert("routing_key".to_owned(), Value::String(key.clone()));
                }
                Some(Value::String(given)) if given == key || given.is_empty() => {
                    object.insert("routing_key".to_owned(), Value::String(key.clone()));
                }
                Some(_) => return Err("routing_key: must be the integration key in the URL, or left out".to_owned()),
            }
        }
    }
    if let Some(shape) = crate::event::shape_of(&value).map_err(|e| e.to_string())? {
        if shape != kind {
            return Err(wrong_endpoint(kind, shape));
        }
    }
    let event = Event::from_value(value, defaults).map_err(|e| e.to_string())?;
    if event.kind() != kind {
        return Err(wrong_endpoint(kind, event.kind()));
    }
    Ok(event)
}

async fn enqueue(
    request: Request<Incoming>,
    kind: EventKind,
    path_key: Option<PathKey>,
    ctx: &Context,
) -> Response<Full<Bytes>> {
    let body = match read_body(request, ctx.request_timeout).await {
        Body::Whole(body) => body,
        Body::TooLarge => return too_large(),
        Body::TimedOut => {
            return closing(reply(
                StatusCode::REQUEST_TIMEOUT,
                json!({"status": "timeout", "message": format!("request body not received within {:?}", ctx.request_timeout)}),
            ))
        }
        Body::Broken(e) => {
            return closing(reply(
                StatusCode::BAD_REQUEST,
                json!({"status": "invalid event", "message": "unreadable request body", "errors": [e]}),
            ))
        }
    };
    let event = match parse_keyed(&body, kind, path_key.as_ref(), &ctx.reloadable.get().defaults) {
        Ok(event) => event,
        Err(error) => {
            debug!(endpoint = kind.endpoint_path(), %error, "http event refused");
            return invalid(vec![error]);
        }
    };
    let accepted = ctx.store.insert(vec![NewEvent { id: None, intake: "http", event }]).await;
    let accepted = match accepted.map(|mut a| a.pop()) {
        Ok(Some(a)) => a,
        Ok(None) => return unavailable("queue returned no acceptance".to_owned(), RETRY_AFTER_UNAVAILABLE),
        Err(e @ StoreError::Full(_)) => return unavailable(e.to_string(), RETRY_AFTER_FULL),
        Err(e) => {
            warn!(error = %e, "http event could not be stored");
            return unavailable(e.to_string(), RETRY_AFTER_UNAVAILABLE);
        }
    };
    debug!(id = %accepted.id, endpoint = kind.endpoint_path(), "http event stored");
    let dedup_key = accepted.dedup_key.unwrap_or_default();
    let mut response = match kind {
        EventKind::Alert => reply(
            StatusCode::ACCEPTED,
            json!({"status": "success", "message": "Event processed", "dedup_key": dedup_key}),
        ),
        EventKind::Change => {
            reply(StatusCode::ACCEPTED, json!({"status": "success", "message": "Change event processed"}))
        }
        EventKind::V1 => {
            reply(StatusCode::OK, json!({"status": "success", "message": "Event processed", "incident_key": dedup_key}))
        }
    };
    if let Ok(id) = HeaderValue::from_str(&accepted.id) {
        response.headers_mut().insert("pdrelay-event-id", id);
    }
    response
}

/// `GET /health`: 200 with the queue depth and the last delivery and error while the queue can be
/// read; 503 otherwise.
fn health(ctx: &Context) -> Response<Full<Bytes>> {
    let stamp = |s: Option<(u64, String)>, what: &str| match s {
        Some((at, text)) => json!({"at": crate::clock::rfc3339(at), what: text}),
        None => Value::Null,
    };
    match ctx.store.last_events() {
        Ok((success, error)) => {
            let failing = match (&success, &error) {
                (Some((ok_at, _)), Some((err_at, _))) => err_at > ok_at,
                (None, Some(_)) => true,
                _ => false,
            };
            reply(
                StatusCode::OK,
                json!({
                    "status": "ok",
                    "pending": ctx.store.pending_count(),
                    "delivery_failing": failing,
                    "last_success": stamp(success, "id"),
                    "last_error": stamp(error, "error"),
                }),
            )
        }
        Err(e) => reply(StatusCode::SERVICE_UNAVAILABLE, json!({"status": "error", "message": e.to_string()})),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_must_match_its_endpoint() {
        let d = IntakeDefaults::default();
        let rk = "R0UT1NGKEY0000000000000000000000";
        let alert = json!({"routing_key": rk, "event_action": "trigger", "payload": {"summary": "s", "source": "h", "severity": "info"}}).to_string();
        let change = json!({"routing_key": rk, "payload": {"summary": "deployed", "source": "ci"}}).to_string();
        let v1 = json!({"service_key": rk, "event_type": "trigger", "description": "d"}).to_string();
        assert_eq!(parse_for(alert.as_bytes(), EventKind::Alert, &d).unwrap().kind(), EventKind::Alert);
        assert_eq!(parse_for(change.as_bytes(), EventKind::Change, &d).unwrap().kind(), EventKind::Change);
        assert_eq!(parse_for(v1.as_bytes(), EventKind::V1, &d).unwrap().kind(), EventKind::V1);
        for (body, kind, field) in [
            (&alert, EventKind::Change, "event_action: "),
            (&alert, EventKind::V1, "event_type: "),
            (&change, EventKind::Alert, "event_action: "),
            (&change, EventKind::V1, "event_type: "),
            (&v1, EventKind::Alert, "event: "),
            (&v1, EventKind::Change, "event: "),
        ] {
            let err = parse_for(body.as_bytes(), kind, &d).unwrap_err();
            assert!(err.starts_with(field), "{kind:?}: {err}");
        }
        assert!(parse_for(b"{nope", EventKind::Alert, &d).unwrap_err().starts_with("event: is not valid JSON"));
    }
}
