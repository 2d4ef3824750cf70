//! A synchronous MQTT test client: rumqttc's `Client`, its event loop on a background thread.
//!
//! Calls that talk to the broker wait for the broker's answer (CONNACK, SUBACK), so a test
//! that subscribes and then triggers the daemon cannot miss the first message. Received
//! PUBLISH packets queue up in a channel; [`TestClient::recv_matching`] and friends take from
//! it with a deadline.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rumqttc::{Client, Event, MqttOptions, Outgoing, Packet, QoS};

use crate::TIMEOUT;

/// A message the client received.
#[derive(Clone, Debug)]
pub struct Message {
    /// Topic it was published on.
    pub topic: String,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// Whether the broker delivered it as a retained message.
    pub retain: bool,
}

impl Message {
    /// The payload as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }

    /// The payload parsed as JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.payload)
            .with_context(|| format!("payload on {} is not JSON: {}", self.topic, self.text()))
    }
}

/// What the event-loop thread reports besides messages.
enum Control {
    ConnAck,
    SubAck,
    Error(String),
}

/// A connected MQTT 3.1.1 client (a clean session unless made with
/// [`TestClient::connect_persistent`]), disconnected on drop.
pub struct TestClient {
    client: Client,
    messages: Receiver<Message>,
    control: Receiver<Control>,
    pubacks: Arc<AtomicUsize>,
    published: usize,
}

impl TestClient {
    /// Connects to the broker on 127.0.0.1:`port` as client `id` and waits for the CONNACK.
    pub fn connect(port: u16, id: &str) -> Result<Self> {
        Self::connect_with(port, id, true)
    }

    /// As [`connect`](Self::connect), with a persistent session (clean session off): the
    /// broker keeps this client's subscriptions and queues QoS 1 messages for it while it is
    /// away, and delivers them when a client with the same `id` connects again (with a
    /// broker that persists its state, also across a broker restart). A test subscriber uses
    /// this to receive what was published while the broker was restarting and it was not
    /// connected yet.
    pub fn connect_persistent(port: u16, id: &str) -> Result<Self> {
        Self::connect_with(port, id, false)
    }

    fn connect_with(port: u16, id: &str, clean_session: bool) -> Result<Self> {
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(1 << 20, 1 << 20)
            .set_clean_session(clean_session);
        let (client, mut connection) = Client::new(options, 1024);
        let (msg_tx, messages) = mpsc::channel();
        let (ctl_tx, control) = mpsc::channel();
        let pubacks = Arc::new(AtomicUsize::new(0));
        let acks = Arc::clone(&pubacks);
        std::thread::spawn(move || {
            for event in connection.iter() {
                let sent = match event {
                    Ok(Event::Incoming(Packet::Publish(p))) => msg_tx
                        .send(Message {
                            topic: p.topic,
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                        })
                        .is_ok(),
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        ctl_tx.send(Control::ConnAck).is_ok()
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => ctl_tx.send(Control::SubAck).is_ok(),
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        acks.fetch_add(1, Ordering::SeqCst);
                        true
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => false,
                    Ok(_) => true,
                    Err(e) => {
                        // No reconnects: a test client that lost its broker has failed.
                        let _ = ctl_tx.send(Control::Error(e.to_string()));
                        false
                    }
                };
                if !sent {
                    break;
                }
            }
        });
        let c = TestClient {
            client,
            messages,
            control,
            pubacks,
            published: 0,
        };
        c.expect_control(|ctl| matches!(ctl, Control::ConnAck), "CONNACK")?;
        Ok(c)
    }

    fn expect_control(&self, want: impl Fn(&Control) -> bool, what: &str) -> Result<()> {
        match self.control.recv_timeout(TIMEOUT) {
            Ok(ctl) if want(&ctl) => Ok(()),
            Ok(Control::Error(e)) => bail!("MQTT connection failed while waiting for {what}: {e}"),
            Ok(_) => bail!("unexpected MQTT control packet while waiting for {what}"),
            Err(_) => bail!("no {what} within {TIMEOUT:?}"),
        }
    }

    /// Subscribes to `filter` at QoS 1 and waits for the SUBACK.
    pub fn subscribe(&self, filter: &str) -> Result<()> {
        self.client.subscribe(filter, QoS::AtLeastOnce)?;
        self.expect_control(|ctl| matches!(ctl, Control::SubAck), "SUBACK")
    }

    /// Publishes at QoS 1 (not retained). Blocks only while the client's request queue is
    /// full.
    pub fn publish(&mut self, topic: &str, payload: impl Into<Vec<u8>>) -> Result<()> {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .map_err(|e| anyhow!("publish on {topic}: {e}"))?;
        self.published += 1;
        Ok(())
    }

    /// Waits until the broker has acknowledged every message published so far.
    pub fn flush(&self) -> Result<()> {
        let done = crate::wait_until(TIMEOUT, || {
            (self.pubacks.load(Ordering::SeqCst) >= self.published).then_some(())
        });
        done.with_context(|| {
            format!(
                "only {} of {} publishes acknowledged within {TIMEOUT:?}",
                self.pubacks.load(Ordering::SeqCst),
                self.published
            )
        })
    }

    /// The next message for which `pred` holds, waiting up to `timeout`; messages that do not
    /// match are returned in the second element, so nothing received is lost.
    pub fn recv_matching(
        &self,
        timeout: Duration,
        pred: impl Fn(&Message) -> bool,
    ) -> (Option<Message>, Vec<Message>) {
        let deadline = Instant::now() + timeout;
        let mut others = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.messages.recv_timeout(left) {
                Ok(m) if pred(&m) => return (Some(m), others),
                Ok(m) => others.push(m),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    return (None, others)
                }
            }
        }
    }

    /// The next message, waiting up to `timeout`.
    pub fn recv(&self, timeout: Duration) -> Option<Message> {
        self.messages.recv_timeout(timeout).ok()
    }

    /// Every message received so far and not yet taken.
    pub fn drain(&self) -> Vec<Message> {
        self.messages.try_iter().collect()
    }
}

impl Drop for TestClient {
    fn drop(&mut self) {
        let _ = self.client.try_disconnect();
    }
}

/// The retained message on `topic`, as a fresh subscriber sees it; `None` if the broker holds
/// none. Retained messages are sent right after the SUBACK, so a short wait suffices.
pub fn read_retained(port: u16, topic: &str) -> Result<Option<Message>> {
    let client = TestClient::connect(port, &crate::unique("retained-reader"))?;
    client.subscribe(topic)?;
    let (m, _) = client.recv_matching(Duration::from_secs(2), |m| m.retain);
    Ok(m)
}
