//! The MQTT side: connection options (with the Last Will), the ingest task that polls the
//! rumqttc event loop and hands readings to the workers, the acknowledgement path back from
//! the workers, and the publisher task with its outbox.
//!
//! The ingest task is the only place that polls the event loop. It awaits nothing but `poll`,
//! the reconnect backoff and, under the "hold" overload policy, a worker queue with room.
//!
//! ## Acknowledgements (at-least-once ingest)
//!
//! With a persistent session the client acknowledges QoS 1 messages itself (rumqttc manual
//! acks). A message is acknowledged after the worker that owns its key has taken the sample
//! into the stream's state (or refused it for good). MQTT 3.1.1 (4.6) requires PUBACKs in the
//! order the PUBLISHes arrived (Mosquitto tolerates any order, rumqttd drops the connection),
//! but two workers finish in any order, so [`Acker`] keeps the received packet ids in arrival
//! order, marks them done as workers report, and queues the PUBACKs of the done prefix with
//! `try_ack` (which also wakes the event loop). Whatever the client's full request queue
//! refuses stays in the prefix; the ingest task retries after every poll. An acknowledgement
//! is only valid on the connection that delivered the message: tokens carry the connection's
//! epoch, and when a connection fails the ingest bumps the epoch and empties the queue under
//! the acker's lock and clears the client's queue of PUBACKs, so no PUBACK of a dead
//! connection can ever reach a new session (where its packet id may name another message).
//! The broker redelivers what was not acknowledged, and the worker counts what it had already
//! taken as a `duplicate`.
//!
//! `security`: TLS (rustls) and credentials, built from the configuration when it is checked.

pub mod security;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, Publish, QoS,
};
use tokio::sync::{mpsc, Notify};

use crate::config::{CodeFormat, OverloadPolicy, ValidSettings};
use crate::metrics::{now_ms, LogLimiter, Metrics};
use crate::outbox::Outbox;
use crate::wire::{
    decode_payload_stamped, looks_like_seconds, CodeMessage, OutboundEvent, PayloadError, Reading,
    StatusMessage, TopicTemplate, TsSource, MAX_KEY_BYTES,
};
use crate::worker::{Dispatch, Workers};

/// Room above `max_payload_bytes` for the topic and header, so a payload that is merely too
/// large for us is refused and counted instead of making rumqttc drop the connection.
const PACKET_OVERHEAD: usize = 64 * 1024;

/// How often a held ingest looks whether its worker has room again.
const HOLD_POLL: Duration = Duration::from_millis(1);

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

/// Client options: keep-alive, packet limits, the session kind, manual acknowledgements, and a
/// retained "offline" Last Will on the status topic so subscribers learn when the daemon
/// vanishes without a clean stop.
pub fn options(v: &ValidSettings, started_at_ms: i64) -> MqttOptions {
    let s = &v.settings;
    let mut o = MqttOptions::new(v.client_id(), s.mqtt.host.clone(), s.mqtt.port);
    o.set_keep_alive(Duration::from_secs(s.mqtt.keep_alive_secs));
    o.set_clean_session(!s.mqtt.persistent_session);
    o.set_manual_acks(manual_acks(v));
    o.set_inflight(CLIENT_INFLIGHT);
    let max_packet = max_packet(v);
    o.set_max_packet_size(max_packet, max_packet);
    let offline = StatusMessage::new(&s.node.id, false, started_at_ms).to_json();
    o.set_last_will(LastWill::new(
        status_topic(v),
        offline,
        QoS::AtLeastOnce,
        true,
    ));
    v.mqtt_security.apply(&mut o);
    o
}

/// Socket options: TCP_NODELAY, so a packet the daemon writes (an anomaly event, a PUBACK,
/// a code) leaves at once instead of waiting (Nagle) for the broker to acknowledge what was
/// sent before; with QoS 0 input the broker sends nothing back for long stretches, its ACKs
/// wait for the delayed-ACK timer (40 ms on Linux), and every event would wait with them.
pub fn network_options() -> rumqttc::NetworkOptions {
    let mut n = rumqttc::NetworkOptions::new();
    n.set_tcp_nodelay(true);
    n
}

/// Whether the workers acknowledge messages (QoS 1 subscriptions); at QoS 0 there is nothing
/// to acknowledge.
pub fn manual_acks(v: &ValidSettings) -> bool {
    v.settings.mqtt.qos >= 1
}

/// One QoS 1 message to acknowledge: its place in the arrival order of the connection
/// (`epoch`) that delivered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckToken {
    pub epoch: u64,
    pub seq: u64,
}

/// Packet ids of the current connection's messages not yet acknowledged, in arrival order.
#[derive(Debug, Default)]
struct AckQueue {
    epoch: u64,
    /// Arrival number of the front entry, and of the next message.
    base: u64,
    next: u64,
    /// (packet id, done by its worker).
    entries: VecDeque<(u16, bool)>,
}

/// The acknowledgement path from the workers to the broker (see the module docs).
pub struct Acker {
    client: AsyncClient,
    queue: Mutex<AckQueue>,
    metrics: Arc<Metrics>,
}

impl Acker {
    pub fn new(client: AsyncClient, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            client,
            queue: Mutex::new(AckQueue::default()),
            metrics,
        })
    }

    /// Registers a QoS 1 message as it arrives; its PUBACK waits for [`Acker::ack`].
    pub fn register(&self, pkid: u16) -> AckToken {
        let mut q = self.queue.lock().expect("ack queue lock");
        let seq = q.next;
        q.next += 1;
        q.entries.push_back((pkid, false));
        AckToken {
            epoch: q.epoch,
            seq,
        }
    }

    /// Marks the message done and queues every PUBACK now due in arrival order; never
    /// blocks.
    pub fn ack(&self, token: AckToken) {
        let mut q = self.queue.lock().expect("ack queue lock");
        if token.epoch != q.epoch || token.seq < q.base {
            Metrics::inc(&self.metrics.stale_acks);
            return;
        }
        let i = (token.seq - q.base) as usize;
        if let Some(e) = q.entries.get_mut(i) {
            e.1 = true;
        }
        self.send_due(&mut q);
    }

    /// Queues the PUBACKs of the done prefix until the request queue is full.
    fn send_due(&self, q: &mut AckQueue) {
        while let Some(&(pkid, true)) = q.entries.front() {
            let mut p = Publish::new("", QoS::AtLeastOnce, Vec::<u8>::new());
            p.pkid = pkid;
            if self.client.try_ack(&p).is_err() {
                break;
            }
            q.entries.pop_front();
            q.base += 1;
            Metrics::inc(&self.metrics.acks);
        }
    }

    /// Retries what a full request queue refused (the ingest task, after every poll).
    fn flush(&self) {
        let mut q = self.queue.lock().expect("ack queue lock");
        self.send_due(&mut q);
    }

    /// Whether every message taken has had its PUBACK queued.
    fn all_sent(&self) -> bool {
        let q = self.queue.lock().expect("ack queue lock");
        q.entries.iter().all(|e| !e.1)
    }

    /// Retires the connection that just failed: its tokens become stale, its unacknowledged
    /// ids are forgotten (the broker redelivers those messages), and PUBACKs of it still
    /// queued in the client are removed (`EventLoop::clean` drops queued PUBACKs and keeps
    /// everything else, in order).
    fn retire_connection(&self, eventloop: &mut EventLoop) {
        let mut q = self.queue.lock().expect("ack queue lock");
        q.epoch += 1;
        q.entries.clear();
        q.base = q.next;
        eventloop.clean();
    }
}

