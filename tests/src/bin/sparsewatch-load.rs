//! `sparsewatch-load`: load numbers for sparsewatch against Mosquitto on loopback.
//!
//! Every run starts its own private Mosquitto (the e2e harness's, with unlimited queues and
//! in-flight windows, so the broker never drops silently) and, except `relay`, its own
//! `sparsewatch run` (the binary cargo built, or `SPARSEWATCH_BIN`). Three modes:
//!
//! - `relay`: Mosquitto's own ceiling. A plain rumqttc publisher → Mosquitto → a plain rumqttc
//!   subscriber, no daemon; the same payloads, keys and QoS as the other modes.
//! - `ingest`: zero-loss sustained ingest. Publishes `rate` messages/s (0 = as fast as the
//!   client goes) for `duration` seconds over `keys` sensor keys, waits until the daemon's
//!   summary stops moving, stops it with SIGTERM and compares its final `samples=` with the
//!   number sent. Reports the daemon's CPU (utime + stime from /proc/<pid>/stat over the run)
//!   and peak RSS (VmHWM), and Mosquitto's CPU.
//! - `latency`: publish → anomaly-event latency. Per key a Gaussian stream with a spike of
//!   `spike` standard deviations for `spike_len` samples every `period` samples (after the
//!   detector's warm-up), so events keep coming; a subscriber on the anomaly topics matches
//!   each event's `window_end_ms` to the moment the sample that completed that window was
//!   handed to the client, and reports p50/p99/p99.9.
//!
//! Event time: key k's j-th sample has `ts = base + 10·j` ms with `base` 30 days ago, so
//! timestamps are strictly increasing per key whatever the rate and never in the future.
//!
//! Examples (release builds; see BENCHMARKS.md "Load"):
//!
//! ```sh
//! cargo build --release -p sparsewatch -p sparsewatch-e2e --bins
//! target/release/sparsewatch-load relay --qos 0 --rate 0 --keys 100 --duration 10
//! target/release/sparsewatch-load ingest --qos 1 --rate 20000 --keys 1000 --duration 20
//! target/release/sparsewatch-load latency --qos 1 --rate 10000 --keys 100 --duration 40
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, NetworkOptions, Packet, QoS};
use sparsewatch_e2e::{BrokerOptions, Daemon, Mosquitto, Summary, TestConfig};

#[derive(Parser)]
#[command(about = "Load generator for sparsewatch: Mosquitto ceiling, sustained ingest, latency")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Publisher → Mosquitto → subscriber, no daemon: the broker's own ceiling.
    Relay(Load),
    /// Sustained ingest through the daemon: sent vs the daemon's processed samples.
    Ingest(Load),
    /// Publish → anomaly-event latency through the daemon.
    Latency(LatencyArgs),
}

#[derive(Args, Clone)]
struct Load {
    /// QoS of the publisher and of the subscription (0 or 1).
    #[arg(long, default_value_t = 0)]
    qos: u8,
    /// Target messages per second over all keys; 0 = as fast as the client can publish.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Distinct sensor keys, published round-robin.
    #[arg(long, default_value_t = 100)]
    keys: u64,
    /// Seconds of publishing (at rate 0: messages = 50 000 × duration).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Extra TOML appended to the daemon's config (e.g. "[workers]\ncount = 1").
    #[arg(long, default_value = "")]
    daemon_config: String,
    /// TCP_NODELAY on the broker's sockets (`set_tcp_nodelay true`) and on the load
    /// generator's clients (the daemon always sets it on its own): no Nagle delays.
    #[arg(long)]
    nodelay: bool,
}

