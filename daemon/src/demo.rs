//! `sparsewatch demo`: the whole path on one machine with nothing installed. An embedded
//! rumqttd broker on a free loopback port, the daemon against it, a recorded fixture replayed
//! onto it as live sensor traffic (faster than real time), and a subscriber that prints the
//! anomaly events as they arrive, then a summary against the fixture's labels.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::{mpsc, oneshot};

use crate::config::{self, Source};
use crate::fixtures::{self, Labels};
use crate::metrics::Metrics;
use crate::service;
use crate::wire::{AnomalyMessage, StatusMessage};

pub struct DemoOptions {
    pub fixture: PathBuf,
    /// Replay speed as a multiple of real time; 0 = as fast as possible.
    pub speed: f64,
}

/// Runs the demo and prints what a subscriber would see. Returns the number of anomaly events.
pub async fn run(opts: DemoOptions) -> anyhow::Result<usize> {
    let fixture_path = fixtures::locate(&opts.fixture);
    let messages = fixtures::read_jsonl(&fixture_path)?;
    let labels = fixtures::read_labels(&fixture_path)?;
    let port = free_port()?;
    start_broker(port)?;
    wait_for_port(port).await?;
    println!("embedded MQTT broker (rumqttd) listening on 127.0.0.1:{port}");

    let settings = config::load(Source::Text(&format!(
        "[node]\nid = \"demo\"\n[mqtt]\nport = {port}\nsubscribe = [\"sensors/#\"]\n[log]\nsummary_interval_secs = 0\n[http]\nenabled = false\n"
    )))?;
    let metrics = Arc::new(Metrics::default());
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let daemon = tokio::spawn(service::run_with_metrics(
        settings.clone(),
        metrics.clone(),
        async {
            let _ = stop_rx.await;
        },
    ));

    let root = settings.topic_root();
    let (sub_client, events) = subscribe(port, &format!("{root}/#")).await?;
    let mut printer = Printer::new(events, labels.clone());
    printer.wait_online(Duration::from_secs(10)).await?;

    let span = messages.last().unwrap().time_ms - messages[0].time_ms;
    println!(
        "replaying {} ({} messages, {:.1} h of sensor time) at {}",
        fixture_path.display(),
        messages.len(),
        span as f64 / 3.6e6,
        if opts.speed > 0.0 {
            format!("{}x real time", opts.speed)
        } else {
            "full speed".into()
        }
    );
    println!("subscribed to {root}/# — anomaly events appear below as they arrive:\n");
    let started = Instant::now();
    let target = crate::replay::broker::Target {
        host: "127.0.0.1".into(),
        port,
        client_id: "sparsewatch-demo-replay".into(),
        speed: opts.speed,
    };
    let replay = tokio::spawn(crate::replay::broker::publish(
        target,
        messages.clone(),
        indicatif::ProgressBar::hidden(),
    ));
    let published = loop {
        printer.next_event(Duration::from_millis(50)).await;
        if replay.is_finished() {
            break replay.await.context("replay task")??;
        }
    };
    // Wait until the daemon has taken every message in (or says why not).
    let deadline = Instant::now() + Duration::from_secs(30);
    while metrics.snapshot().messages < published && Instant::now() < deadline {
        printer.next_event(Duration::from_millis(50)).await;
    }
    let settle = Instant::now() + Duration::from_millis(500);
    while Instant::now() < settle {
        printer.next_event(Duration::from_millis(50)).await;
    }
    let _ = stop_tx.send(());
    let last = daemon.await.context("daemon task")??;
    // The offline status arrives last.
    let settle = Instant::now() + Duration::from_millis(300);
    while Instant::now() < settle {
        printer.next_event(Duration::from_millis(50)).await;
    }
    let _ = sub_client.disconnect().await;
    printer.summary(published, &last, started.elapsed());
    Ok(printer.anomalies.len())
}

fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("cannot bind a loopback port")?;
    Ok(l.local_addr()?.port())
}

fn start_broker(port: u16) -> anyhow::Result<()> {
    use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
    let server = ServerSettings {
        name: "demo".into(),
        listen: SocketAddr::from(([127, 0, 0, 1], port)),
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: 1 << 20,
            max_inflight_count: 500,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 64,
            max_outgoing_packet_count: 1000,
            max_segment_size: 16 << 20,
            max_segment_count: 10,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("demo".to_string(), server)])),
        v5: None,
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    };
    std::thread::Builder::new()
        .name("demo-broker".into())
        .spawn(move || {
            if let Err(e) = Broker::new(config).start() {
                eprintln!("embedded broker stopped: {e}");
            }
        })
        .context("cannot start the embedded broker")?;
    Ok(())
}