/// How many events the publisher keeps in flight (handed to the client, PUBACK awaited). A
/// burst of events (a fault seen by many keys at once) then costs about one broker round
/// trip instead of one per event. Below [`CLIENT_INFLIGHT`] with room for the "online"
/// status, so rumqttc's own in-flight window never fills: when it does, rumqttc stops taking
/// requests, and the workers' PUBACKs, queued behind in the same request queue, would wait.
pub const EVENTS_IN_FLIGHT: usize = 64;

/// rumqttc's window of QoS 1 publishes awaiting their PUBACK (its packet ids are 1..=this).
const CLIENT_INFLIGHT: u16 = 100;

const _: () = assert!(EVENTS_IN_FLIGHT < CLIENT_INFLIGHT as usize);

/// What the publisher needs to know about the connection, shared with the ingest task: which
/// connection is up, and the fate of the QoS 1 publishes it has outstanding ([`Tracker`]).
#[derive(Default)]
pub struct Link {
    state: Mutex<LinkState>,
    changed: Notify,
}

#[derive(Debug, Default)]
struct LinkState {
    connected: bool,
    /// Connections established so far (the current one's number while connected).
    connection: u64,
    tracker: Tracker,
}

/// What one of the publisher's QoS 1 publishes carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// The retained "online" status.
    Status,
    /// The outbox event with this id.
    Event(u64),
}

/// The publisher's QoS 1 publishes from the moment they are handed to the client until the
/// broker's PUBACK, matched to rumqttc's packet ids. The publisher is the only source of QoS
/// 1 publishes while it runs, and rumqttc assigns packet ids in request order, so the next
/// `Outgoing::Publish` with a new packet id is the oldest publish queued. A packet id already
/// on the wire is a retransmission after a resumed session (rumqttc sends those itself, with
/// their ids, before anything new); an id is free again only after its PUBACK, which the
/// event loop reports before any publish that reuses it. When a new session starts, rumqttc
/// drops every publish of the old one (sent or still queued): those are lost and go out
/// again. Pure bookkeeping, driven by the ingest task's events; the publisher collects the
/// outcomes with [`Tracker::take_settled`].
#[derive(Debug, Default)]
pub struct Tracker {
    /// Handed to the client, no packet id yet, in request order.
    queued: VecDeque<Tag>,
    /// On the wire: packet id → publish.
    sent: std::collections::HashMap<u16, Tag>,
    /// Acknowledged by the broker, for the publisher.
    acked: Vec<Tag>,
    /// Lost with their session, for the publisher to send again.
    lost: Vec<Tag>,
}

impl Tracker {
    /// A publish was handed to the client.
    pub fn queue(&mut self, tag: Tag) {
        self.queued.push_back(tag);
    }

    /// Publishes handed to the client and not yet acknowledged or lost.
    pub fn outstanding(&self) -> usize {
        self.queued.len() + self.sent.len()
    }

    /// The event loop wrote a QoS 1 PUBLISH with packet id `pkid`.
    pub fn on_sent(&mut self, pkid: u16) {
        if self.sent.contains_key(&pkid) {
            return; // sent again on a resumed session
        }
        if let Some(tag) = self.queued.pop_front() {
            self.sent.insert(pkid, tag);
        }
    }

    /// The broker acknowledged packet id `pkid`.
    pub fn on_puback(&mut self, pkid: u16) {
        if let Some(tag) = self.sent.remove(&pkid) {
            self.acked.push(tag);
        }
    }

    /// A connection came up. Without the old session every outstanding publish is lost;
    /// with it, rumqttc sends them all again (the sent ones with their packet ids).
    pub fn on_connect(&mut self, session_present: bool) {
        if !session_present {
            self.lost.extend(self.queued.drain(..));
            self.lost.extend(self.sent.drain().map(|(_, tag)| tag));
        }
    }

    /// Applies the packet-id events rumqttc still holds in its event queue when a connection
    /// fails, and removes them; other events stay. rumqttc queues `Outgoing::Publish(pkid)`
    /// before it writes the packet, and a failed write leaves the event queued, to be reported
    /// only after the next ConnAck — where it would pair this connection's packet id with the
    /// next connection's first publish (and that publish's PUBACK would then complete the
    /// wrong event).
    pub fn apply_leftover_events(&mut self, events: &mut VecDeque<Event>) {
        events.retain(|ev| match ev {
            Event::Outgoing(Outgoing::Publish(pkid)) if *pkid != 0 => {
                self.on_sent(*pkid);
                false
            }
            Event::Incoming(Packet::PubAck(a)) => {
                self.on_puback(a.pkid);
                false
            }
            _ => true,
        });
    }

    /// Acknowledged and lost publishes since the last call.
    pub fn take_settled(&mut self) -> (Vec<Tag>, Vec<Tag>) {
        (
            std::mem::take(&mut self.acked),
            std::mem::take(&mut self.lost),
        )
    }
}

/// Why [`Link::try_publish`] did not hand a publish to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NotPublished {
    /// Connection `conn` is no longer up.
    Disconnected,
    /// The client's request queue is full.
    QueueFull,
    /// The client can never send it (see [`publishable`]): retrying would block every event
    /// behind it, so the caller drops it.
    Invalid,
    /// Publishes lost with the previous session are not back in the outbox's line yet;
    /// sending anything first would put newer events before them.
    LostPending,
}

impl Link {
    fn update<T>(&self, f: impl FnOnce(&mut LinkState) -> T) -> T {
        let out = f(&mut self.state.lock().expect("link lock"));
        self.changed.notify_waiters();
        out
    }

