//! The daemon: opens the queue, starts the intake channels and delivery, and owns shutdown.
//!
//! Start order: store (takes sled's lock: a second daemon on the same state dir stops here),
//! HTTP listener bind (when `[http] listen` is set), socket bind, then spool, socket, HTTP and
//! delivery tasks. Stop order: intake first (no new events), then delivery (in-flight requests get
//! `shutdown_timeout`), then the committer's last flush.

use std::future::Future;
use std::sync::Arc;

use tracing::{error, info};

use crate::admin;
use crate::config::Config;
use crate::delivery::client::EventsClient;
use crate::delivery::dispatcher::{self, DeliverySettings};
use crate::intake::http::{self, HttpSettings};
use crate::intake::{socket, spool};
use crate::ops::shutdown::Shutdown;
use crate::queue::error::StoreError;
use crate::queue::store::Store;

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The queue could not be opened or read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The socket could not be bound.
    #[error("socket {path}: {source}")]
    Socket {
        /// Socket path.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The HTTP client could not be built (proxy, CA bundle, TLS set-up).
    #[error(transparent)]
    Client(#[from] crate::delivery::client::ClientError),
    /// The local Events API listener could not start.
    #[error(transparent)]
    Http(#[from] http::HttpError),
}

/// Runs the daemon until `stop` completes. `reloadable` holds the settings a reload may change (the
/// caller owns SIGHUP and swaps them). `ready` is called once the store is open and the
/// socket listens. With `watchdog` (systemd's WatchdogSec), `alive` is called at half that
/// period, but only while the committer answers a probe and the dispatcher loop keeps turning.
pub async fn run(
    config: Config,
    reloadable: crate::ops::reload::ReloadableSettings,
    stop: impl Future<Output = ()>,
    ready: impl FnOnce(),
    watchdog: Option<std::time::Duration>,
    alive: impl Fn() + Send + 'static,
) -> Result<(), DaemonError> {
    let queue_path = config.queue_path();
    let store = tokio::task::spawn_blocking(move || Store::open(&queue_path))
        .await
        .map_err(|e| StoreError::Io(e.to_string()))??;
    store.set_repeat_trigger_window(config.file.mapping.drop_repeated_triggers);
    store.set_limits(crate::queue::shared::Limits {
        max_pending: config.file.queue.max_pending,
        min_free_bytes: config.file.queue.min_free_bytes,
    });
    let result = serve(&config, reloadable, store.clone(), stop, ready, watchdog, alive).await;
    tokio::task::spawn_blocking(move || store.close()).await.ok();
    info!("stopped");
    result
}

async fn serve(
    config: &Config,
    reloadable: crate::ops::reload::ReloadableSettings,
    store: Store,
    stop: impl Future<Output = ()>,
    ready: impl FnOnce(),
    watchdog: Option<std::time::Duration>,
    alive: impl Fn() + Send + 'static,
) -> Result<(), DaemonError> {
    let file = &config.file;
    let client = EventsClient::with_network(
        &config.events_url,
        file.pagerduty.connect_timeout,
        file.pagerduty.request_timeout,
        &config.network(),
    )?;
    // Bound before the socket, so that once the socket answers, state_dir/http.addr is current.
    let http_listener = match HttpSettings::from_config(config, &reloadable) {
        Some(settings) => Some((http::bind(&settings).await?, settings)),
        None => {
            let _ = std::fs::remove_file(file.state_dir.join(http::ADDR_FILE));
            None
        }
    };
    let listener = socket::bind(&file.ingest.socket, config.socket_mode, config.socket_gid)
        .map_err(|source| DaemonError::Socket { path: file.ingest.socket.clone(), source })?;
    let admin_listener = socket::bind(&file.ingest.admin_socket, 0o600, None)
        .map_err(|source| DaemonError::Socket { path: file.ingest.admin_socket.clone(), source })?;
    let (trigger, shutdown) = Shutdown::new();
    let metrics = crate::ops::metrics::Metrics::new();
    store.set_metrics(metrics.clone());
    let watch = Arc::new(crate::rules::heartbeat::Watch::new(config.expected_senders.clone(), crate::clock::now_ms()));
    // Before any intake starts: every accepted event is routed.
    store.set_policy(crate::queue::policy::Policy {
        router: config.router.clone(),
        resolve_hold_ms: file.flap_damping.resolve_hold.as_millis() as u64,
        silences: crate::rules::silence::Silences { stored: Vec::new(), windows: config.windows.clone() },
        watch: watch.clone(),
    })?;
    let mut metric_tasks = Vec::new();
    if !file.metrics.listen.is_empty() {
        let addr = file.metrics.listen.clone();
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|source| DaemonError::Socket { path: addr.clone().into(), source })?;
        metric_tasks.push(tokio::spawn(crate::ops::exposition::serve(
            listener,
            metrics.clone(),
            store.clone(),
            shutdown.clone(),
        )));
    }
    if !file.metrics.textfile.as_os_str().is_empty() {
        metric_tasks.push(tokio::spawn(crate::ops::exposition::write_textfile(
            file.metrics.textfile.clone(),
            file.metrics.textfile_interval,
            metrics.clone(),
            store.clone(),
            shutdown.clone(),
        )));
    }

    let spool_task = tokio::spawn(spool::run(
        spool::SpoolSettings {
            dirs: file.ingest.spool_dirs.clone(),
            rescan_interval: file.ingest.rescan_interval,
            max_file_bytes: file.ingest.max_file_bytes,
            max_line_bytes: file.ingest.max_line_bytes,
            reloadable: reloadable.clone(),
        },
        store.clone(),
        shutdown.clone(),
    ));
    let socket_settings = socket::SocketSettings {
        path: file.ingest.socket.clone(),
        mode: config.socket_mode,
        gid: config.socket_gid,
        max_line_bytes: file.ingest.max_line_bytes,
        max_connections: file.ingest.max_connections,
        idle_timeout: file.ingest.idle_timeout,
        line_timeout: file.ingest.line_timeout,
        reloadable: reloadable.clone(),
    };
    let socket_task = tokio::spawn(socket::run(listener, socket_settings, store.clone(), shutdown.clone()));
    let http_task = http_listener
        .map(|(listener, settings)| tokio::spawn(http::run(listener, settings, store.clone(), shutdown.clone())));
    let admin_task = tokio::spawn(admin::server::serve(
        admin_listener,
        file.ingest.admin_socket.clone(),
        store.clone(),
        shutdown.clone(),
    ));
    let retention_task =
        tokio::spawn(admin::retention::run_retention(store.clone(), file.retention.clone(), shutdown.clone()));
    let reconcile_task = start_reconciliation(config, &store, &shutdown);
    let failing: Arc<std::sync::atomic::AtomicBool> = Default::default();
    let heartbeat_task = tokio::spawn(crate::delivery::heartbeat::run(
        store.clone(),
        crate::delivery::heartbeat::HeartbeatSettings {
            url: Some(file.heartbeat.url.clone()).filter(|u| !u.is_empty()),
            interval: file.heartbeat.interval,
            check_interval: file.heartbeat.check_interval,
            client: client.clone(),
            failing: failing.clone(),
            watch: watch.clone(),
            metrics: Some(metrics.clone()),
        },
        shutdown.clone(),
    ));
    let settings = DeliverySettings {
        client,
        reloadable: reloadable.clone(),
        concurrency: file.pagerduty.concurrency,
        window: file.queue.dispatch_window,
        shutdown_timeout: file.shutdown_timeout,
        failing: failing.clone(),
        heartbeat_probe: Default::default(),
        heartbeat_ms: Default::default(),
        metrics: Some(metrics.clone()),
        outage_after: file.delivery.outage_after,
        probe_interval: file.delivery.probe_interval,
        rate_limits: crate::config::delivery::RateLimits::from_section(&file.delivery),
        drop_stale_pairs: file.delivery.drop_stale_pairs,
    };
    store.set_rate_limits(settings.rate_limits.clone());
    let heartbeat = (settings.heartbeat_probe.clone(), settings.heartbeat_ms.clone());
    let mut delivery_shutdown = shutdown.clone();
    let delivery =
        tokio::spawn(dispatcher::run(store.clone(), settings, async move { delivery_shutdown.wait().await }));
    info!(state_dir = %file.state_dir.display(), events_url = %config.events_url, "pdrelay daemon ready");
    ready();
    if let Some(period) = watchdog {
        tokio::spawn(run_watchdog(store.clone(), heartbeat, period, alive, shutdown.clone()));
    }

    tokio::pin!(stop);
    let mut delivery = delivery;
    let delivery_result = tokio::select! {
        _ = &mut stop => None,
        result = &mut delivery => Some(result),
    };
    info!("stopping");
    let _ = trigger.send(true);
    let _ = spool_task.await;
    let _ = socket_task.await;
    if let Some(http_task) = http_task {
        let _ = http_task.await;
    }
    let _ = admin_task.await;
    let _ = retention_task.await;
    if let Some(task) = reconcile_task {
        let _ = task.await;
    }
    let _ = heartbeat_task.await;
    for task in metric_tasks {
        let _ = task.await;
    }
    let delivery_result = match delivery_result {
        Some(r) => r,
        None => delivery.await,
    };
    match delivery_result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            error!(error = %e, "delivery stopped on a queue error");
            Err(e.into())
        }
        Err(e) => Err(StoreError::Io(format!("delivery task: {e}")).into()),
    }
}

