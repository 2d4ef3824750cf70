//! # sparsewatch: the daemon
//!
//! MQTT sensor streams in, anomaly events out. This crate owns everything that is not signal
//! processing (that is `sparsewatch_dsp`): the command line, configuration, topics and payload
//! formats, the MQTT client, worker threads and channels, and the demo.
//!
//! ## Map
//!
//! - [`config`]: the TOML file + environment overrides on the compiled-in default; strict
//!   (unknown keys are errors) and checked up front ([`config::ValidSettings`]).
//! - [`wire`]: topic templates → sensor keys, payload decoding → [`wire::Reading`], and the
//!   JSON that sparsewatch publishes ([`wire::AnomalyMessage`], [`wire::StatusMessage`]).
//! - [`mqtt`]: connection options with the Last Will, TLS and credentials
//!   ([`mqtt::security`]), the ingest task that polls rumqttc's event loop, and the publisher
//!   task.
//! - [`outbox`]: events kept until the broker acknowledges them, optionally in a spool file.
//! - [`worker`]: DSP worker threads behind bounded crossbeam channels; each sensor key belongs
//!   to one worker, which owns its `dsp::Pipeline`.
//! - [`service`]: [`service::run`], the daemon's lifetime, with the shutdown future as a
//!   parameter, and the ordered clean stop.
//! - [`metrics`]: the counters, stage latency histograms, health state and queue probes, their
//!   Prometheus exposition, and the periodic one-line summary; rate-limited warnings.
//! - [`http`]: the health and metrics endpoint (`/metrics`, `/healthz`, `/readyz`).
//! - [`metrics`]: the counters and the periodic one-line summary; rate-limited warnings;
//!   the readiness flag and checkpoint age ([`metrics::Readiness`]).
//! - [`checkpoint`]: the learned state of every stream on disk (versioned, checksummed,
//!   written atomically, one generation kept back) and `sparsewatch inspect`.
//! - [`systemd`]: `sd_notify` (READY, STOPPING, RELOADING, WATCHDOG) without libsystemd.
//! - [`reload`]: what a SIGHUP reload changes live and what waits for a restart.
//! - [`fixtures`]: recorded traffic (JSONL of MQTT messages) and its labels.
//! - [`eval`]: `sparsewatch eval`, the pipeline replayed over labelled benchmarks (NAB, SKAB)
//!   and scored: NAB's scorer and SKAB's row metrics.
//! - [`replay`]: `sparsewatch replay`, recordings (JSONL, CSV) through the pipeline offline
//!   (what the daemon would publish, as JSONL) or onto a broker at a chosen speed.
//! - [`plot`]: figures of a replayed stream (signal, score, likelihood, labels, detections).
//! - `demo` (cargo feature `demo`, on by default): embedded broker + daemon + replayed
//!   fixture + printing subscriber.
//!
//! See ARCHITECTURE.md at the repository root for threads, channels and their capacities.

pub mod checkpoint;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod eval;
pub mod fixtures;
pub mod http;
pub mod metrics;
pub mod mqtt;
pub mod outbox;
pub mod plot;
pub mod reload;
pub mod replay;
pub mod service;
pub mod systemd;
pub mod wire;
pub mod worker;