    fn on_connect(&self, session_present: bool) {
        self.update(|s| {
            s.connected = true;
            s.connection += 1;
            s.tracker.on_connect(session_present);
        });
    }

    /// The connection failed: `retire` (which empties the client's queues into rumqttc's
    /// pending list and hands the tracker the packet-id events rumqttc still holds) runs
    /// under the link's lock, so no publish is handed to the client between it and the link
    /// going down; every outstanding publish is then in that list, which the next connection
    /// sends (resumed session) or drops (new session).
    fn on_disconnect(&self, retire: impl FnOnce(&mut Tracker)) {
        self.update(|s| {
            retire(&mut s.tracker);
            s.connected = false;
        });
    }

    fn on_sent(&self, pkid: u16) {
        self.update(|s| s.tracker.on_sent(pkid));
    }

    fn on_puback(&self, pkid: u16) {
        self.update(|s| s.tracker.on_puback(pkid));
    }

    /// Hands a QoS 1 publish to the client while connection `conn` is up, and tracks it.
    fn try_publish(
        &self,
        client: &AsyncClient,
        conn: u64,
        tag: Tag,
        topic: String,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<(), NotPublished> {
        let mut s = self.state.lock().expect("link lock");
        if !s.connected || s.connection != conn {
            return Err(NotPublished::Disconnected);
        }
        if !s.tracker.lost.is_empty() {
            return Err(NotPublished::LostPending);
        }
        if !publishable(&topic) {
            return Err(NotPublished::Invalid);
        }
        // With the topic valid, the client refuses only when its request queue is full (or
        // its event loop is gone, which ends the daemon anyway).
        client
            .try_publish(topic, QoS::AtLeastOnce, retain, payload)
            .map_err(|_| NotPublished::QueueFull)?;
        s.tracker.queue(tag);
        Ok(())
    }

    fn outstanding(&self) -> usize {
        self.state.lock().expect("link lock").tracker.outstanding()
    }

    fn take_settled(&self) -> (Vec<Tag>, Vec<Tag>) {
        self.state.lock().expect("link lock").tracker.take_settled()
    }

    /// The connection that is up, if any.
    pub fn current(&self) -> Option<u64> {
        let s = self.state.lock().expect("link lock");
        s.connected.then_some(s.connection)
    }
}

/// How soon after its CONNACK a connection that the broker closes looks taken over.
const TAKEOVER_WITHIN: Duration = Duration::from_secs(10);
/// How many such connections in a row make the hint: one or two can be a broker restart.
const TAKEOVER_STREAK: u32 = 3;
/// At most one hint a minute: the takeover goes on several times a second.
static TAKEOVER_LOG: LogLimiter = LogLimiter::new(60_000);

/// Spots a client-id takeover. Two clients with one client id take turns: the broker accepts
/// each (CONNACK) and closes the other's connection (Mosquitto disconnects the older session),
/// which rumqttc reports only as "connection closed by peer", four times a second, forever.
/// Pure bookkeeping over the ingest task's events, so the rule can be tested without a broker.
#[derive(Debug, Default)]
pub struct TakeoverWatch {
    /// When the current connection's CONNACK came; `None` while not connected.
    connected_at: Option<Instant>,
    /// Connections in a row that the broker closed within [`TAKEOVER_WITHIN`].
    streak: u32,
}

impl TakeoverWatch {
    pub fn on_connack(&mut self, now: Instant) {
        self.connected_at = Some(now);
    }

