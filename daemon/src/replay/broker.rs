//! Replay onto a broker: recorded messages published as live sensor traffic, paced by their
//! event times (`time_ms`) at a multiple of real time, or as fast as the broker takes them.
//! Used by `sparsewatch replay --broker` and by the demo.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use indicatif::ProgressBar;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::fixtures::FixtureMessage;

/// Where and how fast to publish.
#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    /// Multiple of real time; 0 = as fast as possible.
    pub speed: f64,
}

/// Publishes `messages` (in order, each with its recorded QoS) paced by their event times.
/// Waits until the broker has acknowledged every QoS 1 message (30 s at most); returns the
/// number of messages published.
pub async fn publish(
    target: Target,
    messages: Vec<FixtureMessage>,
    progress: ProgressBar,
) -> Result<u64> {
    let Some(first) = messages.first() else {
        return Ok(0);
    };
    let t0 = first.time_ms;
    // Fail fast on a wrong address instead of queueing publishes for a broker that is not there.
    let reach = tokio::net::TcpStream::connect((target.host.as_str(), target.port));
    match tokio::time::timeout(Duration::from_secs(5), reach).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => bail!(
            "cannot reach the broker at {}:{}: {e}",
            target.host,
            target.port
        ),
        Err(_) => bail!(
            "cannot reach the broker at {}:{}: timed out",
            target.host,
            target.port
        ),
    }
    let mut o = MqttOptions::new(target.client_id.clone(), target.host.clone(), target.port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(o, 256);
    let acked = Arc::new(AtomicU64::new(0));
    let acks = acked.clone();
    let (host, port) = (target.host.clone(), target.port);
    let poller = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    acks.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
                Ok(_) => {}
                Err(e) => {
                    eprintln!("replay connection to {host}:{port}: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    let start = Instant::now();
    let (mut qos1, mut qos0) = (0u64, 0u64);
    for m in &messages {
        if target.speed > 0.0 {
            let due = Duration::from_secs_f64((m.time_ms - t0) as f64 / 1000.0 / target.speed);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        let qos = if m.qos == 0 {
            qos0 += 1;
            QoS::AtMostOnce
        } else {
            qos1 += 1;
            QoS::AtLeastOnce
        };
        client
            .publish(m.topic.clone(), qos, false, m.payload.clone().into_bytes())
            .await?;
        progress.inc(1);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.load(Ordering::Relaxed) < qos1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), poller).await;
    let got = acked.load(Ordering::Relaxed);
    if got < qos1 {
        bail!("the broker acknowledged only {got} of {qos1} QoS 1 messages");
    }
    Ok(qos1 + qos0)
}
