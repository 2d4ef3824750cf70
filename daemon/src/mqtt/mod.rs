//! The MQTT side: connection options (with the Last Will), the ingest task that polls the
//! rumqttc event loop and hands readings to the workers, and the publisher task.
//!
//! The ingest task is the only place that polls the event loop; it never awaits anything but
//! `poll` and the reconnect backoff, and it never blocks (dispatch is a `try_send`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::{mpsc, Notify};

use crate::config::{CodeFormat, ValidSettings};
use crate::metrics::{now_ms, LogLimiter, Metrics};
use crate::wire::{decode_payload, AnomalyMessage, CodeMessage, Reading, StatusMessage};
use crate::worker::Workers;

/// Room above `max_payload_bytes` for the topic and header, so a payload that is merely too
/// large for us is refused and counted instead of making rumqttc drop the connection.
const PACKET_OVERHEAD: usize = 64 * 1024;

pub fn status_topic(v: &ValidSettings) -> String {
    format!("{}/status", v.topic_root())
}

pub fn anomaly_topic(v: &ValidSettings, key: &str) -> String {
    format!("{}/anomaly/{key}", v.topic_root())
}

pub fn code_topic(v: &ValidSettings, key: &str) -> String {
    format!("{}/code/{key}", v.topic_root())
}

fn qos(q: u8) -> QoS {
    if q == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

/// Client options: keep-alive, packet limits, and a retained "offline" Last Will on the
/// status topic so subscribers learn when the daemon vanishes without a clean stop.
pub fn options(v: &ValidSettings, started_at_ms: i64) -> MqttOptions {
    let s = &v.settings;
    let mut o = MqttOptions::new(v.client_id(), s.mqtt.host.clone(), s.mqtt.port);
    o.set_keep_alive(Duration::from_secs(s.mqtt.keep_alive_secs));
    o.set_clean_session(true);
    let max_packet = s.mqtt.max_payload_bytes + PACKET_OVERHEAD;
    o.set_max_packet_size(max_packet, max_packet);
    let offline = StatusMessage::new(&s.node.id, false, started_at_ms).to_json();
    o.set_last_will(LastWill::new(
        status_topic(v),
        offline,
        QoS::AtLeastOnce,
        true,
    ));
    o
}

/// State shared between the ingest task and `run`.
pub struct Ingest {
    pub settings: ValidSettings,
    pub metrics: Arc<Metrics>,
    /// Taken (set to `None`) by `run` at shutdown: dropping it closes the worker queues.
    pub workers: Mutex<Option<Workers>>,
    /// Set once `run` has asked the client to disconnect.
    pub stopping: AtomicBool,
    /// True between a ConnAck and the next connection error; codes are not queued while
    /// false, so an outage cannot fill the client's request queue with them.
    pub connected: Arc<AtomicBool>,
    pub wake: Notify,
    pub started_at_ms: i64,
}

static TOPIC_LOG: LogLimiter = LogLimiter::new(10_000);
static PAYLOAD_LOG: LogLimiter = LogLimiter::new(10_000);

impl Ingest {
    /// Polls the event loop until the clean disconnect has gone out (or, once stopping, the
    /// connection fails). Reconnects with capped exponential backoff and resubscribes on
    /// every new connection (clean sessions do not keep subscriptions).
    pub async fn drive(self: Arc<Self>, client: AsyncClient, mut eventloop: EventLoop) {
        let mqtt = &self.settings.settings.mqtt;
        let mut backoff = Duration::from_millis(mqtt.reconnect_min_ms);
        let max_backoff = Duration::from_millis(mqtt.reconnect_max_ms);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff = Duration::from_millis(mqtt.reconnect_min_ms);
                    Metrics::inc(&self.metrics.connections);
                    self.connected.store(true, Ordering::Relaxed);
                    tracing::info!(host = %mqtt.host, port = mqtt.port, "connected to broker");
                    self.on_connect(&client);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => self.on_publish(&p.topic, &p.payload),
                Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                    tracing::debug!("disconnect sent");
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    self.connected.store(false, Ordering::Relaxed);
                    if self.stopping.load(Ordering::Relaxed) {
                        break;
                    }
                    Metrics::inc(&self.metrics.connection_errors);
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "broker connection failed");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.wake.notified() => {}
                    }
                    if self.stopping.load(Ordering::Relaxed) {
                        break;
                    }
                    backoff = (backoff * 2).min(max_backoff);
                }
            }
        }
    }

    /// Subscribes and publishes the retained "online" status on a new connection. Both are
    /// awaited in a task of their own: the request queue may still be full of what piled up
    /// during an outage, and only this loop's polling drains it, so awaiting here would
    /// deadlock and `try_` calls could silently leave the daemon connected but deaf.
    fn on_connect(&self, client: &AsyncClient) {
        let s = &self.settings.settings;
        let filters: Vec<_> = s
            .mqtt
            .subscribe
            .iter()
            .map(|f| rumqttc::SubscribeFilter::new(f.clone(), qos(s.mqtt.qos)))
            .collect();
        let online = StatusMessage::new(&s.node.id, true, self.started_at_ms).to_json();
        let topic = status_topic(&self.settings);
        let client = client.clone();
        tokio::spawn(async move {
            if let Err(e) = client.subscribe_many(filters).await {
                tracing::error!(error = %e, "could not subscribe");
            }
            if let Err(e) = client.publish(topic, QoS::AtLeastOnce, true, online).await {
                tracing::error!(error = %e, "could not publish the online status");
            }
        });
    }

    fn on_publish(&self, topic: &str, payload: &[u8]) {
        let m = &self.metrics;
        Metrics::inc(&m.messages);
        let now = now_ms();
        let Some(key) = self.settings.template.key(topic) else {
            Metrics::inc(&m.unknown_topics);
            if let Some(held) = TOPIC_LOG.allow(now) {
                tracing::warn!(topic, template = %self.settings.settings.topics.template, suppressed = held, "topic does not match the template; skipped");
            }
            return;
        };
        let (ts_ms, channels) = match decode_payload(payload, now, &self.settings.payload_limits())
        {
            Ok(v) => v,
            Err(e) => {
                m.count_payload_error(&e);
                if let Some(held) = PAYLOAD_LOG.allow(now) {
                    tracing::warn!(topic, error = %e, suppressed = held, "bad payload; skipped");
                }
                return;
            }
        };
        let guard = self.workers.lock().expect("workers lock");
        match guard.as_ref() {
            Some(workers) => workers.dispatch(Reading {
                key,
                ts_ms,
                channels,
            }),
            // Stopping: the workers are draining and take nothing new.
            None => Metrics::inc(&m.dropped_samples),
        }
    }
}