    /// A connection error at `now`: the number of connections in a row the broker closed
    /// soon after accepting them, once that is [`TAKEOVER_STREAK`] or more. Any other
    /// failure (a refused or failed connect, a keep-alive timeout, a connection that lasted)
    /// starts the count again.
    pub fn on_error(&mut self, e: &rumqttc::ConnectionError, now: Instant) -> Option<u32> {
        let soon = self
            .connected_at
            .take()
            .is_some_and(|t| now.saturating_duration_since(t) < TAKEOVER_WITHIN);
        if soon && closed_by_broker(e) {
            self.streak += 1;
        } else {
            self.streak = 0;
        }
        (self.streak >= TAKEOVER_STREAK).then_some(self.streak)
    }
}

/// Whether the broker ended the connection (closed or reset it) rather than the daemon
/// giving up on it.
fn closed_by_broker(e: &rumqttc::ConnectionError) -> bool {
    use rumqttc::{ConnectionError as C, StateError as S};
    use std::io::ErrorKind as K;
    match e {
        C::MqttState(S::ConnectionAborted) => true,
        C::MqttState(S::Io(io)) | C::Io(io) => matches!(
            io.kind(),
            K::ConnectionReset | K::BrokenPipe | K::UnexpectedEof
        ),
        _ => false,
    }
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
    pub acker: Arc<Acker>,
    pub link: Arc<Link>,
    /// The topic → sensor key mapping in force (`topics.template`; a reload replaces it).
    pub template: RwLock<TopicTemplate>,
}

static TOPIC_LOG: LogLimiter = LogLimiter::new(10_000);
/// One limit per refusal reason: with a single one, a bad payload of one kind kept every
/// other kind that came within 10 s out of the log, and a user could not find the topic.
static PAYLOAD_LOG: [LogLimiter; PayloadError::REASONS] =
    [const { LogLimiter::new(10_000) }; PayloadError::REASONS];
static SECONDS_LOG: LogLimiter = LogLimiter::new(60_000);

impl Ingest {
    /// Polls the event loop until the clean disconnect has gone out (or, once stopping, the
    /// connection fails). Reconnects with capped exponential backoff and resubscribes on
    /// every new connection (a resumed session keeps the subscriptions, but the broker may
    /// have lost them, and subscribing again is harmless).
    pub async fn drive(self: Arc<Self>, client: AsyncClient, mut eventloop: EventLoop) {
        let mqtt = &self.settings.settings.mqtt;
        let mut backoff = Duration::from_millis(mqtt.reconnect_min_ms);
        let max_backoff = Duration::from_millis(mqtt.reconnect_max_ms);
        let mut lost_at: Option<Instant> = None;
        let mut held: Option<Dispatch> = None;
        let mut disconnect_sent = false;
        let mut takeover = TakeoverWatch::default();
        loop {
            if let Some(d) = held.take() {
                self.hold(d).await;
            }
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    backoff = Duration::from_millis(mqtt.reconnect_min_ms);
                    takeover.on_connack(Instant::now());
                    let first = self.metrics.connections.load(Ordering::Relaxed) == 0;
                    Metrics::inc(&self.metrics.connections);
                    Metrics::set(&self.metrics.broker_connected, 1);
                    self.connected.store(true, Ordering::Relaxed);
                    self.metrics.health.connected();
                    if let Some(t) = lost_at.take() {
                        let ms = t.elapsed().as_millis() as u64;
                        Metrics::add(&self.metrics.outage_ms, ms);
                        tracing::info!(host = %mqtt.host, port = mqtt.port, outage_ms = ms, session_present = ack.session_present, "reconnected to broker");
                    } else {
                        tracing::info!(host = %mqtt.host, port = mqtt.port, session_present = ack.session_present, "connected to broker");
                    }
                    if !first {
                        Metrics::inc(&self.metrics.reconnects);
                    }
                    self.link.on_connect(ack.session_present);
                    self.on_connect(&client);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => held = self.on_publish(p),
                Ok(Event::Incoming(Packet::PubAck(a))) => self.link.on_puback(a.pkid),
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    self.metrics
                        .health
                        .subscribed
                        .store(true, Ordering::Relaxed);
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) if pkid != 0 => {
                    self.link.on_sent(pkid)
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                    tracing::debug!("disconnect sent");
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    self.link.on_disconnect(|tracker| {
                        self.acker.retire_connection(&mut eventloop);
                        tracker.apply_leftover_events(&mut eventloop.state.events);
                    });
                    self.metrics
                        .health
                        .subscribed
                        .store(false, Ordering::Relaxed);
                    if self.connected.swap(false, Ordering::Relaxed) {
                        lost_at = Some(Instant::now());
                        Metrics::set(&self.metrics.broker_connected, 0);
                    }
                    if self.stopping.load(Ordering::Relaxed) {
                        break;
                    }
                    Metrics::inc(&self.metrics.connection_errors);
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "broker connection failed");
                    if let Some(hint) = security::failure_hint(&e) {
                        tracing::error!(error = %e, "{hint}");
                    }
                    if let Some(times) = takeover.on_error(&e, Instant::now()) {
                        if let Some(held) = TAKEOVER_LOG.allow(now_ms()) {
                            tracing::error!(
                                client_id = %self.settings.client_id(),
                                times,
                                suppressed = held,
                                "the broker keeps closing the connection soon after accepting it: \
                                 another client with this client id is probably connected \
                                 (Mosquitto disconnects the older session on a takeover, and the \
                                 two then take turns); give each daemon its own [node] id, or set \
                                 mqtt.client_id differently. Otherwise the broker refuses what the \
                                 daemon sends right after connecting (an ACL on its subscriptions \
                                 or status topic, a packet size limit): see the broker's log"
                            );
                        }
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.wake.notified() => {}
                    }
                    if self.stopping.load(Ordering::Relaxed) {
                        break;
                    }
                    backoff = (backoff * 2).min(max_backoff);
                    continue;
                }
            }
            self.acker.flush();
            // A clean stop: every acknowledgement the workers made goes out before the
            // DISCONNECT (they share the client's queue, in order).
            if self.stopping.load(Ordering::Relaxed) && !disconnect_sent && self.acker.all_sent() {
                disconnect_sent = client.try_disconnect().is_ok();
            }
        }
        Metrics::set(&self.metrics.broker_connected, 0);
    }

    /// Asks the ingest task to disconnect once the acknowledgements are out.
    pub fn request_stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// Overload policy "hold": stops reading from the broker until the worker that owns `d`
    /// has room again (its queue at most half full), then hands it over. The acknowledgement
    /// path does not need this task's polling to make progress: workers mark their messages
    /// done in the acker (bounded by the messages taken, see ARCHITECTURE.md), and the
    /// PUBACKs leave when polling resumes.
    async fn hold(&self, mut d: Dispatch) {
        Metrics::inc(&self.metrics.ingest_holds);
        loop {
            {
                let guard = self.workers.lock().expect("workers lock");
                let Some(workers) = guard.as_ref() else {
                    // Stopping: not taken, not acknowledged; the broker keeps it.
                    Metrics::inc(&self.metrics.left_at_broker);
                    return;
                };
                if workers.has_room(&d.reading.key) {
                    match workers.try_dispatch(d) {
                        Ok(()) => return,
                        Err(back) => d = back,
                    }
                }
            }
            tokio::time::sleep(HOLD_POLL).await;
        }
    }

    /// Subscribes on a new connection, in a task of its own: the request queue may still be
    /// full of what piled up during an outage, and only this loop's polling drains it, so
    /// awaiting here would deadlock and `try_` calls could silently leave the daemon
    /// connected but deaf. The publisher then publishes the retained "online" status.
    fn on_connect(&self, client: &AsyncClient) {
        let s = &self.settings.settings;
        let filters: Vec<_> = s
            .mqtt
            .subscribe
            .iter()
            .map(|f| rumqttc::SubscribeFilter::new(f.clone(), qos(s.mqtt.qos)))
            .collect();
        let client = client.clone();
        tokio::spawn(async move {
            if let Err(e) = client.subscribe_many(filters).await {
                tracing::error!(error = %e, "could not subscribe");
            }
        });
    }

    /// Decodes one PUBLISH and hands it to its worker. Returns the reading when its worker
    /// has no room and the policy is "hold".
    fn on_publish(&self, p: Publish) -> Option<Dispatch> {
        let started = Instant::now();
        let held = self.take_publish(p);
        self.metrics
            .latency
            .ingest_decode
            .observe(started.elapsed());
        held
    }

    fn take_publish(&self, p: Publish) -> Option<Dispatch> {
        let m = &self.metrics;
        Metrics::inc(&m.messages);
        m.health.message_received();
        let token = (p.qos != QoS::AtMostOnce && manual_acks(&self.settings))
            .then(|| self.acker.register(p.pkid));
        let now = now_ms();
        let key = sensor_key(
            &self.template.read().expect("template lock"),
            &p.topic,
            m,
            now,
        );
        let Some(key) = key else {
            self.ack_now(token);
            return None;
        };
        let (ts_ms, ts_source, channels) = match decode_payload_stamped(
            &p.payload,
            now,
            &self.settings.payload_limits(),
        ) {
            Ok(v) => v,
            Err(e) => {
                m.count_payload_error(&e);
                // `min`: a variant added without raising REASONS shares the last limiter
                // rather than panicking in the ingest (the payload tests check the count).
                let limiter = &PAYLOAD_LOG[e.reason().min(PayloadError::REASONS - 1)];
                if let Some(held) = limiter.allow(now) {
                    tracing::warn!(topic = %p.topic, error = %e, suppressed = held, "bad payload; skipped");
                }
                self.ack_now(token);
                return None;
            }
        };
        if ts_source == TsSource::Payload && looks_like_seconds(ts_ms) {
            if let Some(held) = SECONDS_LOG.allow(now) {
                tracing::warn!(
                    topic = %p.topic,
                    ts = ts_ms,
                    suppressed = held,
                    "ts read as milliseconds since the epoch puts this sample in 1970; \
                     a number this size looks like seconds: send milliseconds or an RFC 3339 string"
                );
            }
        }
        let d = Dispatch {
            reading: Reading {
                key,
                ts_ms,
                channels,
            },
            dup: p.dup,
            ack: token,
            arrival_ts: ts_source == TsSource::Arrival,
        };
        let guard = self.workers.lock().expect("workers lock");
        let Some(workers) = guard.as_ref() else {
            // Stopping: the workers are draining and take nothing new. Unacknowledged, a QoS 1
            // message stays with the broker for the next run; a QoS 0 one is lost.
            if token.is_some() {
                Metrics::inc(&m.left_at_broker);
            } else {
                Metrics::inc(&m.dropped_samples);
            }
            return None;
        };
        match workers.try_dispatch(d) {
            Ok(()) => None,
            Err(d) => match self.settings.settings.mqtt.overload {
                // Nothing to hold a QoS 0 message for: the broker would not keep it.
                OverloadPolicy::Hold if token.is_some() => Some(d),
                _ => {
                    workers.shed(d);
                    None
                }
            },
        }
    }

    /// Acknowledges a message that will never be taken (bad topic or payload): keeping it at
    /// the broker would only have it redelivered.
    fn ack_now(&self, token: Option<AckToken>) {
        if let Some(t) = token {
            self.acker.ack(t);
        }
    }
}

