//! `run`: the daemon's lifetime, from restoring its learned state to a clean stop.
//!
//! Start: lock the state directory (if one is configured; another daemon holding it fails the
//! start), bind the HTTP health and metrics port when `[http]` is enabled (a taken port fails
//! the start), restore the last good checkpoint, open the
//! outbox, spawn the DSP workers with the restored streams, report ready (systemd `READY=1`),
//! then spawn the publisher task, the ingest task (which connects, then subscribes; the
//! publisher publishes the retained "online" status on every connection), the summary task,
//! the periodic checkpoint task, the watchdog task (under systemd), the reload task (SIGHUP)
//! and the HTTP task. Stop, when `shutdown` resolves: `STOPPING=1`, stop handing readings to
//! the workers, let them drain their queues (acknowledging each message), write the final
//! checkpoint, publish the events they produced, publish the retained "offline" status, then
//! disconnect cleanly, in that order, so nothing accepted is lost on a stop.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use rumqttc::{AsyncClient, QoS};
use tokio::sync::{mpsc, Notify};

use crate::checkpoint::store::LockError;
use crate::checkpoint::{self, Fault, Generation, Meta, Store, StreamRecord};
use crate::config::{self, Source, ValidSettings};
use crate::http;
use crate::metrics::{now_ms, Metrics, QueueKind, Snapshot};
use crate::mqtt::{self, Acker, Ingest, Link};
use crate::outbox::Outbox;
use crate::reload;
use crate::systemd::{self, Notifier};
use crate::wire::StatusMessage;
use crate::worker::{CodeSink, Controls, WorkerContext, Workers};

/// How long a stop waits for the broker to take the last messages before giving up.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long a checkpoint waits for the workers' snapshots.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(30);

/// What the process gives the service besides its settings: where the configuration came
/// from (for reloads), the reload requests (SIGHUP), the service manager, and the state
/// directory systemd assigned. The default is none of these (tests, the demo).
#[derive(Default)]
pub struct Lifecycle {
    /// Each message asks for the configuration to be read again from `config_file`.
    pub reload: Option<mpsc::Receiver<()>>,
    /// The configuration file (`None`: the compiled-in default plus the environment).
    pub config_file: Option<PathBuf>,
    /// systemd's notification socket (`READY=1`, `WATCHDOG=1`, …).
    pub notifier: Option<Arc<Notifier>>,
    /// `$STATE_DIRECTORY`, used when `state.dir` is empty.
    pub state_directory: Option<PathBuf>,
    /// Injected checkpoint write fault (tests; see [`checkpoint::store::FAULT_ENV`]).
    pub checkpoint_fault: Option<Fault>,
}

impl Lifecycle {
    /// The lifecycle of the `sparsewatch run` process: systemd from the environment.
    pub fn from_env(config_file: Option<PathBuf>, reload: mpsc::Receiver<()>) -> Self {
        Self {
            reload: Some(reload),
            config_file,
            notifier: Some(Arc::new(Notifier::from_env())),
            state_directory: std::env::var_os("STATE_DIRECTORY")
                .map(|v| v.to_string_lossy().split(':').next().unwrap_or("").into())
                .filter(|p: &PathBuf| !p.as_os_str().is_empty()),
            checkpoint_fault: Fault::from_env(),
        }
    }
}

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
    run_service(settings, metrics, shutdown, Lifecycle::default()).await
}

