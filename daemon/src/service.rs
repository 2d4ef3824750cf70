//! `run`: the daemon's lifetime, from connecting to a clean stop.
//!
//! Start: spawn the DSP workers, the publisher task, the ingest task (which connects, then
//! subscribes and publishes the retained "online" status on every connection) and the summary
//! task, and the HTTP health and metrics task when `[http]` is enabled (its port is bound first,
//! so a taken port fails the start). Stop, when `shutdown` resolves: stop handing readings to the workers, let them drain
//! their queues, publish the anomaly events they produced, publish the retained "offline"
//! status, then disconnect cleanly, in that order, so nothing accepted is lost on a stop.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rumqttc::{AsyncClient, QoS};
use tokio::sync::{mpsc, Notify};

use crate::config::ValidSettings;
use crate::http;
use crate::metrics::{now_ms, Metrics, QueueKind, Snapshot};
use crate::mqtt::{self, Acker, Ingest, Link};
use crate::outbox::Outbox;
use crate::wire::StatusMessage;
use crate::worker::{CodeSink, WorkerContext, Workers};

/// How long a stop waits for the broker to take the last messages before giving up.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Runs the daemon until `shutdown` resolves; returns the final counters.
pub async fn run(
    settings: ValidSettings,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<Snapshot> {
    run_with_metrics(settings, Arc::new(Metrics::default()), shutdown).await
}

/// As [`run`], with counters the caller can watch while it runs (the demo does).
pub async fn run_with_metrics(
    settings: ValidSettings,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<Snapshot> {
    let s = &settings.settings;
    let started_at_ms = now_ms();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        node = %s.node.id,
        broker = %format!("{}:{}", s.mqtt.host, s.mqtt.port),
        subscribe = ?s.mqtt.subscribe,
        tls = settings.mqtt_security.tls(),
        username = settings.mqtt_security.username().unwrap_or(""),
        detector = s.pipeline.detector.name(),
        workers = s.workers.count,
        "sparsewatch starting"
    );

    let http = start_http(&settings, &metrics).await?;
    // Capacity: events are rare (one per incident or silence); this absorbs a burst across
    // many keys while the publisher writes the spool file. Full → dropped and counted. The
    // outbox behind it holds events while the broker is away.
    let (events_tx, events_rx) = mpsc::channel(s.output.queue_capacity);
    register_output_probe(&metrics, "events", &events_tx);
    let (outbox, restored) = Outbox::open(&s.output.buffer).with_context(|| {
        format!(
            "cannot open the outbox spool file {:?} (output.buffer.file)",
            s.output.buffer.file
        )
    })?;
    if restored > 0 {
        tracing::info!(
            events = restored,
            "undelivered events of a previous run restored from the spool file"
        );
    }
    let (client, eventloop) = AsyncClient::new(
        mqtt::options(&settings, started_at_ms),
        s.mqtt.request_queue,
    );
    let acker = Acker::new(client.clone(), metrics.clone());
    // Codes have their own queue so a flood of them can never push an anomaly event out of
    // the output queue (they do share the MQTT client's request queue; codes are only queued
    // there with try_publish while connected, and are the first thing dropped).
    let (codes_tx, codes_rx) = if s.output.codes.enabled {
        let (tx, rx) = mpsc::channel(s.output.codes.queue_capacity);
        register_output_probe(&metrics, "codes", &tx);
        (
            Some(CodeSink {
                tx,
                every: s.output.codes.every,
            }),
            Some(rx),
        )
    } else {
        (None, None)
    };
    let ctx = WorkerContext {
        node: s.node.id.clone(),
        pipeline: settings.pipeline.clone(),
        max_streams: s.workers.max_streams,
        metrics: metrics.clone(),
        events: events_tx,
        codes: codes_tx,
        stream_count: Arc::new(AtomicUsize::new(0)),
        acker: mqtt::manual_acks(&settings).then(|| acker.clone()),
        no_data_after: (s.streams.no_data_after_secs > 0)
            .then(|| Duration::from_secs(s.streams.no_data_after_secs)),
    };
    let workers = Workers::spawn(s.workers.count, s.workers.queue_capacity, ctx)
        .context("cannot start the DSP worker threads")?;

    // The health state's flag, so /readyz and /metrics see what the ingest task sees.
    let connected = metrics.health.broker_connected.clone();
    let link = Arc::new(Link::default());
    let publisher = tokio::spawn(mqtt::publish_outbound(
        settings.clone(),
        client.clone(),
        events_rx,
        codes_rx,
        connected.clone(),
        link.clone(),
        outbox,
        metrics.clone(),
        started_at_ms,
        STOP_GRACE - Duration::from_millis(500),
    ));
    let ingest = Arc::new(Ingest {
        settings: settings.clone(),
        metrics: metrics.clone(),
        workers: Mutex::new(Some(workers)),
        stopping: AtomicBool::new(false),
        connected,
        wake: Notify::new(),
        started_at_ms,
        acker,
        link,
    });
    let ingest_task = tokio::spawn(ingest.clone().drive(client.clone(), eventloop));
    let summary = (s.log.summary_interval_secs > 0).then(|| {
        let every = Duration::from_secs(s.log.summary_interval_secs);
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tick.tick().await;
                metrics.snapshot().log("summary");
            }
        })
    });

    shutdown.await;
    metrics.health.stopping.store(true, Ordering::Relaxed);
    tracing::info!("stopping: draining workers");
    let workers = ingest.workers.lock().expect("workers lock").take();
    if let Some(w) = workers {
        tokio::task::spawn_blocking(move || w.join())
            .await
            .context("joining the DSP workers")?;
    }
    if tokio::time::timeout(STOP_GRACE, publisher).await.is_err() {
        tracing::warn!("pending events could not be handed to the broker in time");
    }
    let offline = StatusMessage::new(&s.node.id, false, started_at_ms).to_json();
    let _ = client.try_publish(
        mqtt::status_topic(&settings),
        QoS::AtLeastOnce,
        true,
        offline,
    );
    // The ingest task disconnects once the workers' acknowledgements are out.
    ingest.request_stop();
    if tokio::time::timeout(STOP_GRACE, ingest_task).await.is_err() {
        tracing::warn!("the broker did not take the disconnect in time");
    }
    if let Some(t) = summary {
        t.abort();
    }
    if let Some(t) = http {
        t.abort();
    }
    let last = metrics.snapshot();
    last.log("final summary");
    Ok(last)
}