static KEY_LOG: LogLimiter = LogLimiter::new(10_000);

/// The sensor key of `topic`, or `None` (counted, logged at a limited rate) when the topic
/// does not match the template or its key is longer than [`MAX_KEY_BYTES`].
fn sensor_key(template: &TopicTemplate, topic: &str, m: &Metrics, now: i64) -> Option<String> {
    let Some(key) = template.key(topic) else {
        Metrics::inc(&m.unknown_topics);
        if let Some(held) = TOPIC_LOG.allow(now) {
            tracing::warn!(
                topic = %topic,
                suppressed = held,
                "topic does not match topics.template; skipped"
            );
        }
        return None;
    };
    if key.len() > MAX_KEY_BYTES {
        Metrics::inc(&m.oversized_keys);
        if let Some(held) = KEY_LOG.allow(now) {
            // The first bytes only: the topic itself may be 64 KiB.
            let start: String = key.chars().take(64).collect();
            tracing::warn!(
                key_start = %start,
                key_bytes = key.len(),
                max = MAX_KEY_BYTES,
                suppressed = held,
                "sensor key longer than the limit; skipped"
            );
        }
        return None;
    }
    Some(key)
}

/// MQTT writes a topic's length as a u16; rumqttc truncates a longer one silently.
pub const MAX_TOPIC_BYTES: usize = u16::MAX as usize;

/// Whether the client can send a PUBLISH on `topic`: rumqttc refuses wildcards (with the
/// same error as a full queue) and silently truncates topics beyond [`MAX_TOPIC_BYTES`].
fn publishable(topic: &str) -> bool {
    topic.len() <= MAX_TOPIC_BYTES && rumqttc::valid_topic(topic)
}

/// The largest packet the client sends or takes (`max_payload_bytes` + [`PACKET_OVERHEAD`]).
fn max_packet(v: &ValidSettings) -> usize {
    v.settings.mqtt.max_payload_bytes + PACKET_OVERHEAD
}

/// Whether a QoS 1 PUBLISH of `topic` with `payload_len` bytes fits `max_packet`: rumqttc
/// refuses a larger one with an error that drops the connection, and the same event would
/// then be refused again after every reconnect. Fixed header (1 + up to 4 bytes of remaining
/// length), topic length and topic, packet id, payload.
fn fits_packet(topic: &str, payload_len: usize, max_packet: usize) -> bool {
    1 + 4 + 2 + topic.len() + 2 + payload_len <= max_packet
}

/// How long the publisher waits before it tries again when the client's request queue was
/// full.
const QUEUE_FULL_RETRY: Duration = Duration::from_millis(5);

/// Publishes what the workers send until every sender is gone and the outbox is delivered (or
/// the stop grace ends): events (anomalies, no-data conditions) first, through the outbox,
/// up to [`EVENTS_IN_FLIGHT`] at once, each kept until its PUBACK; the retained "online"
/// status first on every connection; codes when no event is waiting to be handed over (QoS
/// 0, `try_publish`, rate-limited, shed first).
#[allow(clippy::too_many_arguments)]
pub async fn publish_outbound(
    settings: ValidSettings,
    client: AsyncClient,
    mut events: mpsc::Receiver<OutboundEvent>,
    mut codes: Option<mpsc::Receiver<CodeMessage>>,
    connected: Arc<AtomicBool>,
    link: Arc<Link>,
    mut outbox: Outbox,
    metrics: Arc<Metrics>,
    started_at_ms: i64,
    stop_grace: Duration,
) {
    let code_settings = &settings.settings.output.codes;
    let mut bucket = TokenBucket::new(code_settings.max_per_sec);
    let node = settings.settings.node.id.clone();
    let online = StatusMessage::new(&node, true, started_at_ms).to_json();
    let mut status_on: Option<u64> = None;
    let mut deadline: Option<tokio::time::Instant> = None;
    let spooled = outbox.is_spooled();
    Metrics::set(&metrics.events_buffered, outbox.len() as u64);
    loop {
        // Registered before the link is looked at, so no change in between is missed.
        let changed = link.changed.notified();
        while let Ok(ev) = events.try_recv() {
            enqueue(&mut outbox, ev, link.current(), &metrics);
        }
        settle(&link, &mut outbox, &metrics);
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            break;
        }
        let mut retry: Option<tokio::time::Instant> = None;
        if let Some(conn) = link.current() {
            let mut sent = Ok(());
            if status_on != Some(conn) {
                let topic = status_topic(&settings);
                sent = link.try_publish(&client, conn, Tag::Status, topic, true, online.clone());
                if sent == Err(NotPublished::Invalid) {
                    // Never sendable (topics.prefix / node.id make it so): go on without it.
                    Metrics::inc(&metrics.invalid_publishes);
                    tracing::error!("status topic is not a valid MQTT topic; status not published");
                    sent = Ok(());
                    status_on = Some(conn);
                } else if sent.is_ok() {
                    status_on = Some(conn);
                }
            }
            if status_on == Some(conn) {
                sent = publish_window(&settings, &client, &link, conn, &mut outbox, &metrics);
            }
            // LostPending: the next turn (woken by the link change that lost them) puts the
            // lost publishes back in line first; the timer is only a backstop.
            if matches!(
                sent,
                Err(NotPublished::QueueFull | NotPublished::LostPending)
            ) {
                retry = Some(tokio::time::Instant::now() + QUEUE_FULL_RETRY);
            }
        }
        if events.is_closed() && events.is_empty() {
            if outbox.is_empty() {
                break;
            }
            deadline.get_or_insert_with(|| tokio::time::Instant::now() + stop_grace);
        }
        let far = tokio::time::Instant::now() + Duration::from_secs(3600);
        let sleep_until = deadline.unwrap_or(far).min(retry.unwrap_or(far));
        tokio::select! {
            biased;
            ev = events.recv(), if !events.is_closed() || !events.is_empty() => {
                if let Some(ev) = ev {
                    enqueue(&mut outbox, ev, link.current(), &metrics);
                }
            }
            _ = changed => {}
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
            _ = tokio::time::sleep_until(sleep_until) => {}
        }
    }
    // The workers are gone; publish the codes they left behind (bounded by the queue).
    if let Some(rx) = codes.as_mut() {
        while let Ok(code) = rx.try_recv() {
            try_publish_code(&client, &settings, &code, &metrics);
        }
    }
    if !outbox.is_empty() {
        if spooled {
            tracing::warn!(
                events = outbox.len(),
                "events not delivered before the stop stay in the spool file for the next run"
            );
        } else {
            Metrics::add(&metrics.dropped_events, outbox.len() as u64);
            tracing::warn!(
                events = outbox.len(),
                "events not delivered before the stop are lost (no output.buffer.file)"
            );
        }
    }
}