/// As [`run_with_metrics`], with checkpoints, systemd notifications and reloads as the
/// lifecycle provides.
pub async fn run_service(
    settings: ValidSettings,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
    mut life: Lifecycle,
) -> anyhow::Result<Snapshot> {
    let s = &settings.settings;
    let started_at_ms = now_ms();
    let notifier = life
        .notifier
        .take()
        .unwrap_or_else(|| Arc::new(Notifier::disabled()));
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

    // The state directory first: a second daemon on it must fail with that reason, not with
    // whatever else the two share (the same http.listen would fail the bind below).
    let store = open_store(&settings, &life)?;
    let http = start_http(&settings, &metrics).await?;
    // Not ready (`/readyz`) until the learned state is back in the workers.
    metrics
        .health
        .state_restored
        .store(false, Ordering::Relaxed);
    let restored = match &store {
        Some(store) => {
            let store = store.clone();
            let (settings, metrics) = (settings.clone(), metrics.clone());
            tokio::task::spawn_blocking(move || {
                restore(&store.lock().expect("store lock"), &settings, &metrics)
            })
            .await
            .context("restoring the checkpoint")?
        }
        None => Vec::new(),
    };
    let restored_count = restored.len();

    // Capacity: events are rare (one per incident or silence); this absorbs a burst across
    // many keys while the publisher writes the spool file. Full → dropped and counted. The
    // outbox behind it holds events while the broker is away.
    let (events_tx, events_rx) = mpsc::channel(s.output.queue_capacity);
    register_output_probe(&metrics, "events", &events_tx);
    let (outbox, spooled_events) = Outbox::open(&s.output.buffer).with_context(|| {
        format!(
            "cannot open the outbox spool file {:?} (output.buffer.file)",
            s.output.buffer.file
        )
    })?;
    if outbox.start_compaction_failed() {
        Metrics::inc(&metrics.spool_failures);
    }
    if spooled_events > 0 {
        tracing::info!(
            events = spooled_events,
            "undelivered events of a previous run restored from the spool file"
        );
    }
    let (client, mut eventloop) = AsyncClient::new(
        mqtt::options(&settings, started_at_ms),
        s.mqtt.request_queue,
    );
    eventloop.set_network_options(mqtt::network_options());
    let acker = Acker::new(client.clone(), metrics.clone());
    // Codes have their own queue so a flood of them can never push an anomaly event out of
    // the output queue (they do share the MQTT client's request queue; codes are only queued
    // there with try_publish while connected, and are the first thing dropped). The queue
    // exists even while codes are off, so a reload can turn them on.
    let (codes_tx, codes_rx) = mpsc::channel(s.output.codes.queue_capacity);
    register_output_probe(&metrics, "codes", &codes_tx);
    let ctx = WorkerContext {
        node: s.node.id.clone(),
        pipeline: settings.pipeline.clone(),
        max_streams: s.workers.max_streams,
        metrics: metrics.clone(),
        events: events_tx,
        codes: Some(CodeSink {
            tx: codes_tx,
            every: s.output.codes.every,
            enabled: s.output.codes.enabled,
        }),
        stream_count: Arc::new(AtomicUsize::new(0)),
        acker: mqtt::manual_acks(&settings).then(|| acker.clone()),
        no_data_after: (s.streams.no_data_after_secs > 0)
            .then(|| Duration::from_secs(s.streams.no_data_after_secs)),
    };
    let workers = Workers::spawn_restored(s.workers.count, s.workers.queue_capacity, ctx, restored)
        .context("cannot start the DSP worker threads")?;
    let controls = workers.controls();
    metrics.health.state_restored.store(true, Ordering::Relaxed);
    notifier.ready(&format!("running; {restored_count} streams restored"));

    // The health state's flag, so /readyz and /metrics see what the ingest task sees.
    let connected = metrics.health.broker_connected.clone();
    let link = Arc::new(Link::default());
    let publisher = tokio::spawn(mqtt::publish_outbound(
        settings.clone(),
        client.clone(),
        events_rx,
        Some(codes_rx),
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
        template: RwLock::new(settings.template.clone()),
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
    let periodic = match (&store, s.state.checkpoint_interval_secs) {
        (Some(store), secs) if secs > 0 => Some(tokio::spawn(periodic_checkpoints(
            store.clone(),
            controls.clone(),
            settings.clone(),
            metrics.clone(),
            Duration::from_secs(secs),
        ))),
        _ => None,
    };
    let stopping = Arc::new(AtomicBool::new(false));
    let watchdog = (notifier.is_enabled())
        .then(systemd::watchdog_timeout)
        .flatten()
        .map(|timeout| {
            tokio::spawn(feed_watchdog(
                notifier.clone(),
                controls.clone(),
                stopping.clone(),
                timeout,
            ))
        });
    let reloader = life.reload.take().map(|rx| {
        tokio::spawn(reload_loop(
            rx,
            life.config_file.clone(),
            store.is_some(),
            settings.clone(),
            ingest.clone(),
            controls.clone(),
            notifier.clone(),
            metrics.clone(),
        ))
    });

    shutdown.await;
    metrics.health.stopping.store(true, Ordering::Relaxed);
    stopping.store(true, Ordering::Relaxed);
    notifier.stopping();
    tracing::info!("stopping: draining workers");
    for task in [periodic, reloader].into_iter().flatten() {
        task.abort();
    }
    let workers = ingest.workers.lock().expect("workers lock").take();
    if let Some(w) = workers {
        let records = tokio::task::spawn_blocking(move || w.join())
            .await
            .context("joining the DSP workers")?;
        if let Some(store) = &store {
            let (store, settings, metrics) = (store.clone(), settings.clone(), metrics.clone());
            tokio::task::spawn_blocking(move || {
                write_checkpoint(&store, &settings, &metrics, records, "final")
            })
            .await
            .context("writing the final checkpoint")?;
        }
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
    for task in [summary, watchdog].into_iter().flatten() {
        task.abort();
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

/// The state directory in force: `state.dir`, else `$STATE_DIRECTORY`, else none.
pub fn state_dir(settings: &ValidSettings, state_directory: Option<&PathBuf>) -> Option<PathBuf> {
    let dir = &settings.settings.state.dir;
    if dir.is_empty() {
        state_directory.cloned()
    } else {
        Some(PathBuf::from(dir))
    }
}

/// Opens and locks the state directory. Another daemon holding it fails the start; a
/// directory that cannot be created, or locked for another reason, is logged and the
/// daemon goes on (without learned state, respectively unguarded, as before the lock).
fn open_store(
    settings: &ValidSettings,
    life: &Lifecycle,
) -> anyhow::Result<Option<Arc<Mutex<Store>>>> {
    let Some(dir) = state_dir(settings, life.state_directory.as_ref()) else {
        const WHY: &str = "no state directory (state.dir is empty and $STATE_DIRECTORY is unset): learned state is not kept across restarts";
        // A warning for `sparsewatch run` (it takes reloads); the demo and tests embed the
        // service without a state directory on purpose.
        if life.reload.is_some() {
            tracing::warn!("{WHY}");
        } else {
            tracing::info!("{WHY}");
        }
        return Ok(None);
    };
    let mut store = match Store::open(&dir) {
        Ok(store) => store.with_fault(life.checkpoint_fault.clone()),
        Err(e) => {
            tracing::error!(dir = %dir.display(), error = %e, "cannot use the state directory: learned state is not kept across restarts");
            return Ok(None);
        }
    };
    match store.lock_exclusive() {
        Ok(()) => {}
        Err(e @ LockError::InUse { .. }) => return Err(e.into()),
        // Checkpoints will most likely fail too and say so; restoring may still work.
        Err(e) => {
            tracing::error!(error = %e, "a second sparsewatch on this state directory would not be detected")
        }
    }
    Ok(Some(Arc::new(Mutex::new(store))))
}

/// Loads the newest usable checkpoint, reports everything that was wrong with the others,
/// and returns the streams that fit the configured model.
fn restore(store: &Store, settings: &ValidSettings, metrics: &Metrics) -> Vec<StreamRecord> {
    let t0 = std::time::Instant::now();
    let outcome = store.load();
    if outcome.removed_unfinished {
        tracing::warn!(dir = %store.dir().display(), "removed an unfinished checkpoint write (the daemon stopped during a checkpoint)");
    }
    for (path, e) in &outcome.rejected {
        Metrics::inc(&metrics.checkpoint_rejected);
        tracing::error!(file = %path.display(), error = %e, "checkpoint rejected (kept aside as {}{})", path.display(), checkpoint::store::REJECTED_SUFFIX);
    }
    let Some(loaded) = outcome.loaded else {
        if outcome.rejected.is_empty() {
            tracing::info!(dir = %store.dir().display(), "no checkpoint yet; starting with no learned state");
        } else {
            tracing::error!(dir = %store.dir().display(), "no usable checkpoint: starting with no learned state");
        }
        return Vec::new();
    };
    let c = loaded.checkpoint;
    if loaded.generation == Generation::Previous {
        tracing::warn!(
            file = %store.path(Generation::Previous.file_name()).display(),
            "restoring the previous checkpoint generation"
        );
    }
    metrics
        .health
        .last_checkpoint_unix_ms
        .store(c.meta.created_ms, Ordering::Relaxed);
    let total = c.streams.len();
    let mut kept = Vec::with_capacity(total);
    for st in c.streams {
        let key = st.record.key.clone();
        match checkpoint::reconcile(st.record, &settings.pipeline) {
            Ok(r) => kept.push(r),
            Err(reason) => {
                Metrics::inc(&metrics.checkpoint_rejected);
                tracing::error!(key = %key, reason, "restored stream discarded: it starts learning again");
            }
        }
    }
    let discarded = total - kept.len();
    if discarded > 0 {
        match store.keep_discarded(loaded.generation, c.meta.created_ms) {
            Ok(path) => tracing::warn!(
                file = %path.display(),
                streams = discarded,
                "the checkpoint with the discarded streams is kept aside: to get them back, stop the daemon, restore the configuration they were learned with and move this file to {}",
                store.path(checkpoint::store::CURRENT).display()
            ),
            Err(e) => tracing::error!(
                error = %e,
                "could not keep the checkpoint with the discarded streams aside: the next checkpoint replaces it"
            ),
        }
    }
    metrics
        .restored_streams
        .store(kept.len() as u64, Ordering::Relaxed);
    tracing::info!(
        file = %store.path(loaded.generation.file_name()).display(),
        streams = kept.len(),
        discarded,
        bytes = c.file_bytes,
        age_s = (now_ms() - c.meta.created_ms) / 1000,
        written_by = %c.meta.daemon_version,
        ms = t0.elapsed().as_millis() as u64,
        "checkpoint restored"
    );
    kept
}

/// Encodes and saves one checkpoint; failures are logged and counted, never fatal.
fn write_checkpoint(
    store: &Mutex<Store>,
    settings: &ValidSettings,
    metrics: &Metrics,
    records: Vec<Vec<u8>>,
    what: &str,
) {
    let t0 = std::time::Instant::now();
    let meta = Meta {
        created_ms: now_ms(),
        node: settings.settings.node.id.clone(),
        daemon_version: env!("CARGO_PKG_VERSION").to_string(),
        streams: records.len() as u64,
    };
    let file = checkpoint::FileParts::new(&meta, &records);
    let bytes = file.len();
    let store = store.lock().expect("store lock");
    match store.save_parts(file.parts()) {
        Ok(()) => {
            Metrics::inc(&metrics.checkpoints_written);
            metrics
                .health
                .last_checkpoint_unix_ms
                .store(meta.created_ms, Ordering::Relaxed);
            tracing::info!(
                streams = meta.streams,
                bytes,
                ms = t0.elapsed().as_millis() as u64,
                "{what} checkpoint written"
            );
        }
        Err(e) => {
            Metrics::inc(&metrics.checkpoint_failures);
            tracing::error!(dir = %store.dir().display(), error = %e, bytes, "{what} checkpoint failed; the previous checkpoint is kept");
        }
    }
}

async fn periodic_checkpoints(
    store: Arc<Mutex<Store>>,
    controls: Controls,
    settings: ValidSettings,
    metrics: Arc<Metrics>,
    every: Duration,
) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (store, controls, settings, metrics) = (
            store.clone(),
            controls.clone(),
            settings.clone(),
            metrics.clone(),
        );
        let done = tokio::task::spawn_blocking(move || match controls.snapshot(SNAPSHOT_TIMEOUT) {
            Ok(records) => write_checkpoint(&store, &settings, &metrics, records, "periodic"),
            Err(e) => {
                Metrics::inc(&metrics.checkpoint_failures);
                tracing::error!(error = %e, "periodic checkpoint skipped");
            }
        })
        .await;
        if done.is_err() {
            return;
        }
    }
}

/// Sends `WATCHDOG=1` every quarter of the timeout while every worker beat within half of
/// it (at least 1 s); a stalled (or dead) worker stops the feed and systemd restarts the service. While
/// stopping, the workers are gone and the feed continues (the stop is bounded by timeouts).
async fn feed_watchdog(
    notifier: Arc<Notifier>,
    controls: Controls,
    stopping: Arc<AtomicBool>,
    timeout: Duration,
) {
    let every = (timeout / 4).max(Duration::from_millis(50));
    // Idle workers beat every 250 ms; a second without a beat is a stall whatever the timeout.
    let stall = (timeout / 2).max(Duration::from_secs(1));
    let mut stalled = false;
    tracing::info!(
        timeout_ms = timeout.as_millis() as u64,
        "feeding the systemd watchdog"
    );
    loop {
        let age = controls.oldest_beat_age();
        if stopping.load(Ordering::Relaxed) || age < stall {
            notifier.watchdog();
            if stalled {
                tracing::info!("DSP workers beat again; feeding the watchdog");
            }
            stalled = false;
        } else if !stalled {
            stalled = true;
            tracing::error!(
                stalled_ms = age.as_millis() as u64,
                "a DSP worker stopped beating; not feeding the systemd watchdog"
            );
        }
        tokio::time::sleep(every).await;
    }
}

/// Reloads the configuration on every request: rejects a bad one (keeping the running one),
/// applies the live keys, and names the keys that wait for a restart.
#[allow(clippy::too_many_arguments)]
async fn reload_loop(
    mut requests: mpsc::Receiver<()>,
    config_file: Option<PathBuf>,
    keeps_state: bool,
    mut running: ValidSettings,
    ingest: Arc<Ingest>,
    controls: Controls,
    notifier: Arc<Notifier>,
    metrics: Arc<Metrics>,
) {
    while requests.recv().await.is_some() {
        notifier.reloading();
        let source = config_file.as_deref().map_or(Source::Default, Source::File);
        match config::load(source) {
            Err(e) => {
                Metrics::inc(&metrics.reload_failures);
                tracing::error!(error = %e, "reload rejected; the running configuration is kept");
            }
            Ok(new) => {
                let plan = reload::plan(&running, &new);
                let next = reload::merge_live(&running, &new);
                match controls.reload(&reload::worker_settings(&next)) {
                    Ok(()) => {
                        *ingest.template.write().expect("template lock") = next.template.clone();
                        running = next;
                        Metrics::inc(&metrics.reloads);
                        // Keys the learned state cannot take get their own warning: the
                        // restart that applies them, maybe weeks later, discards every stream.
                        // Without a state directory nothing is kept across a restart anyway.
                        let (discarding, restart): (Vec<_>, Vec<_>) = plan
                            .restart
                            .iter()
                            .partition(|k| keeps_state && plan.discards_state.contains(k));
                        if !discarding.is_empty() {
                            tracing::warn!(keys = ?discarding, "changed, applied at the next restart, which will discard the learned state of every stream: the streams were learned with the running values of these keys, so at the next start each one is discarded and learns again from nothing (the checkpoint is kept aside as checkpoint.<ms>.discarded.swst); set these keys back before the next restart to keep what was learned");
                        }
                        if !restart.is_empty() {
                            tracing::warn!(keys = ?restart, "changed, applied at the next restart");
                        }
                        tracing::info!(applied = ?plan.live, "configuration reloaded");
                    }
                    Err(e) => {
                        Metrics::inc(&metrics.reload_failures);
                        tracing::error!(error = %e, "reload failed; the running configuration is kept");
                    }
                }
            }
        }
        notifier.ready("running");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    fn count_watchdogs(sock: &UnixDatagram) -> usize {
        let mut buf = [0u8; 64];
        let mut n = 0;
        while let Ok(len) = sock.recv(&mut buf) {
            if &buf[..len] == b"WATCHDOG=1" {
                n += 1;
            }
        }
        n
    }

    /// `WATCHDOG=1` goes out while both workers beat, stops once one of them stalls (it
    /// would be restarted by systemd), and resumes while stopping (workers are gone then).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_watchdog_is_fed_only_while_every_worker_beats() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_nonblocking(true).unwrap();
        let notifier = Arc::new(Notifier::for_socket(path.to_str().unwrap()).unwrap());
        let health = crate::metrics::Health::default();
        let hb = [health.register_worker("0"), health.register_worker("1")];
        let both = Arc::new(AtomicBool::new(true));
        let beater = {
            let (hb, both) = (hb.clone(), both.clone());
            std::thread::spawn(move || {
                for _ in 0..300 {
                    hb[0].beat();
                    if both.load(Ordering::Relaxed) {
                        hb[1].beat();
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        let stopping = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(feed_watchdog(
            notifier,
            Controls::watching(hb.to_vec()),
            stopping.clone(),
            Duration::from_millis(400),
        ));
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(count_watchdogs(&sock) >= 1, "fed while both beat");
        both.store(false, Ordering::Relaxed);
        // The stall threshold is 1 s; after 2 s without worker 1 the feed has stopped.
        tokio::time::sleep(Duration::from_secs(2)).await;
        count_watchdogs(&sock);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(count_watchdogs(&sock), 0, "not fed while a worker stalls");
        stopping.store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(count_watchdogs(&sock) >= 1, "fed again while stopping");
        task.abort();
        beater.join().unwrap();
    }

    #[test]
    fn the_state_directory_is_the_configured_one_else_systemds() {
        let v = config::load_with_env(Source::Default, Vec::new()).unwrap();
        let sd = PathBuf::from("/var/lib/sparsewatch");
        assert_eq!(state_dir(&v, None), None);
        assert_eq!(state_dir(&v, Some(&sd)), Some(sd.clone()));
        let v = config::load_with_env(Source::Text("[state]\ndir = \"/srv/sw\"\n"), Vec::new())
            .unwrap();
        assert_eq!(state_dir(&v, Some(&sd)), Some(PathBuf::from("/srv/sw")));
    }
}