async fn wait_for_port(port: u16) -> anyhow::Result<()> {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the embedded broker did not start listening on port {port}")
}

/// Messages received by the demo's subscriber.
enum Received {
    Status(StatusMessage),
    Anomaly(AnomalyMessage),
}

async fn subscribe(
    port: u16,
    filter: &str,
) -> anyhow::Result<(AsyncClient, mpsc::Receiver<Received>)> {
    let mut o = MqttOptions::new("sparsewatch-demo-subscriber", "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(o, 64);
    client.subscribe(filter, QoS::AtLeastOnce).await?;
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let msg = if p.topic.ends_with("/status") {
                        serde_json::from_slice(&p.payload)
                            .ok()
                            .map(Received::Status)
                    } else {
                        serde_json::from_slice(&p.payload)
                            .ok()
                            .map(Received::Anomaly)
                    };
                    if let Some(m) = msg {
                        if tx.send(m).await.is_err() {
                            break;
                        }
                    }
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    Ok((client, rx))
}

struct Printer {
    rx: mpsc::Receiver<Received>,
    labels: Option<Labels>,
    anomalies: Vec<AnomalyMessage>,
    online: bool,
    offline: bool,
}

impl Printer {
    fn new(rx: mpsc::Receiver<Received>, labels: Option<Labels>) -> Self {
        Self {
            rx,
            labels,
            anomalies: vec![],
            online: false,
            offline: false,
        }
    }

    async fn wait_online(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while !self.online {
            if Instant::now() > deadline {
                bail!("the daemon did not come online within {timeout:?}");
            }
            self.next_event(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Prints the next message if one arrives within `wait`.
    async fn next_event(&mut self, wait: Duration) {
        let Ok(Some(msg)) = tokio::time::timeout(wait, self.rx.recv()).await else {
            return;
        };
        match msg {
            Received::Status(s) => {
                println!(
                    "status   {} is {} (sparsewatch {}, started {})",
                    s.node, s.state, s.version, s.started_at
                );
                self.online |= s.state == "online";
                self.offline |= self.online && s.state == "offline";
            }
            Received::Anomaly(a) => {
                println!(
                    "anomaly  {} seq={} window {} .. {} likelihood={:.6} score={:.3} channel={}{}",
                    a.key,
                    a.seq,
                    a.window_start,
                    a.window_end,
                    a.likelihood,
                    a.score,
                    a.channel,
                    self.verdict(&a)
                );
                self.anomalies.push(a);
            }
        }
    }

    fn verdict(&self, a: &AnomalyMessage) -> String {
        let Some(labels) = &self.labels else {
            return String::new();
        };
        match labels.faults.iter().find(|f| {
            f.key == a.key && a.window_end_ms >= f.start_ms && a.window_start_ms <= f.end_ms
        }) {
            Some(f) => format!(
                "  <- {} (injected at {}, +{:.1} min)",
                f.kind,
                crate::wire::events::rfc3339(f.start_ms),
                (a.window_end_ms - f.start_ms) as f64 / 60_000.0
            ),
            None => "  <- no fault labelled here (false alarm)".into(),
        }
    }

    fn summary(&self, published: u64, last: &crate::metrics::Snapshot, took: Duration) {
        println!();
        println!(
            "summary  replayed {published} messages in {:.1} s",
            took.as_secs_f64()
        );
        println!(
            "         daemon: {} messages, {} samples, {} windows, {} detections, {} payload errors, {} drops",
            last.messages, last.samples, last.windows, last.detections, last.payload_errors, last.drops()
        );
        println!(
            "         subscriber: {} anomaly events, status went offline on stop: {}",
            self.anomalies.len(),
            if self.offline { "yes" } else { "no" }
        );
        if let Some(labels) = &self.labels {
            for f in &labels.faults {
                let hit = self.anomalies.iter().find(|a| {
                    a.key == f.key && a.window_end_ms >= f.start_ms && a.window_start_ms <= f.end_ms
                });
                match hit {
                    Some(a) => println!(
                        "         fault {} on {}: detected {:.1} min after injection",
                        f.kind,
                        f.key,
                        (a.window_end_ms - f.start_ms) as f64 / 60_000.0
                    ),
                    None => println!("         fault {} on {}: NOT detected", f.kind, f.key),
                }
            }
            let false_alarms = self
                .anomalies
                .iter()
                .filter(|a| {
                    !labels.faults.iter().any(|f| {
                        f.key == a.key
                            && a.window_end_ms >= f.start_ms
                            && a.window_start_ms <= f.end_ms
                    })
                })
                .count();
            println!("         false alarms: {false_alarms}");
        }
    }
}