/// Hands the oldest events not in flight to the client on connection `conn` until
/// [`EVENTS_IN_FLIGHT`] are outstanding. An event that entered the outbox while another
/// connection (or none) was up is late and goes out flagged `delayed`.
fn publish_window(
    settings: &ValidSettings,
    client: &AsyncClient,
    link: &Link,
    conn: u64,
    outbox: &mut Outbox,
    metrics: &Metrics,
) -> Result<(), NotPublished> {
    while link.outstanding() < EVENTS_IN_FLIGHT {
        let Some(entry) = outbox.next_unsent() else {
            break;
        };
        if entry.connection != Some(conn) {
            entry.event.set_delayed(true);
        }
        let topic = format!("{}/{}", settings.topic_root(), entry.event.subtopic());
        let started = Instant::now();
        let tag = Tag::Event(entry.id);
        let (retain, body) = (entry.event.retain(), entry.event.payload());
        if !fits_packet(&topic, body.len(), max_packet(settings)) {
            let (id, key) = (entry.id, entry.event.key().to_string());
            drop_invalid_event(outbox, id, &key, metrics);
            continue;
        }
        match link.try_publish(client, conn, tag, topic, retain, body) {
            Ok(()) => {}
            Err(NotPublished::Invalid) => {
                // Retrying would keep it the oldest event forever and hold back every other.
                let (id, key) = (entry.id, entry.event.key().to_string());
                drop_invalid_event(outbox, id, &key, metrics);
                continue;
            }
            Err(e) => return Err(e),
        }
        metrics.latency.publish_event.observe(started.elapsed());
        entry.in_flight = true;
    }
    Ok(())
}

/// Removes an event the client can never send (its topic is invalid, or the packet is larger
/// than the client sends) from the outbox, counted.
fn drop_invalid_event(outbox: &mut Outbox, id: u64, key: &str, metrics: &Metrics) {
    Metrics::inc(&metrics.invalid_publishes);
    Metrics::inc(&metrics.dropped_events);
    let key_start: String = key.chars().take(64).collect();
    tracing::error!(key_start = %key_start, key_bytes = key.len(), "event cannot be published (topic longer than 65 535 bytes or a wildcard, or the packet larger than max_payload_bytes + 64 KiB); event dropped");
    if let Err(e) = outbox.complete(id) {
        tracing::error!(error = %e, "cannot record a dropped event in the spool file");
    }
    Metrics::set(&metrics.events_buffered, outbox.len() as u64);
}

/// Takes the publishes the broker acknowledged out of the outbox (by id: PUBACKs come in any
/// order, and the spool file's bound may have dropped an event meanwhile, counted then), and
/// puts those lost with their session back in line, flagged `delayed`.
fn settle(link: &Link, outbox: &mut Outbox, metrics: &Metrics) {
    let (acked, lost) = link.take_settled();
    if acked.is_empty() && lost.is_empty() {
        return;
    }
    for tag in acked {
        let Tag::Event(id) = tag else { continue };
        match outbox.complete(id) {
            Ok(Some(done)) => {
                Metrics::inc(&metrics.events_published);
                if done.event.delayed() {
                    Metrics::inc(&metrics.events_delayed);
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "cannot record a delivered event in the spool file")
            }
        }
    }
    for tag in lost {
        if let Tag::Event(id) = tag {
            outbox.resend(id);
        }
    }
    Metrics::set(&metrics.events_buffered, outbox.len() as u64);
}

/// Puts an event into the outbox; counts what does not fit.
fn enqueue(outbox: &mut Outbox, ev: OutboundEvent, connection: Option<u64>, metrics: &Metrics) {
    let key = ev.key().to_string();
    match outbox.push(ev, connection) {
        Ok(r) => {
            if r.refused {
                Metrics::inc(&metrics.dropped_events);
                static FULL: LogLimiter = LogLimiter::new(10_000);
                if let Some(held) = FULL.allow(now_ms()) {
                    tracing::warn!(key = %key, suppressed = held, "outbox full (output.buffer.capacity), event dropped");
                }
            }
            if r.dropped_oldest > 0 {
                Metrics::add(&metrics.dropped_events, r.dropped_oldest);
                tracing::warn!(
                    dropped = r.dropped_oldest,
                    "spool file full (output.buffer.max_file_bytes), oldest events dropped"
                );
            }
        }
        Err(e) => {
            Metrics::inc(&metrics.dropped_events);
            tracing::error!(key = %key, error = %e, "cannot write the outbox spool file, event dropped");
        }
    }
    Metrics::set(&metrics.events_buffered, outbox.len() as u64);
}