/// Publishes what the workers send until every sender is gone: anomaly events first (QoS 1,
/// awaited), codes when no event is waiting (QoS 0, `try_publish`, rate-limited, shed first).
pub async fn publish_outbound(
    settings: ValidSettings,
    client: AsyncClient,
    mut anomalies: mpsc::Receiver<AnomalyMessage>,
    mut codes: Option<mpsc::Receiver<CodeMessage>>,
    connected: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
) {
    let code_settings = &settings.settings.output.codes;
    let mut bucket = TokenBucket::new(code_settings.max_per_sec);
    loop {
        tokio::select! {
            biased;
            msg = anomalies.recv() => {
                let Some(msg) = msg else { break };
                let topic = anomaly_topic(&settings, &msg.key);
                let body = serde_json::to_vec(&msg).expect("anomaly message serialises");
                match client.publish(topic, QoS::AtLeastOnce, false, body).await {
                    Ok(()) => Metrics::inc(&metrics.events_published),
                    Err(e) => {
                        Metrics::inc(&metrics.dropped_events);
                        tracing::error!(error = %e, key = %msg.key, "could not publish anomaly event");
                    }
                }
            }
            code = recv_code(&mut codes) => {
                let Some(code) = code else {
                    codes = None;
                    continue;
                };
                if !connected.load(Ordering::Relaxed) || !bucket.take(std::time::Instant::now()) {
                    Metrics::inc(&metrics.dropped_codes);
                    continue;
                }
                try_publish_code(&client, &settings, &code, &metrics);
            }
        }
    }
    // The workers are gone; publish the codes they left behind (bounded by the queue).
    if let Some(rx) = codes.as_mut() {
        while let Ok(code) = rx.try_recv() {
            try_publish_code(&client, &settings, &code, &metrics);
        }
    }
}

/// Queues one code at QoS 0 without waiting; counts it as published or dropped.
fn try_publish_code(
    client: &AsyncClient,
    settings: &ValidSettings,
    code: &CodeMessage,
    metrics: &Metrics,
) {
    let body = encode_code(code, settings.settings.output.codes.format);
    match client.try_publish(
        code_topic(settings, &code.key),
        QoS::AtMostOnce,
        false,
        body,
    ) {
        Ok(()) => Metrics::inc(&metrics.codes_published),
        Err(_) => Metrics::inc(&metrics.dropped_codes),
    }
}

async fn recv_code(codes: &mut Option<mpsc::Receiver<CodeMessage>>) -> Option<CodeMessage> {
    match codes {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// JSON or CBOR bytes of a code message.
pub fn encode_code(code: &CodeMessage, format: CodeFormat) -> Vec<u8> {
    match format {
        CodeFormat::Json => serde_json::to_vec(code).expect("code message serialises"),
        CodeFormat::Cbor => {
            let mut out = Vec::with_capacity(256);
            ciborium::into_writer(code, &mut out).expect("code message serialises");
            out
        }
    }
}

/// At most `rate` takes per second, with a burst of one second's worth. 0 = unlimited.
struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Option<std::time::Instant>,
}

impl TokenBucket {
    fn new(rate: u32) -> Self {
        Self {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            last: None,
        }
    }

    fn take(&mut self, now: std::time::Instant) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        if let Some(last) = self.last {
            let refill = now.duration_since(last).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + refill).min(self.rate);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn token_bucket_limits_the_rate_and_refills() {
        let mut b = TokenBucket::new(10);
        let t0 = Instant::now();
        let first: usize = (0..20).filter(|_| b.take(t0)).count();
        assert_eq!(first, 10, "a burst of one second's worth");
        assert!(!b.take(t0));
        assert!(
            b.take(t0 + Duration::from_millis(150)),
            "refilled after 0.1 s"
        );
        let mut unlimited = TokenBucket::new(0);
        assert!((0..10_000).all(|_| unlimited.take(t0)));
    }

    #[test]
    fn codes_encode_as_json_and_cbor_with_the_same_fields() {
        let code = CodeMessage {
            schema: 1,
            node: "n".into(),
            key: "a/b".into(),
            window: 3,
            window_start_ms: 10,
            window_end_ms: 41,
            atoms: vec![4, 1],
            coefficients: vec![2.5, -1.0],
            residual: 0.1,
            energy: 7.25,
            dictionary_version: 9,
            score: 0.2,
            likelihood: None,
        };
        let json: CodeMessage =
            serde_json::from_slice(&encode_code(&code, CodeFormat::Json)).unwrap();
        assert_eq!(json, code);
        let cbor: CodeMessage =
            ciborium::from_reader(&encode_code(&code, CodeFormat::Cbor)[..]).unwrap();
        assert_eq!(cbor, code);
    }
}