#[derive(Args, Clone)]
struct LatencyArgs {
    #[command(flatten)]
    load: Load,
    /// Samples per key between spikes (after the warm-up).
    #[arg(long, default_value_t = 600)]
    period: u64,
    /// Samples per spike.
    #[arg(long, default_value_t = 16)]
    spike_len: u64,
    /// Spike height in standard deviations.
    #[arg(long, default_value_t = 12.0)]
    spike: f64,
    /// Samples per key before the first spike (the detector's warm-up is ~1 100).
    #[arg(long, default_value_t = 1_500)]
    warmup: u64,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // The daemon under load is the `sparsewatch` built beside this binary, unless named.
    if std::env::var_os("SPARSEWATCH_BIN").is_none() {
        let exe = std::env::current_exe()?;
        let sibling = exe.with_file_name(format!("sparsewatch{}", std::env::consts::EXE_SUFFIX));
        if !sibling.is_file() {
            bail!("{} not found: build it (cargo build --release -p sparsewatch) or set SPARSEWATCH_BIN", sibling.display());
        }
        // Still single-threaded: the runtime starts below.
        std::env::set_var("SPARSEWATCH_BIN", sibling);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!("machine: {} | {}", cpu_model(), load_average());
    match cli.mode {
        Mode::Relay(l) => rt.block_on(relay(l)),
        Mode::Ingest(l) => rt.block_on(ingest(l)),
        Mode::Latency(a) => rt.block_on(latency(a)),
    }
}

fn qos(q: u8) -> QoS {
    if q == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

fn total_messages(l: &Load) -> u64 {
    let rate = if l.rate == 0 { 50_000 } else { l.rate };
    rate * l.duration
}

/// Event time of the first sample of every key: 30 days ago, whole seconds.
fn base_ts_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64;
    (now - 30 * 86_400_000) / 1000 * 1000
}

/// The harness's private Mosquitto, with TCP_NODELAY when `--nodelay` is given.
fn start_broker(l: &Load) -> Result<Mosquitto> {
    Mosquitto::start_with(&BrokerOptions {
        tcp_nodelay: l.nodelay,
        ..BrokerOptions::default()
    })
}

/// A connected rumqttc client with its event loop polled on a task; incoming PUBLISH packets
/// go to `on_publish`. Returns once the CONNACK arrived.
async fn connect(
    port: u16,
    nodelay: bool,
    id: &str,
    mut on_publish: impl FnMut(&rumqttc::Publish) + Send + 'static,
) -> Result<(AsyncClient, tokio::task::JoinHandle<()>)> {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_session(true);
    o.set_inflight(1_000);
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut el): (AsyncClient, EventLoop) = AsyncClient::new(o, 10_000);
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(nodelay);
    el.set_network_options(net);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut tx = Some(tx);
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => on_publish(&p),
                Ok(_) => {}
                Err(e) => {
                    eprintln!("load client error: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .context("no CONNACK within 10 s")??;
    Ok((client, task))
}

/// Subscribes and waits until the SUBACK has certainly been processed (a retained probe).
async fn subscribe(client: &AsyncClient, filter: &str, q: QoS) -> Result<()> {
    client.subscribe(filter, q).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(())
}

/// What one publishing run did.
struct Sent {
    count: u64,
    elapsed: Duration,
}

/// Publishes `total` messages round-robin over `keys` keys at `rate` per second (0 = flat out),
/// recording the instant each was handed to the client in `stamps` (when given).
async fn publish(
    client: &AsyncClient,
    root: &str,
    l: &Load,
    total: u64,
    base: i64,
    value: impl Fn(u64, u64) -> f64,
    stamps: Option<&Mutex<Vec<Instant>>>,
) -> Result<Sent> {
    let q = qos(l.qos);
    let topics: Vec<String> = (0..l.keys).map(|k| format!("{root}/load/k{k}")).collect();
    let start = Instant::now();
    for i in 0..total {
        if l.rate > 0 {
            let due = start + Duration::from_secs_f64(i as f64 / l.rate as f64);
            let now = Instant::now();
            if due > now + Duration::from_millis(1) {
                tokio::time::sleep(due - now).await;
            }
        }
        let (k, j) = (i % l.keys, i / l.keys);
        let ts = base + 10 * j as i64;
        let payload = format!("{{\"ts\":{ts},\"value\":{:.4}}}", value(k, j));
        if let Some(s) = stamps {
            s.lock().expect("stamps").push(Instant::now());
        }
        client
            .publish(topics[k as usize].clone(), q, false, payload)
            .await?;
    }
    Ok(Sent {
        count: total,
        elapsed: start.elapsed(),
    })
}

/// A seeded standard normal per (key, index): SplitMix64 → Box–Muller.
fn gaussian(k: u64, j: u64) -> f64 {
    let mut z = (k << 40) ^ j ^ 0x5EED_0E2E;
    let mut next = || {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut x = z;
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((x ^ (x >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    let (u1, u2) = (next().max(1e-300), next());
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // Fields after the ")" that closes the command name: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 =
        f[11].parse::<f64>().unwrap_or(f64::NAN) + f[12].parse::<f64>().unwrap_or(f64::NAN);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz
}

/// Peak resident set size (VmHWM) of a process, in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_string();
    let cores = info.lines().filter(|l| l.starts_with("processor")).count();
    format!("{model}, {cores} cores")
}

fn load_average() -> String {
    let l = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let l: Vec<&str> = l.split_whitespace().take(3).collect();
    format!("load average {}", l.join(" "))
}

/// CPU meters of the processes in a run, read at the start and end of a span.
struct Cpu {
    pids: Vec<(&'static str, u32)>,
    start: Vec<f64>,
    at: Instant,
}

impl Cpu {
    fn start(pids: Vec<(&'static str, u32)>) -> Self {
        let start = pids.iter().map(|(_, p)| cpu_secs(*p)).collect();
        Cpu {
            pids,
            start,
            at: Instant::now(),
        }
    }

    /// "name x.xx cores" for each process over the span so far.
    fn report(&self) -> String {
        let wall = self.at.elapsed().as_secs_f64();
        self.pids
            .iter()
            .zip(&self.start)
            .map(|((name, pid), s)| format!("{name} {:.2} cores", (cpu_secs(*pid) - s) / wall))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

async fn relay(l: Load) -> Result<()> {
    let broker = start_broker(&l)?;
    let root = sparsewatch_e2e::unique("relay");
    let received = Arc::new(AtomicU64::new(0));
    let last = Arc::new(Mutex::new(Instant::now()));
    let (rx_count, rx_last) = (received.clone(), last.clone());
    let (sub, _sub_task) = connect(
        broker.port(),
        l.nodelay,
        &format!("{root}-sub"),
        move |_| {
            rx_count.fetch_add(1, Ordering::Relaxed);
            *rx_last.lock().expect("last") = Instant::now();
        },
    )
    .await?;
    subscribe(&sub, &format!("{root}/#"), qos(l.qos)).await?;
    let (publisher, _pub_task) =
        connect(broker.port(), l.nodelay, &format!("{root}-pub"), |_| {}).await?;
    let total = total_messages(&l);
    let cpu = Cpu::start(vec![
        ("mosquitto", broker.pid()),
        ("loadgen", std::process::id()),
    ]);
    let start = Instant::now();
    let sent = publish(&publisher, &root, &l, total, base_ts_ms(), gaussian, None).await?;
    wait_quiet(|| received.load(Ordering::Relaxed), total).await;
    let got = received.load(Ordering::Relaxed);
    let span = last.lock().expect("last").duration_since(start);
    println!(
        "relay qos={} keys={} rate={} sent={} in {:.2}s ({:.0}/s) received={} lost={} \
         delivered {:.0}/s | {}",
        l.qos,
        l.keys,
        rate_label(l.rate),
        sent.count,
        sent.elapsed.as_secs_f64(),
        sent.count as f64 / sent.elapsed.as_secs_f64(),
        got,
        sent.count - got.min(sent.count),
        got as f64 / span.as_secs_f64(),
        cpu.report()
    );
    Ok(())
}

fn rate_label(rate: u64) -> String {
    if rate == 0 {
        "max".into()
    } else {
        rate.to_string()
    }
}

/// Waits until `count()` reaches `want` or has not moved for 3 s.
async fn wait_quiet(count: impl Fn() -> u64, want: u64) {
    let mut last = count();
    let mut still = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let c = count();
        if c >= want {
            return;
        }
        if c != last {
            last = c;
            still = Instant::now();
        } else if still.elapsed() > Duration::from_secs(3) {
            return;
        }
    }
}

/// A private Mosquitto plus a daemon on it, started and online.
async fn start_daemon(broker: &Mosquitto, name: &str, l: &Load) -> Result<Daemon> {
    let mut config = TestConfig::new(name, broker.port());
    config.mqtt_extra = format!("qos = {}", l.qos);
    config.extra = l.daemon_config.replace("\\n", "\n");
    let mut daemon = Daemon::start(&config)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while daemon
        .process()
        .wait_for_line(Duration::from_millis(100), |line| {
            line.contains("connected to broker")
        })
        .is_none()
    {
        if !daemon.is_running() || Instant::now() > deadline {
            bail!("the daemon did not connect:\n{}", daemon.output());
        }
    }
    // The subscription goes out right after the CONNACK; give it a moment to be granted.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(daemon)
}

async fn ingest(l: Load) -> Result<()> {
    let broker = start_broker(&l)?;
    let mut daemon = start_daemon(&broker, "load", &l).await?;
    let root = daemon.config().input_root.clone();
    let (publisher, _task) =
        connect(broker.port(), l.nodelay, &format!("{root}-pub"), |_| {}).await?;
    let total = total_messages(&l);
    let pid = daemon.process().pid();
    let cpu = Cpu::start(vec![
        ("daemon", pid),
        ("mosquitto", broker.pid()),
        ("loadgen", std::process::id()),
    ]);
    let sent = publish(&publisher, &root, &l, total, base_ts_ms(), gaussian, None).await?;
    let done_sending = Instant::now();
    let taken = |s: &Summary| s.get("samples") + s.get("payload_errors") + s.get("drops");
    wait_quiet(|| daemon.last_summary().map_or(0, |s| taken(&s)), total).await;
    let lag = done_sending.elapsed();
    let cpu_report = cpu.report();
    let rss = peak_rss_mib(pid);
    daemon.stop()?;
    let last = daemon
        .process()
        .lines()
        .iter()
        .rev()
        .find(|line| line.contains("final summary"))
        .and_then(|line| Summary::parse(line))
        .context("no final summary")?;
    let samples = last.get("samples");
    println!(
        "ingest qos={} keys={} rate={} sent={} in {:.2}s ({:.0}/s) daemon messages={} samples={} \
         lost={} dropped_samples={} out_of_order={} drain {:.1}s | peak RSS {:.1} MiB | {}",
        l.qos,
        l.keys,
        rate_label(l.rate),
        sent.count,
        sent.elapsed.as_secs_f64(),
        sent.count as f64 / sent.elapsed.as_secs_f64(),
        last.get("messages"),
        samples,
        sent.count.saturating_sub(samples),
        last.get("dropped_samples"),
        last.get("out_of_order"),
        lag.as_secs_f64(),
        rss,
        cpu_report
    );
    println!("  {}", last.line.trim());
    Ok(())
}

async fn latency(a: LatencyArgs) -> Result<()> {
    let l = a.load.clone();
    let broker = start_broker(&l)?;
    let mut daemon = start_daemon(&broker, "latency", &l).await?;
    let config = daemon.config().clone();
    let root = config.input_root.clone();
    let stamps: Arc<Mutex<Vec<Instant>>> = Arc::new(Mutex::new(Vec::new()));
    let events: Arc<Mutex<Vec<(Instant, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    let (sub, _sub_task) = connect(broker.port(), l.nodelay, &format!("{root}-sub"), move |p| {
        let at = Instant::now();
        ev.lock()
            .expect("events")
            .push((at, String::from_utf8_lossy(&p.payload).into_owned()));
    })
    .await?;
    let anomaly_filter = format!("{}/{}/anomaly/#", config.prefix, config.node_id);
    subscribe(&sub, &anomaly_filter, QoS::AtLeastOnce).await?;
    let (publisher, _pub_task) =
        connect(broker.port(), l.nodelay, &format!("{root}-pub"), |_| {}).await?;
    let total = total_messages(&l);
    let pid = daemon.process().pid();
    let cpu = Cpu::start(vec![
        ("daemon", pid),
        ("mosquitto", broker.pid()),
        ("loadgen", std::process::id()),
    ]);
    let (period, spike_len, spike, warmup) = (a.period, a.spike_len, a.spike, a.warmup);
    let value = move |k: u64, j: u64| {
        let step = j >= warmup && (j - warmup) % period < spike_len;
        10.0 + gaussian(k, j) + if step { spike } else { 0.0 }
    };
    let base = base_ts_ms();
    let sent = publish(&publisher, &root, &l, total, base, value, Some(&stamps)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu_report = cpu.report();
    let rss = peak_rss_mib(pid);
    daemon.stop()?;
    let final_line = daemon
        .process()
        .lines()
        .iter()
        .rev()
        .find(|line| line.contains("final summary"))
        .cloned()
        .unwrap_or_default();

    let stamps = stamps.lock().expect("stamps");
    let mut lat_ms: Vec<f64> = vec![];
    let mut unmatched = 0;
    for (at, body) in events.lock().expect("events").iter() {
        let v: serde_json::Value = serde_json::from_str(body)?;
        let key = v["key"].as_str().unwrap_or_default();
        let k: Option<u64> = key.strip_prefix("load/k").and_then(|k| k.parse().ok());
        let end = v["window_end_ms"].as_i64();
        match (k, end) {
            (Some(k), Some(end)) if (end - base) % 10 == 0 && end >= base => {
                let j = ((end - base) / 10) as u64;
                match stamps.get((j * l.keys + k) as usize) {
                    Some(sent_at) => lat_ms.push(at.duration_since(*sent_at).as_secs_f64() * 1e3),
                    None => unmatched += 1,
                }
            }
            _ => unmatched += 1,
        }
    }
    lat_ms.sort_by(f64::total_cmp);
    let pct = |p: f64| -> f64 {
        if lat_ms.is_empty() {
            return f64::NAN;
        }
        let i = ((p / 100.0) * (lat_ms.len() - 1) as f64).round() as usize;
        lat_ms[i]
    };
    println!(
        "latency qos={} keys={} rate={} sent={} in {:.2}s ({:.0}/s) events={} unmatched={} \
         p50={:.2}ms p99={:.2}ms p99.9={:.2}ms max={:.2}ms | peak RSS {:.1} MiB | {}",
        l.qos,
        l.keys,
        rate_label(l.rate),
        sent.count,
        sent.elapsed.as_secs_f64(),
        sent.count as f64 / sent.elapsed.as_secs_f64(),
        lat_ms.len(),
        unmatched,
        pct(50.0),
        pct(99.0),
        pct(99.9),
        lat_ms.last().copied().unwrap_or(f64::NAN),
        rss,
        cpu_report
    );
    if let Some(s) = Summary::parse(&final_line) {
        println!("  {}", s.line.trim());
    }
    Ok(())
}