/// Queues one code at QoS 0 without waiting; counts it as published or dropped.
fn try_publish_code(
    client: &AsyncClient,
    settings: &ValidSettings,
    code: &CodeMessage,
    metrics: &Metrics,
) {
    let topic = code_topic(settings, &code.key);
    if !publishable(&topic) {
        Metrics::inc(&metrics.invalid_publishes);
        Metrics::inc(&metrics.dropped_codes);
        return;
    }
    let body = encode_code(code, settings.settings.output.codes.format);
    if !fits_packet(&topic, body.len(), max_packet(settings)) {
        Metrics::inc(&metrics.invalid_publishes);
        Metrics::inc(&metrics.dropped_codes);
        return;
    }
    match client.try_publish(topic, QoS::AtMostOnce, false, body) {
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

    /// Connections closed by the broker within seconds of their CONNACK, three in a row, make
    /// the hint (and every one after); a connection that lasted, a failed connect or an error
    /// of the daemon's own starts the count again.
    #[test]
    fn a_broker_that_keeps_closing_fresh_connections_looks_like_a_takeover() {
        use rumqttc::{ConnectionError as C, StateError as S};
        let aborted = || C::MqttState(S::ConnectionAborted);
        let reset = || C::Io(std::io::ErrorKind::ConnectionReset.into());
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut w = TakeoverWatch::default();
        let cycle = |w: &mut TakeoverWatch, at: u64, lived: u64, e: C| {
            w.on_connack(ms(at));
            w.on_error(&e, ms(at + lived))
        };
        assert_eq!(cycle(&mut w, 0, 300, aborted()), None);
        assert_eq!(cycle(&mut w, 600, 300, reset()), None);
        assert_eq!(cycle(&mut w, 1_200, 300, aborted()), Some(3));
        assert_eq!(cycle(&mut w, 1_800, 300, aborted()), Some(4));
        // A connection that lasted a minute before the broker closed it: a restart, say.
        assert_eq!(cycle(&mut w, 2_400, 60_000, aborted()), None);
        for at in [70_000, 71_000] {
            assert_eq!(cycle(&mut w, at, 300, aborted()), None);
        }
        // A connect that failed (no CONNACK) breaks the streak.
        assert_eq!(w.on_error(&aborted(), ms(72_000)), None);
        for at in [73_000, 74_000] {
            assert_eq!(cycle(&mut w, at, 300, aborted()), None);
        }
        // So does the daemon's own keep-alive timeout.
        assert_eq!(
            cycle(&mut w, 75_000, 300, C::MqttState(S::AwaitPingResp)),
            None
        );
        for at in [76_000, 77_000] {
            assert_eq!(cycle(&mut w, at, 300, aborted()), None);
        }
        assert_eq!(cycle(&mut w, 78_000, 300, aborted()), Some(3));
    }

    #[test]
    fn packets_larger_than_the_client_sends_are_told_apart() {
        let v = crate::config::load_with_env(crate::config::Source::Default, Vec::new()).unwrap();
        let max = max_packet(&v);
        let topic = "sparsewatch/edge-1/nodata/plant1/pump1";
        let room = max - (1 + 4 + 2 + topic.len() + 2);
        assert!(fits_packet(topic, room, max));
        assert!(!fits_packet(topic, room + 1, max));
        assert!(fits_packet(topic, 200, max));
    }

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
            sdr: Some(vec![7, 0, 15]),
            familiarity: Some(0.625),
        };
        let json: CodeMessage =
            serde_json::from_slice(&encode_code(&code, CodeFormat::Json)).unwrap();
        assert_eq!(json, code);
        let cbor: CodeMessage =
            ciborium::from_reader(&encode_code(&code, CodeFormat::Cbor)[..]).unwrap();
        assert_eq!(cbor, code);
    }

    fn settled(t: &mut Tracker) -> (Vec<Tag>, Vec<Tag>) {
        t.take_settled()
    }

    #[test]
    fn tracker_matches_out_of_order_pubacks_to_their_publishes() {
        let mut t = Tracker::default();
        t.queue(Tag::Status);
        for id in 1..=3 {
            t.queue(Tag::Event(id));
        }
        assert_eq!(t.outstanding(), 4);
        for pkid in [7, 8, 9, 10] {
            t.on_sent(pkid);
        }
        t.on_puback(10);
        t.on_puback(8);
        t.on_puback(8); // a stray second PUBACK
        t.on_puback(42); // not ours (none of our publishes has it)
        assert_eq!(
            settled(&mut t),
            (vec![Tag::Event(3), Tag::Event(1)], vec![])
        );
        assert_eq!(t.outstanding(), 2);
        t.on_puback(7);
        t.on_puback(9);
        assert_eq!(settled(&mut t), (vec![Tag::Status, Tag::Event(2)], vec![]));
        assert_eq!(t.outstanding(), 0);
        // Packet ids are reused once acknowledged.
        t.queue(Tag::Event(4));
        t.on_sent(7);
        t.on_puback(7);
        assert_eq!(settled(&mut t).0, [Tag::Event(4)]);
    }

    /// Several publishes in flight when the connection drops, the session resumed: rumqttc
    /// sends the unacknowledged ones again with their packet ids, then the ones that were
    /// still queued get new ids; nothing is lost and every PUBACK finds its publish.
    #[test]
    fn tracker_keeps_publishes_across_a_resumed_session() {
        let mut t = Tracker::default();
        for id in 1..=4 {
            t.queue(Tag::Event(id));
        }
        t.on_sent(1);
        t.on_sent(2);
        t.on_sent(3); // event 4 still in the client's queue
        t.on_puback(2);
        t.on_connect(true);
        t.on_sent(3); // retransmissions, in rumqttc's order
        t.on_sent(1);
        t.on_sent(4); // event 4, first sent now
        assert_eq!(t.outstanding(), 3);
        t.on_puback(4);
        t.on_puback(1);
        t.on_puback(3);
        let (acked, lost) = settled(&mut t);
        assert_eq!(
            acked,
            [Tag::Event(2), Tag::Event(4), Tag::Event(1), Tag::Event(3)]
        );
        assert!(lost.is_empty());
    }

    /// The same with a new session: rumqttc drops every publish of the old one, sent or
    /// queued; all are reported lost (to go out again) and the packet ids start afresh.
    #[test]
    fn tracker_reports_every_outstanding_publish_lost_with_its_session() {
        let mut t = Tracker::default();
        t.queue(Tag::Status);
        for id in 1..=3 {
            t.queue(Tag::Event(id));
        }
        t.on_sent(1);
        t.on_sent(2);
        t.on_sent(3);
        t.on_puback(1);
        t.on_connect(false);
        let (acked, mut lost) = settled(&mut t);
        assert_eq!(acked, [Tag::Status]);
        lost.sort_by_key(|t| match t {
            Tag::Status => 0,
            Tag::Event(id) => *id,
        });
        assert_eq!(lost, [Tag::Event(1), Tag::Event(2), Tag::Event(3)]);
        assert_eq!(t.outstanding(), 0);
        // Sent again on the new session, with packet ids the old one had used.
        t.queue(Tag::Event(2));
        t.on_sent(1);
        t.on_puback(1);
        assert_eq!(settled(&mut t).0, [Tag::Event(2)]);
    }

    /// A publish whose write failed leaves `Outgoing::Publish(pkid)` in rumqttc's event queue.
    /// Applied at the disconnect, it is lost with its session and the next connection's
    /// publishes pair with their own packet ids; without it the status (first on a new
    /// connection) would take the old id and the next event's PUBACK would complete it.
    #[test]
    fn leftover_packet_ids_are_applied_before_the_next_connection() {
        let mut t = Tracker::default();
        t.queue(Tag::Event(1));
        t.queue(Tag::Event(2));
        t.on_sent(1);
        let incoming = Event::Incoming(Packet::PingResp);
        let mut left: VecDeque<Event> = [
            Event::Outgoing(Outgoing::Publish(2)),
            incoming.clone(),
            Event::Incoming(Packet::PubAck(rumqttc::PubAck::new(1))),
        ]
        .into();
        t.apply_leftover_events(&mut left);
        assert_eq!(left, VecDeque::from([incoming]), "other events stay");
        t.on_connect(false);
        let (acked, lost) = settled(&mut t);
        assert_eq!(acked, [Tag::Event(1)]);
        assert_eq!(lost, [Tag::Event(2)]);
        // New connection: the status and the resent event get ids 1 and 2 afresh.
        t.queue(Tag::Status);
        t.queue(Tag::Event(2));
        t.on_sent(1);
        t.on_sent(2);
        t.on_puback(2);
        assert_eq!(settled(&mut t).0, [Tag::Event(2)]);
        assert_eq!(t.outstanding(), 1);
    }

    /// While publishes lost with their session wait to be put back in line, nothing new is
    /// handed to the client (it would overtake them).
    #[test]
    fn nothing_is_published_before_lost_publishes_are_back_in_line() {
        let (client, _eventloop) = AsyncClient::new(MqttOptions::new("t", "127.0.0.1", 1), 8);
        let link = Link::default();
        link.update(|s| {
            s.tracker.queue(Tag::Event(1));
            s.tracker.on_sent(1);
        });
        link.on_connect(false);
        let conn = link.current().expect("connected");
        let publish =
            || link.try_publish(&client, conn, Tag::Event(2), "t/x".into(), false, vec![1]);
        assert_eq!(publish(), Err(NotPublished::LostPending));
        let (_, lost) = link.take_settled();
        assert_eq!(lost, [Tag::Event(1)]);
        assert_eq!(publish(), Ok(()));
    }

    /// A topic whose key would make outgoing topics too long for MQTT is refused at ingest
    /// under its own counter; a key at the limit is taken.
    #[test]
    fn sensor_keys_longer_than_the_limit_are_refused_and_counted() {
        let t = TopicTemplate::parse("sensors/{site}/{sensor}").unwrap();
        let m = Metrics::default();
        let long = format!("sensors/s/{}", "x".repeat(65_520));
        assert_eq!(sensor_key(&t, &long, &m, 0), None);
        assert_eq!(m.snapshot().oversized_keys, 1);
        assert_eq!(m.snapshot().unknown_topics, 0);
        // "s/" + 254 bytes: exactly MAX_KEY_BYTES.
        let at_limit = format!("sensors/s/{}", "y".repeat(MAX_KEY_BYTES - 2));
        let key = sensor_key(&t, &at_limit, &m, 0).expect("a key at the limit is taken");
        assert_eq!(key.len(), MAX_KEY_BYTES);
        let over = format!("sensors/s/{}", "y".repeat(MAX_KEY_BYTES - 1));
        assert_eq!(sensor_key(&t, &over, &m, 0), None);
        assert_eq!(sensor_key(&t, "other/s/x", &m, 0), None);
        let s = m.snapshot();
        assert_eq!((s.oversized_keys, s.unknown_topics), (2, 1));
    }

    /// rumqttc answers an invalid publish and a full queue with the same error; the link
    /// tells them apart, so only a full queue is retried.
    #[test]
    fn invalid_publishes_are_told_apart_from_a_full_queue() {
        let (client, _eventloop) = AsyncClient::new(MqttOptions::new("t", "127.0.0.1", 1), 1);
        let link = Link::default();
        link.on_connect(false);
        let conn = link.current().expect("connected");
        let publish =
            |topic: String| link.try_publish(&client, conn, Tag::Event(1), topic, false, vec![1]);
        assert_eq!(
            publish("t/".to_string() + &"x".repeat(MAX_TOPIC_BYTES)),
            Err(NotPublished::Invalid)
        );
        assert_eq!(publish("t/#".into()), Err(NotPublished::Invalid));
        assert_eq!(publish("x".repeat(MAX_TOPIC_BYTES)), Ok(()));
        assert_eq!(publish("t/y".into()), Err(NotPublished::QueueFull));
    }

    /// An event whose topic is too long for MQTT is dropped and counted, and the events
    /// behind it still go out: before, it stayed the oldest event and was retried forever.
    #[test]
    fn an_unpublishable_event_is_dropped_and_the_next_goes_out() {
        let settings = crate::config::load(crate::config::Source::Default).unwrap();
        let (client, _eventloop) = AsyncClient::new(MqttOptions::new("t", "127.0.0.1", 1), 8);
        let link = Link::default();
        link.on_connect(false);
        let conn = link.current().expect("connected");
        let metrics = Metrics::default();
        let mut outbox = Outbox::in_memory(8);
        for key in [
            "k/".to_string() + &"x".repeat(MAX_TOPIC_BYTES),
            "k/ok".into(),
        ] {
            let ev = crate::wire::NoDataMessage::new("n", &key, true, 0, 1_000, 1);
            outbox.push(OutboundEvent::NoData(ev), Some(conn)).unwrap();
        }
        let sent = publish_window(&settings, &client, &link, conn, &mut outbox, &metrics);
        assert_eq!(sent, Ok(()));
        assert_eq!(outbox.len(), 1);
        let front = outbox
            .front()
            .expect("the valid event stays until its PUBACK");
        assert_eq!((front.event.key(), front.in_flight), ("k/ok", true));
        let s = metrics.snapshot();
        assert_eq!((s.invalid_publishes, s.dropped_events), (1, 1));
    }
}