/// Binds `http.listen` and spawns the endpoint's task; `None` when `[http]` is disabled.
async fn start_http(
    settings: &ValidSettings,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let h = &settings.settings.http;
    if !h.enabled {
        return Ok(None);
    }
    let listener = http::bind(settings.http_listen)
        .await
        .with_context(|| format!("cannot listen on http.listen = {}", settings.http_listen))?;
    let addr = listener.local_addr().context("http listener address")?;
    tracing::info!(%addr, "http endpoint listening (/metrics, /healthz, /readyz)");
    let state = Arc::new(http::HttpState {
        metrics: metrics.clone(),
        worker_stall: Duration::from_secs(h.worker_stall_secs),
        input_stall: (h.input_stall_secs > 0).then(|| Duration::from_secs(h.input_stall_secs)),
    });
    Ok(Some(tokio::spawn(http::serve(listener, state))))
}

/// Lets `/metrics` read the depth of an output queue through a weak sender (which does not
/// keep the queue open at shutdown).
fn register_output_probe<T: Send + 'static>(metrics: &Metrics, label: &str, tx: &mpsc::Sender<T>) {
    let weak = tx.downgrade();
    let capacity = tx.max_capacity();
    metrics
        .queues
        .register(QueueKind::Output, label, capacity, move || {
            weak.upgrade().map(|tx| capacity - tx.capacity())
        });
}