/// Starts reconciliation (and ack-back) when a REST API key is set. A key or ack-back setting
/// that cannot be read is one error in the log; delivery goes on without reconciliation.
fn start_reconciliation(config: &Config, store: &Store, shutdown: &Shutdown) -> Option<tokio::task::JoinHandle<()>> {
    let client = match crate::sync::reconcile::client(config) {
        Ok(Some(c)) => c,
        Ok(None) => return None,
        Err(e) => {
            error!(error = %e, "reconciliation is off");
            return None;
        }
    };
    let ackback = match crate::sync::ackback::AckBack::from_config(&config.file.ackback) {
        Ok(a) => a,
        Err(e) => {
            error!(error = %e, "ack-back is off");
            None
        }
    };
    let interval = config.file.pagerduty.reconcile_interval;
    info!(interval = ?interval, ackback = ackback.is_some(), "reconciliation with PagerDuty's REST API on");
    Some(tokio::spawn(crate::sync::reconcile::run(store.clone(), client, ackback, interval, shutdown.clone())))
}

/// Pings systemd's watchdog at half its period, only while the committer answers a probe within
/// that period and the dispatcher loop turned within it: a stuck loop stops the pings, and
/// systemd restarts the service. The dispatcher is probed (`heartbeat.0`, notified each tick; it
/// stamps `heartbeat.1`, ms since the epoch, as its loop turns) rather than woken by a timer of
/// its own, so an idle daemon wakes only for these ticks.
async fn run_watchdog(
    store: Store,
    heartbeat: (std::sync::Arc<tokio::sync::Notify>, std::sync::Arc<std::sync::atomic::AtomicU64>),
    period: std::time::Duration,
    alive: impl Fn(),
    mut shutdown: Shutdown,
) {
    let mut tick = tokio::time::interval(period / 2);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tick.tick() => {}
        }
        heartbeat.0.notify_one();
        let committer_ok = matches!(tokio::time::timeout(period / 2, store.ping()).await, Ok(Ok(())));
        // The stamp of the loop's turn for this probe, or for an earlier one: a loop stuck for a
        // whole period leaves it older than that.
        let last = heartbeat.1.load(std::sync::atomic::Ordering::Relaxed);
        let dispatcher_ok = crate::clock::now_ms().saturating_sub(last) < period.as_millis() as u64;
        if committer_ok && dispatcher_ok {
            alive();
        } else {
            tracing::warn!(committer_ok, dispatcher_ok, "a loop is not making progress; not pinging the watchdog");
        }
    }
}
