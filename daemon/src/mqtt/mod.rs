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

use crate::config::ValidSettings;
use crate::metrics::{now_ms, LogLimiter, Metrics};
use crate::wire::{decode_payload, Reading, StatusMessage};
use crate::worker::{Outbound, Workers};

/// Room above `max_payload_bytes` for the topic and header, so a payload that is merely too
/// large for us is refused and counted instead of making rumqttc drop the connection.
const PACKET_OVERHEAD: usize = 64 * 1024;

pub fn status_topic(v: &ValidSettings) -> String {
    format!("{}/status", v.topic_root())
}

pub fn anomaly_topic(v: &ValidSettings, key: &str) -> String {
    format!("{}/anomaly/{key}", v.topic_root())
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

    fn on_connect(&self, client: &AsyncClient) {
        let s = &self.settings.settings;
        let filters = s
            .mqtt
            .subscribe
            .iter()
            .map(|f| rumqttc::SubscribeFilter::new(f.clone(), qos(s.mqtt.qos)));
        if let Err(e) = client.try_subscribe_many(filters) {
            tracing::error!(error = %e, "could not queue the subscription");
        }
        let online = StatusMessage::new(&s.node.id, true, self.started_at_ms).to_json();
        if let Err(e) =
            client.try_publish(status_topic(&self.settings), QoS::AtLeastOnce, true, online)
        {
            tracing::error!(error = %e, "could not queue the online status");
        }
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
        let max = self.settings.settings.mqtt.max_payload_bytes;
        let (ts_ms, channels) = match decode_payload(payload, now, max) {
            Ok(v) => v,
            Err(e) => {
                Metrics::inc(&m.payload_errors);
                if let Some(held) = PAYLOAD_LOG.allow(now) {
                    tracing::warn!(topic, error = %e, suppressed = held, "bad payload; skipped");
                }
                return;
            }
        };
        let guard = self.workers.lock().expect("workers lock");
        if let Some(workers) = guard.as_ref() {
            workers.dispatch(Reading {
                key,
                ts_ms,
                channels,
            });
        }
    }
}

/// Publishes what the workers send until every sender is gone.
pub async fn publish_outbound(
    settings: ValidSettings,
    client: AsyncClient,
    mut rx: mpsc::Receiver<Outbound>,
    metrics: Arc<Metrics>,
) {
    while let Some(out) = rx.recv().await {
        match out {
            Outbound::Anomaly(msg) => {
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
        }
    }
}
