//! Configuration: one TOML file plus `SPARSEWATCH__…` environment overrides, on top of the
//! compiled-in default (`default.toml`, identical to `deploy/config/sparsewatch.example.toml`).
//!
//! Strict: unknown keys are errors, a value must have the type of the default's (`types`: no
//! `1883.5` rounded to a port, no `"yes"` taken for `true`), and every value is checked before
//! the daemon starts, so a bad configuration is reported with the key at fault and exit code
//! 2, never half-applied.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sparsewatch_dsp::{PipelineParams, ValidPipelineParams, MAX_CHANNELS};
use thiserror::Error;

use crate::mqtt::security::MqttSecurity;
use crate::wire::{PayloadLimits, TopicTemplate};

mod types;

/// Upper bound of `mqtt.reconnect_max_ms`: one hour. Also keeps the doubling backoff far from
/// `Duration` overflow.
const MAX_RECONNECT_MS: u64 = 3_600_000;
/// Upper bound of `log.summary_interval_secs`: one day.
const MAX_SUMMARY_SECS: u64 = 86_400;
/// Upper bound of `mqtt.max_future_ms` and `mqtt.max_past_ms`: 100 years.
const MAX_SKEW_MS: u64 = 100 * 366 * 86_400_000;

/// The compiled-in default configuration, with a comment on every key.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

/// Environment variable prefix; `SPARSEWATCH__MQTT__PORT=1884` sets `mqtt.port`.
pub const ENV_PREFIX: &str = "SPARSEWATCH";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub node: NodeSettings,
    pub mqtt: MqttSettings,
    pub topics: TopicSettings,
    pub workers: WorkerSettings,
    pub output: OutputSettings,
    pub log: LogSettings,
    pub streams: StreamSettings,
    pub http: HttpSettings,
    pub state: StateSettings,
    pub pipeline: PipelineParams,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSettings {
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSettings {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub keep_alive_secs: u64,
    pub subscribe: Vec<String>,
    pub qos: u8,
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
    pub max_payload_bytes: usize,
    pub request_queue: usize,
    /// Keep the session (subscriptions and unacknowledged QoS 1 messages) at the broker
    /// across reconnects and restarts (MQTT clean session off).
    pub persistent_session: bool,
    /// What happens to a message whose worker queue is full.
    pub overload: OverloadPolicy,
    /// Empty: connect without credentials.
    pub username: String,
    /// File holding the password (one line; a trailing newline is ignored). A relative path
    /// is looked up in `$CREDENTIALS_DIRECTORY` when set (systemd `LoadCredential=`).
    pub password_file: String,
    pub tls: TlsSettings,
    pub max_channels: usize,
    pub max_future_ms: u64,
    pub max_past_ms: u64,
}

/// What the ingest does with a message when its worker's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverloadPolicy {
    /// Stop reading from the broker until the worker has room; the message is neither dropped
    /// nor acknowledged, so the broker holds everything behind it.
    Hold,
    /// Drop the message, count it (`dropped_samples`) and acknowledge it anyway.
    Shed,
}

/// TLS towards the broker (rustls, ring provider).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    pub enabled: bool,
    /// PEM file of the CA certificate(s) the broker's certificate must chain to. Empty: the
    /// system's trust store.
    pub ca_file: String,
    /// PEM client certificate chain and private key for mutual TLS; both or neither. Relative
    /// paths are looked up in `$CREDENTIALS_DIRECTORY` when set.
    pub client_cert_file: String,
    pub client_key_file: String,
}

/// The health and metrics HTTP endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub enabled: bool,
    /// `ip:port` to listen on; port 0 picks a free port (logged at start).
    pub listen: String,
    /// `/healthz` fails when a DSP worker has not made progress for this long (seconds).
    pub worker_stall_secs: u64,
    /// `/readyz` fails when no message has arrived for this long (seconds); 0 = never.
    pub input_stall_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSettings {
    pub template: String,
    pub prefix: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    pub count: usize,
    pub queue_capacity: usize,
    pub max_streams: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSettings {
    pub queue_capacity: usize,
    pub buffer: BufferSettings,
    pub codes: CodeOutputSettings,
}

/// The outbox: anomaly and no-data events kept until the broker acknowledges them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BufferSettings {
    /// Events held at most; when full, new events are dropped and counted.
    pub capacity: usize,
    /// Append-only spool file; empty keeps the outbox in memory only.
    pub file: String,
    /// Size the spool file may reach before it is compacted.
    pub max_file_bytes: u64,
    /// fsync the spool file after every record.
    pub fsync: bool,
}

/// Per-stream supervision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSettings {
    /// A stream that received data and then none for this long raises a no-data condition
    /// (0 = off).
    pub no_data_after_secs: u64,
}

/// Publishing each window's sparse code on `<prefix>/<node>/code/<key>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeOutputSettings {
    pub enabled: bool,
    pub every: u64,
    pub max_per_sec: u32,
    pub format: CodeFormat,
    pub queue_capacity: usize,
}

/// Encoding of code messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CodeFormat {
    Json,
    Cbor,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub level: String,
    pub summary_interval_secs: u64,
}

/// Checkpoints of the learned state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSettings {
    /// State directory; empty: `$STATE_DIRECTORY` (systemd), else no checkpoints.
    pub dir: String,
    /// Seconds between periodic checkpoints; 0: only at a clean stop.
    pub checkpoint_interval_secs: u64,
}

/// A configuration that could not be loaded. The message names the file or key at fault.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Parse(String),
    #[error("invalid configuration: {key}: {reason}")]
    Invalid { key: String, reason: String },
}

pub(crate) fn invalid(key: &str, reason: impl ToString) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        reason: reason.to_string(),
    }
}

/// Settings that passed every check, with the parts later stages need pre-parsed.
#[derive(Debug, Clone)]
pub struct ValidSettings {
    pub settings: Settings,
    /// TLS configuration and credentials, loaded and checked from their files.
    pub mqtt_security: MqttSecurity,
    /// `http.listen`, parsed.
    pub http_listen: std::net::SocketAddr,
    pub pipeline: ValidPipelineParams,
    pub template: TopicTemplate,
}

impl ValidSettings {
    /// MQTT client id, defaulted from the node id.
    pub fn client_id(&self) -> String {
        if self.settings.mqtt.client_id.is_empty() {
            format!("sparsewatch-{}", self.settings.node.id)
        } else {
            self.settings.mqtt.client_id.clone()
        }
    }

    /// What the payload decoder accepts (`mqtt.max_payload_bytes`, `mqtt.max_channels`,
    /// `mqtt.max_future_ms`, `mqtt.max_past_ms`).
    pub fn payload_limits(&self) -> PayloadLimits {
        let m = &self.settings.mqtt;
        PayloadLimits {
            max_bytes: m.max_payload_bytes,
            max_channels: m.max_channels,
            // Both are checked to be at most MAX_SKEW_MS, far inside i64.
            max_future_ms: m.max_future_ms as i64,
            max_past_ms: m.max_past_ms as i64,
        }
    }

    /// `<prefix>/<node>`, the root of every topic this daemon publishes.
    pub fn topic_root(&self) -> String {
        format!("{}/{}", self.settings.topics.prefix, self.settings.node.id)
    }
}

/// Where configuration text comes from, lowest precedence first.
pub enum Source<'a> {
    /// The compiled-in default only.
    Default,
    /// A TOML file on disk.
    File(&'a Path),
    /// TOML text (tests, the demo).
    Text(&'a str),
}

/// Loads the default, then `source`, then environment overrides, and checks the result.
pub fn load(source: Source<'_>) -> Result<ValidSettings, ConfigError> {
    load_with_env(source, std::env::vars())
}

/// As [`load`], with the environment given explicitly (so tests do not touch the process's).
pub fn load_with_env(
    source: Source<'_>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<ValidSettings, ConfigError> {
    use config::{Config, File, FileFormat};
    let default = types::default_tree();
    // The user's text, kept to check its value types (see `types`) and to see which encoder
    // it chooses before the default is laid under it.
    let user_text = match source {
        Source::Default => None,
        Source::File(path) => {
            // Check it exists ourselves for a plain "cannot read" error, then let `config` parse it
            // from the path so syntax errors name the file.
            let read_error = |source| ConfigError::Read {
                path: path.display().to_string(),
                source,
            };
            let meta = std::fs::metadata(path).map_err(read_error)?;
            // `config` would say "configuration file \"/etc\" not found" for a directory.
            if meta.is_dir() {
                return Err(read_error(std::io::ErrorKind::IsADirectory.into()));
            }
            Some(std::fs::read_to_string(path).map_err(read_error)?)
        }
        Source::Text(text) => Some(text.to_string()),
    };
    let env: Vec<(String, String)> = env.into_iter().collect();
    let encoder_kind = env
        .iter()
        .find(|(var, _)| var == &format!("{ENV_PREFIX}__PIPELINE__MEMORY__ENCODER__KIND"))
        .map(|(_, raw)| raw.clone())
        .or_else(|| {
            // A file with a syntax error is reported by `config` below, naming the file.
            let user = types::parse(user_text.as_deref()?).ok()?;
            match types::lookup(&user, "pipeline.memory.encoder.kind")? {
                types::Value::String(kind) => Some(kind.clone()),
                _ => None,
            }
        });
    let mut builder = Config::builder().add_source(File::from_str(
        &default_under_encoder(encoder_kind.as_deref()),
        FileFormat::Toml,
    ));
    match source {
        Source::Default => {}
        Source::File(path) => {
            builder = builder.add_source(File::from(path).format(FileFormat::Toml));
        }
        Source::Text(text) => {
            builder = builder.add_source(File::from_str(text, FileFormat::Toml));
        }
    }
    let mut credentials_dir = None;
    for (var, raw) in env {
        if var == CREDENTIALS_DIRECTORY {
            credentials_dir = Some(std::path::PathBuf::from(&raw));
        }
        if !var.starts_with(&format!("{ENV_PREFIX}__")) {
            continue;
        }
        // Typed here, not by `config`'s guess from the text (which made `007` the string "7").
        let (key, value) = types::env_override(&var, &raw, &default)?;
        builder = builder.set_override(&key, value).map_err(|e| {
            invalid(
                &var,
                format!("is not a configuration key ({e}): overrides are named {ENV_PREFIX}__<SECTION>__<KEY>"),
            )
        })?;
    }
    let config = builder
        .build()
        .map_err(|e| explain_enum_error(e.to_string()))?;
    let user = user_text.as_deref().map(types::parse).transpose()?;
    let settings = match config.try_deserialize::<Settings>() {
        Ok(settings) => settings,
        Err(e) => {
            // A misspelt choice keeps its own message (the valid values); any other failure
            // of a value of the wrong type is told the same way as the ones `config` converts.
            let error = explain_enum_error(e.to_string());
            if let (ConfigError::Parse(_), Some(user)) = (&error, &user) {
                types::check_file(user, &default)?;
            }
            return Err(error);
        }
    };
    // `config` converted what it could (1883.5 to 1884, "yes" to true): refuse that here.
    if let Some(user) = &user {
        types::check_file(user, &default)?;
    }
    validate_with(settings, credentials_dir.as_deref())
}

/// The compiled-in default to lay under a configuration whose memory encoder is `kind`. The
/// default's `[pipeline.memory.encoder]` holds the atom-slot encoder's keys, and `config`
/// merges tables key by key: under `kind = "projection"` they would stay and be refused as
/// unknown fields of the projection encoder, so that encoder could not be chosen at all. For
/// another kind they are left out (the energy and level sub-tables are common to both).
fn default_under_encoder(kind: Option<&str>) -> std::borrow::Cow<'static, str> {
    const ATOM_SLOT_ONLY: [&str; 4] = ["atoms", "buckets", "window", "min_magnitude"];
    if kind.is_none_or(|k| k == "atom_slot") {
        return DEFAULT_CONFIG.into();
    }
    let mut section = "";
    let mut out = String::with_capacity(DEFAULT_CONFIG.len());
    for line in DEFAULT_CONFIG.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            section = trimmed;
        }
        let key = trimmed.split('=').next().unwrap_or_default().trim();
        if section == "[pipeline.memory.encoder]" && ATOM_SLOT_ONLY.contains(&key) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.into()
}

/// The `config` crate reports a misspelt choice (`detector = "foo"`) as "enum DetectorKind
/// does not have variant constructor foo for key `pipeline.detector`": a Rust type name and
/// no hint of the valid values. This names the key and lists the values instead.
fn explain_enum_error(message: String) -> ConfigError {
    let parsed = if let Some(rest) = message.strip_prefix("value of enum ") {
        // `detector = 3`: not a string at all.
        rest.split_once(" should be represented by ")
            .and_then(|(name, rest)| {
                Some((
                    name,
                    "got a value that is not a string".to_string(),
                    rest.split_once(" for key `")?.1,
                ))
            })
    } else {
        message.strip_prefix("enum ").and_then(|rest| {
            let (name, rest) = rest.split_once(" does not have variant constructor ")?;
            let (value, rest) = rest.split_once(" for key `")?;
            Some((name, format!("got {value:?}"), rest))
        })
    };
    let Some((name, got, rest)) = parsed else {
        return ConfigError::Parse(message);
    };
    let key = rest.split('`').next().unwrap_or_default();
    match enum_choices(name) {
        Some(choices) if !key.is_empty() => invalid(key, format!("must be {choices}, {got}")),
        _ => ConfigError::Parse(message),
    }
}

/// The values a configuration enum accepts, as serde lists them ("one of `a`, `b`, `c`").
fn enum_choices(type_name: &str) -> Option<String> {
    fn choices<T: serde::de::DeserializeOwned>() -> Option<String> {
        use serde::de::IntoDeserializer;
        let probe: serde::de::value::StrDeserializer<'_, serde::de::value::Error> =
            "\u{0}".into_deserializer();
        let error = T::deserialize(probe).err()?.to_string();
        let (_, expected) = error.split_once("expected ")?;
        Some(expected.to_string())
    }
    use sparsewatch_dsp::dictionary::{Objective, PolarMethod, Retraction, Schedule};
    use sparsewatch_dsp::memory::SaturationPolicy;
    use sparsewatch_dsp::score::{BaselineTail, LikelihoodScale};
    match type_name {
        "DetectorKind" => choices::<sparsewatch_dsp::DetectorKind>(),
        "OverloadPolicy" => choices::<OverloadPolicy>(),
        "CodeFormat" => choices::<CodeFormat>(),
        "BaselineTail" => choices::<BaselineTail>(),
        "LikelihoodScale" => choices::<LikelihoodScale>(),
        "SaturationPolicy" => choices::<SaturationPolicy>(),
        "Objective" => choices::<Objective>(),
        "Schedule" => choices::<Schedule>(),
        "Retraction" => choices::<Retraction>(),
        "PolarMethod" => choices::<PolarMethod>(),
        _ => None,
    }
}

/// Where systemd puts the files of `LoadCredential=`; relative secret paths are looked up there.
pub const CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";

/// Checks every value a type cannot express, and loads the secret and certificate files
/// (relative paths in `$CREDENTIALS_DIRECTORY` of this process, when set).
pub fn validate(settings: Settings) -> Result<ValidSettings, ConfigError> {
    let dir = std::env::var_os(CREDENTIALS_DIRECTORY).map(std::path::PathBuf::from);
    validate_with(settings, dir.as_deref())
}

/// As [`validate`], with the credentials directory given explicitly.
pub fn validate_with(
    settings: Settings,
    credentials_dir: Option<&Path>,
) -> Result<ValidSettings, ConfigError> {
    let s = &settings;
    check_topic_level("node.id", &s.node.id)?;
    check_topic_level("topics.prefix", &s.topics.prefix)?;
    if s.mqtt.host.trim().is_empty() {
        return Err(invalid("mqtt.host", "must not be empty"));
    }
    check_host(&s.mqtt.host, s.mqtt.tls.enabled)?;
    if s.mqtt.port == 0 {
        return Err(invalid("mqtt.port", "must be in 1..=65535"));
    }
    if !(5..=3600).contains(&s.mqtt.keep_alive_secs) {
        return Err(invalid(
            "mqtt.keep_alive_secs",
            format!("must be in 5..=3600, got {}", s.mqtt.keep_alive_secs),
        ));
    }
    if s.mqtt.subscribe.is_empty() {
        return Err(invalid("mqtt.subscribe", "needs at least one topic filter"));
    }
    for f in &s.mqtt.subscribe {
        check_filter(f).map_err(|r| invalid("mqtt.subscribe", format!("{f:?}: {r}")))?;
    }
    if s.mqtt.qos > 1 {
        return Err(invalid(
            "mqtt.qos",
            format!("must be 0 or 1, got {}", s.mqtt.qos),
        ));
    }
    if s.mqtt.reconnect_max_ms > MAX_RECONNECT_MS {
        return Err(invalid(
            "mqtt.reconnect_max_ms",
            format!(
                "must be at most {MAX_RECONNECT_MS}, got {}",
                s.mqtt.reconnect_max_ms
            ),
        ));
    }
    if s.mqtt.reconnect_min_ms == 0 || s.mqtt.reconnect_min_ms > s.mqtt.reconnect_max_ms {
        return Err(invalid(
            "mqtt.reconnect_min_ms",
            format!(
                "must be in 1..=reconnect_max_ms ({}), got {}",
                s.mqtt.reconnect_max_ms, s.mqtt.reconnect_min_ms
            ),
        ));
    }
    if !(16..=16 * 1024 * 1024).contains(&s.mqtt.max_payload_bytes) {
        return Err(invalid(
            "mqtt.max_payload_bytes",
            format!("must be in 16..=16777216, got {}", s.mqtt.max_payload_bytes),
        ));
    }
    check_count("mqtt.request_queue", s.mqtt.request_queue, 1, 1 << 20)?;
    check_count("mqtt.max_channels", s.mqtt.max_channels, 1, MAX_CHANNELS)?;
    for (key, v) in [
        ("mqtt.max_future_ms", s.mqtt.max_future_ms),
        ("mqtt.max_past_ms", s.mqtt.max_past_ms),
    ] {
        if v > MAX_SKEW_MS {
            return Err(invalid(
                key,
                format!("must be at most {MAX_SKEW_MS} (0 = no limit), got {v}"),
            ));
        }
    }
    if s.log.summary_interval_secs > MAX_SUMMARY_SECS {
        return Err(invalid(
            "log.summary_interval_secs",
            format!(
                "must be at most {MAX_SUMMARY_SECS}, got {}",
                s.log.summary_interval_secs
            ),
        ));
    }
    let mqtt_security = crate::mqtt::security::load(&s.mqtt, credentials_dir)?;
    let http_listen: std::net::SocketAddr = s.http.listen.parse().map_err(|_| {
        invalid(
            "http.listen",
            format!(
                "must be ip:port (e.g. \"127.0.0.1:9464\"), got {:?}",
                s.http.listen
            ),
        )
    })?;
    if !(1..=86_400).contains(&s.http.worker_stall_secs) {
        return Err(invalid(
            "http.worker_stall_secs",
            format!("must be in 1..=86400, got {}", s.http.worker_stall_secs),
        ));
    }
    if s.http.input_stall_secs > 86_400 * 30 {
        return Err(invalid(
            "http.input_stall_secs",
            format!("must be in 0..=2592000, got {}", s.http.input_stall_secs),
        ));
    }
    check_count("workers.count", s.workers.count, 1, 256)?;
    check_count(
        "workers.queue_capacity",
        s.workers.queue_capacity,
        1,
        1 << 24,
    )?;
    check_count("workers.max_streams", s.workers.max_streams, 1, 1 << 24)?;
    check_count("output.queue_capacity", s.output.queue_capacity, 1, 1 << 24)?;
    check_count(
        "output.buffer.capacity",
        s.output.buffer.capacity,
        1,
        1 << 20,
    )?;
    if !(4096..=1 << 34).contains(&s.output.buffer.max_file_bytes) {
        return Err(invalid(
            "output.buffer.max_file_bytes",
            format!(
                "must be in 4096..=17179869184, got {}",
                s.output.buffer.max_file_bytes
            ),
        ));
    }
    if s.streams.no_data_after_secs > 7 * 24 * 3600 {
        return Err(invalid(
            "streams.no_data_after_secs",
            format!(
                "must be in 0..=604800, got {}",
                s.streams.no_data_after_secs
            ),
        ));
    }
    check_count(
        "output.codes.queue_capacity",
        s.output.codes.queue_capacity,
        1,
        1 << 24,
    )?;
    if s.state.checkpoint_interval_secs > 7 * 24 * 3600 {
        return Err(invalid(
            "state.checkpoint_interval_secs",
            format!(
                "must be in 0..=604800, got {}",
                s.state.checkpoint_interval_secs
            ),
        ));
    }
    if s.state.dir.chars().any(char::is_control) {
        return Err(invalid("state.dir", "must not contain control characters"));
    }
    if s.output.codes.every == 0 {
        return Err(invalid("output.codes.every", "must be at least 1"));
    }
    tracing_subscriber::EnvFilter::try_new(&s.log.level)
        .map_err(|e| invalid("log.level", format!("{:?}: {e}", s.log.level)))?;
    let template = TopicTemplate::parse(&s.topics.template)
        .map_err(|r| invalid("topics.template", format!("{:?}: {r}", s.topics.template)))?;
    let pipeline = s.pipeline.clone().check().map_err(|e| {
        invalid(
            &format!("pipeline.{}", e.field),
            format!("must be {}, got {}", e.expected, e.value),
        )
    })?;
    Ok(ValidSettings {
        settings,
        mqtt_security,
        http_listen,
        pipeline,
        template,
    })
}

fn check_count(key: &str, v: usize, lo: usize, hi: usize) -> Result<(), ConfigError> {
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(invalid(key, format!("must be in {lo}..={hi}, got {v}")))
    }
}

/// `mqtt.host` is joined to `mqtt.port` as `host:port` and resolved on every connection
/// attempt, so a host that carries a port or a scheme would fail the lookup forever while
/// `run` retries. IPv6 literals stay valid: `::1` (the lookup splits at the last ':') and,
/// without TLS, `[::1]`; TLS takes the server name from the host, where brackets do not parse.
fn check_host(host: &str, tls: bool) -> Result<(), ConfigError> {
    const KEY: &str = "mqtt.host";
    if let Some((scheme, _)) = host.split_once("://") {
        let tls_hint = if ["mqtts", "ssl", "tls"].contains(&scheme.to_ascii_lowercase().as_str()) {
            " and turn TLS on in [mqtt.tls] (enabled = true; the broker's TLS port is usually 8883)"
        } else {
            ""
        };
        return Err(invalid(
            KEY,
            format!(
                "must be a host name or IP address, not a URL: drop \"{scheme}://\"{tls_hint}, and put any port in mqtt.port (got {host:?})"
            ),
        ));
    }
    let is_ipv6 = |h: &str| {
        // A zone (`fe80::1%eth0`) is for the resolver; the address is what must parse.
        let address = h.split_once('%').map_or(h, |(a, _)| a);
        address.parse::<std::net::Ipv6Addr>().is_ok()
    };
    if is_ipv6(host) {
        // TLS checks the broker's certificate against the host as a server name, and an
        // address with a zone is not one (rustls refuses it at every connect).
        return match host.split_once('%') {
            Some((address, _)) if tls => Err(invalid(
                KEY,
                format!("with TLS, the address cannot carry a zone: write {address:?} or the broker's name (got {host:?})"),
            )),
            _ => Ok(()),
        };
    }
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        if inner.contains('%') && is_ipv6(inner) {
            // The resolver is given the text as it is, and a zone inside brackets is not
            // an address it reads.
            return Err(invalid(
                KEY,
                format!(
                    "write an IPv6 address with a zone without brackets: {inner:?} (got {host:?})"
                ),
            ));
        }
        if is_ipv6(inner) {
            return if tls {
                Err(invalid(
                    KEY,
                    format!("with TLS, write the IPv6 address without brackets: {inner:?} (got {host:?})"),
                ))
            } else {
                Ok(())
            };
        }
    }
    if let Some((name, port)) = host.rsplit_once(':') {
        let fix = match port.parse::<u16>() {
            Ok(port) => format!(
                ": host = {:?} and port = {port}",
                name.trim_start_matches('[').trim_end_matches(']')
            ),
            Err(_) => String::new(),
        };
        return Err(invalid(
            KEY,
            format!("must be a host name or IP address without a port; put the port in mqtt.port{fix} (got {host:?})"),
        ));
    }
    if host.contains(['/', '@', '?', '#'])
        || host.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(invalid(
            KEY,
            format!("must be a host name or IP address (no path, user, spaces), got {host:?}"),
        ));
    }
    Ok(())
}

fn check_topic_level(key: &str, v: &str) -> Result<(), ConfigError> {
    if v.is_empty() || v.contains(['/', '+', '#']) || v.chars().any(char::is_control) {
        Err(invalid(
            key,
            format!("must be one non-empty MQTT topic level without '/', '+' or '#', got {v:?}"),
        ))
    } else {
        Ok(())
    }
}

fn check_filter(f: &str) -> Result<(), &'static str> {
    if f.is_empty() {
        return Err("empty topic filter");
    }
    let levels: Vec<&str> = f.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err("'#' must be a whole last level");
        }
        if level.contains('+') && *level != "+" {
            return Err("'+' must be a whole level");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env() -> Vec<(String, String)> {
        vec![]
    }

    #[test]
    fn the_example_config_is_the_compiled_in_default() {
        let example = include_str!("../../../deploy/config/sparsewatch.example.toml");
        assert_eq!(
            example, DEFAULT_CONFIG,
            "deploy/config/sparsewatch.example.toml must be identical to daemon/src/config/default.toml"
        );
    }

    #[test]
    fn the_default_loads_and_matches_the_dsp_defaults() {
        let v = load_with_env(Source::Default, no_env()).unwrap();
        // The [pipeline] table documents the dsp defaults; they must agree.
        assert_eq!(v.settings.pipeline, PipelineParams::default());
        assert_eq!(v.client_id(), "sparsewatch-edge-1");
        assert_eq!(v.topic_root(), "sparsewatch/edge-1");
    }

    #[test]
    fn a_file_overrides_only_what_it_names() {
        let v = load_with_env(
            Source::Text("[mqtt]\nport = 1884\n[pipeline.framer]\nhop = 4\n"),
            no_env(),
        )
        .unwrap();
        assert_eq!(v.settings.mqtt.port, 1884);
        assert_eq!(v.settings.mqtt.host, "127.0.0.1");
        assert_eq!(v.settings.pipeline.framer.hop, 4);
        assert_eq!(v.settings.pipeline.framer.window_len, 32);
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let err = load_with_env(Source::Text("[mqtt]\nprot = 1884\n"), no_env()).unwrap_err();
        assert!(err.to_string().contains("prot"), "{err}");
        let err = load_with_env(Source::Text("[mqttt]\nport = 1884\n"), no_env()).unwrap_err();
        assert!(err.to_string().contains("mqttt"), "{err}");
        let err =
            load_with_env(Source::Text("[pipeline.framer]\nwindow = 8\n"), no_env()).unwrap_err();
        assert!(err.to_string().contains("window"), "{err}");
    }

    #[test]
    fn bad_values_name_key_and_reason() {
        let cases = [
            ("[mqtt]\nqos = 2\n", "mqtt.qos"),
            ("[node]\nid = \"a/b\"\n", "node.id"),
            ("[pipeline.framer]\nhop = 0\n", "pipeline.framer.hop"),
            (
                "[topics]\ntemplate = \"sensors/{a}/{a}\"\n",
                "topics.template",
            ),
            ("[mqtt]\nsubscribe = [\"a/#/b\"]\n", "mqtt.subscribe"),
            ("[workers]\ncount = 0\n", "workers.count"),
            ("[log]\nlevel = \"=[\"\n", "log.level"),
            ("[output.codes]\nevery = 0\n", "output.codes.every"),
            ("[output.codes]\nformat = \"xml\"\n", "xml"),
            ("[mqtt]\noverload = \"drop\"\n", "drop"),
            (
                "[output.buffer]\nmax_file_bytes = 10\n",
                "output.buffer.max_file_bytes",
            ),
            ("[output.buffer]\ncapacity = 0\n", "output.buffer.capacity"),
            (
                "[streams]\nno_data_after_secs = 99999999\n",
                "streams.no_data_after_secs",
            ),
            (
                "[state]\ncheckpoint_interval_secs = 9999999\n",
                "state.checkpoint_interval_secs",
            ),
            ("[state]\ndirectory = \"/x\"\n", "directory"),
        ];
        for (text, key) in cases {
            let err = load_with_env(Source::Text(text), no_env()).unwrap_err();
            assert!(err.to_string().contains(key), "{text:?} gave {err}");
        }
        let err = load_with_env(Source::Text("[mqtt]\nport = \"x\"\n"), no_env()).unwrap_err();
        assert!(err.to_string().contains("port"), "{err}");
    }

    #[test]
    fn environment_overrides_win() {
        let env = vec![
            ("SPARSEWATCH__MQTT__PORT".to_string(), "1999".to_string()),
            (
                "SPARSEWATCH__MQTT__SUBSCRIBE".to_string(),
                "a/#,b/+".to_string(),
            ),
            (
                "SPARSEWATCH__PIPELINE__ALERT__THRESHOLD".to_string(),
                "0.999".to_string(),
            ),
            ("UNRELATED".to_string(), "1".to_string()),
        ];
        let v = load_with_env(Source::Text("[mqtt]\nport = 1884\n"), env).unwrap();
        assert_eq!(v.settings.mqtt.port, 1999);
        assert_eq!(v.settings.mqtt.subscribe, vec!["a/#", "b/+"]);
        assert_eq!(v.settings.pipeline.alert.threshold, 0.999);
        let env = vec![("SPARSEWATCH__MQTT__PROT".to_string(), "1".to_string())];
        assert!(load_with_env(Source::Default, env).is_err());
    }

    /// `config` would convert these (1883.5 to port 1884, 0.4 to QoS 0, "yes" to true); each
    /// must instead be refused with the key, the expected type and the value as written.
    #[test]
    fn a_value_of_the_wrong_type_is_refused_not_converted() {
        let cases = [
            (
                "[mqtt]\nport = 1883.5",
                "mqtt.port: expected an integer, got 1883.5",
            ),
            (
                "[mqtt]\nport = 1883.0",
                "mqtt.port: expected an integer, got 1883.0",
            ),
            (
                "[mqtt]\nport = \"1884\"",
                "mqtt.port: expected an integer, got the string \"1884\"",
            ),
            (
                "[mqtt]\nport = \"x\"",
                "mqtt.port: expected an integer, got the string \"x\"",
            ),
            (
                "[mqtt]\nport = true",
                "mqtt.port: expected an integer, got true",
            ),
            (
                "[mqtt]\nqos = 0.4",
                "mqtt.qos: expected an integer, got 0.4",
            ),
            (
                "[mqtt]\nqos = 1.6",
                "mqtt.qos: expected an integer, got 1.6",
            ),
            (
                "[pipeline.framer]\nwindow_len = 32.4",
                "pipeline.framer.window_len: expected an integer, got 32.4",
            ),
            (
                "[pipeline.alert]\nthreshold = \"0.5\"",
                "pipeline.alert.threshold: expected a number, got the string \"0.5\"",
            ),
            (
                "[mqtt]\npersistent_session = \"yes\"",
                "mqtt.persistent_session: expected true or false, got the string \"yes\"",
            ),
            (
                "[mqtt]\npersistent_session = 1",
                "mqtt.persistent_session: expected true or false, got 1",
            ),
            ("[node]\nid = 5", "node.id: expected a string, got 5"),
            (
                "[mqtt]\nsubscribe = [\"a/#\", 1]",
                "mqtt.subscribe[1]: expected a string, got 1",
            ),
            (
                "[mqtt]\nsubscribe = \"a/#\"",
                "mqtt.subscribe: expected an array, got the string \"a/#\"",
            ),
            ("[mqtt]\ntls = true", "mqtt.tls: expected a table, got true"),
            ("mqtt = 1", "mqtt: expected a table, got 1"),
        ];
        for (text, message) in cases {
            let err = load_with_env(Source::Text(text), no_env())
                .unwrap_err()
                .to_string();
            assert_eq!(err, format!("invalid configuration: {message}"), "{text:?}");
        }
        // The same check on a file, which `config` reads by path.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[mqtt]\nport = 1883.5\n").unwrap();
        let err = load_with_env(Source::File(&file), no_env())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("mqtt.port: expected an integer, got 1883.5"),
            "{err}"
        );
    }

    /// The projection encoder can be chosen, in a file or by the environment, although the
    /// default's encoder table holds the atom-slot encoder's keys; its own fields (which the
    /// default lacks) load, and an atom-slot key given with it is still refused as unknown.
    #[test]
    fn the_projection_encoder_can_be_chosen() {
        use sparsewatch_dsp::memory::EncoderParams;
        let text = "[pipeline]\ndetector = \"memory\"\n[pipeline.memory.encoder]\n\
                    kind = \"projection\"\nbits = 2048\nactive = 16\nrow_weight = 4\nseed = 7\n";
        let v = load_with_env(Source::Text(text), no_env()).unwrap();
        match &v.settings.pipeline.memory.encoder {
            EncoderParams::Projection(p) => {
                assert_eq!((p.bits, p.active, p.row_weight, p.seed), (2048, 16, 4, 7));
            }
            other => panic!("{other:?}"),
        }
        let env = vec![(
            "SPARSEWATCH__PIPELINE__MEMORY__ENCODER__KIND".to_string(),
            "projection".to_string(),
        )];
        let v = load_with_env(Source::Default, env).unwrap();
        assert!(matches!(
            v.settings.pipeline.memory.encoder,
            EncoderParams::Projection(_)
        ));
        let err = load_with_env(
            Source::Text("[pipeline.memory.encoder]\nkind = \"projection\"\natoms = 4\n"),
            no_env(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown field `atoms`"), "{err}");
    }

    /// What the type check must keep accepting: an integer where a number is expected, an
    /// integer in another base, and keys the default lacks (the projection encoder's own
    /// fields, in `the_projection_encoder_can_be_chosen`).
    #[test]
    fn values_of_the_right_type_still_load() {
        let v = load_with_env(
            Source::Text(
                "[pipeline.framer]\ngap_factor = 8\n[pipeline.alert]\nthreshold = 1\n\
                 [mqtt]\nsubscribe = [\"a/#\", \"b/+\"]\n",
            ),
            no_env(),
        )
        .unwrap();
        assert_eq!(v.settings.pipeline.framer.gap_factor, 8.0);
        assert_eq!(v.settings.pipeline.alert.threshold, 1.0);
        assert_eq!(v.settings.mqtt.subscribe, vec!["a/#", "b/+"]);
        let v = load_with_env(Source::Text("[mqtt]\nport = 0x75B\n"), no_env()).unwrap();
        assert_eq!(v.settings.mqtt.port, 1883);
        // Grouped digits, in the file and in the environment alike.
        let env = vec![("SPARSEWATCH__MQTT__PORT".to_string(), "1_884".to_string())];
        let v = load_with_env(
            Source::Text("[state]\ncheckpoint_interval_secs = 1_200\n"),
            env,
        )
        .unwrap();
        assert_eq!(v.settings.mqtt.port, 1884);
        assert_eq!(v.settings.state.checkpoint_interval_secs, 1200);
        // A wrong type in another base is shown as written.
        let err = load_with_env(Source::Text("[node]\nid = 0x1F\n"), no_env())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("node.id: expected a string, got 0x1F"),
            "{err}"
        );
    }

    /// Unknown keys, misspelt choices and syntax errors keep their own messages: the type
    /// check neither hides them nor reports them in its own words.
    #[test]
    fn the_type_check_keeps_the_other_messages() {
        let err = load_with_env(Source::Text("[mqtt]\nprot = 1.5\n"), no_env())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("prot") && !err.contains("expected an integer"),
            "{err}"
        );
        let err = load_with_env(Source::Text("[pipeline]\ndetector = 3\n"), no_env())
            .unwrap_err()
            .to_string();
        assert!(err.contains("pipeline.detector: must be one of"), "{err}");
        let err = load_with_env(Source::Text("[mqtt]\nport = 1883\nport = 2\n"), no_env())
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3, column 1"), "{err}");
    }

    /// Environment overrides are parsed as their key's type: no rounding, no guessing a string
    /// key's type from its text.
    #[test]
    fn environment_overrides_are_parsed_as_their_keys_type() {
        let env = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        let cases = [
            (
                "SPARSEWATCH__MQTT__PORT",
                "1883.5",
                "mqtt.port: expected an integer, got \"1883.5\" (from SPARSEWATCH__MQTT__PORT)",
            ),
            (
                "SPARSEWATCH__MQTT__QOS",
                "0.4",
                "mqtt.qos: expected an integer, got \"0.4\"",
            ),
            (
                "SPARSEWATCH__MQTT__PORT",
                "",
                "mqtt.port: expected an integer, got \"\"",
            ),
            (
                "SPARSEWATCH__PIPELINE__ALERT__THRESHOLD",
                "high",
                "pipeline.alert.threshold: expected a number, got \"high\"",
            ),
            (
                "SPARSEWATCH__MQTT__PERSISTENT_SESSION",
                "yes",
                "mqtt.persistent_session: expected true or false, got \"yes\"",
            ),
            (
                "SPARSEWATCH__MQTT__PERSISTENT_SESSION",
                "1",
                "mqtt.persistent_session: expected true or false, got \"1\"",
            ),
            (
                "SPARSEWATCH__MQTT__TLS",
                "true",
                "mqtt.tls: is a table: set its keys one by one, e.g. SPARSEWATCH__MQTT__TLS__",
            ),
        ];
        for (var, value, message) in cases {
            let err = load_with_env(Source::Default, env(var, value))
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(&format!("invalid configuration: {message}")),
                "{var}={value:?} gave {err}"
            );
        }
        let v = load_with_env(Source::Default, env("SPARSEWATCH__NODE__ID", "007")).unwrap();
        assert_eq!(v.settings.node.id, "007", "a string key keeps its text");
        let v = load_with_env(
            Source::Default,
            env("SPARSEWATCH__MQTT__PERSISTENT_SESSION", "False"),
        )
        .unwrap();
        assert!(!v.settings.mqtt.persistent_session);
        let v = load_with_env(
            Source::Default,
            env("SPARSEWATCH__PIPELINE__FRAMER__GAP_FACTOR", "3"),
        )
        .unwrap();
        assert_eq!(
            v.settings.pipeline.framer.gap_factor, 3.0,
            "an integer is a number"
        );
        let v = load_with_env(Source::Default, env("SPARSEWATCH__MQTT__SUBSCRIBE", "1")).unwrap();
        assert_eq!(
            v.settings.mqtt.subscribe,
            vec!["1"],
            "a one-level filter, not the integer 1"
        );
        let err = load_with_env(Source::Default, env("SPARSEWATCH__", "1"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("SPARSEWATCH__<SECTION>__<KEY>"), "{err}");
    }

    /// A host with a port or a scheme would fail the name lookup on every reconnect: it is
    /// refused with the fix. IPv6 literals, which the lookup takes, still load.
    #[test]
    fn a_host_with_a_port_or_scheme_is_refused_with_the_fix() {
        let host = |h: &str, tls: bool| {
            let tls = if tls {
                "[mqtt.tls]\nenabled = true\nca_file = \"/nonexistent\"\n"
            } else {
                ""
            };
            load_with_env(
                Source::Text(&format!("[mqtt]\nhost = {h:?}\n{tls}")),
                no_env(),
            )
        };
        let cases = [
            (
                "127.0.0.1:1883",
                "put the port in mqtt.port: host = \"127.0.0.1\" and port = 1883",
            ),
            (
                "broker.local:8883",
                "host = \"broker.local\" and port = 8883",
            ),
            ("[::1]:1883", "host = \"::1\" and port = 1883"),
            ("broker:x", "put the port in mqtt.port (got \"broker:x\")"),
            (
                "mqtt://broker.local",
                "drop \"mqtt://\", and put any port in mqtt.port",
            ),
            (
                "mqtts://broker.local:8883",
                "drop \"mqtts://\" and turn TLS on in [mqtt.tls]",
            ),
            ("broker.local/x", "no path"),
            ("broker local", "no path, user, spaces"),
        ];
        for (h, fix) in cases {
            let err = host(h, false).unwrap_err().to_string();
            assert!(
                err.starts_with("invalid configuration: mqtt.host: "),
                "{h}: {err}"
            );
            assert!(err.contains(fix), "{h}: {err}");
        }
        for h in [
            "::1",
            "[::1]",
            "fe80::1%eth0",
            "127.0.0.1",
            "broker.example.net",
            "localhost",
        ] {
            let v = host(h, false).unwrap_or_else(|e| panic!("{h}: {e}"));
            assert_eq!(v.settings.mqtt.host, h);
        }
        // TLS names the server by the host: brackets do not parse there. (The missing CA file
        // is only reached after the host check; that it is named shows "::1" passed.)
        let err = host("[::1]", true).unwrap_err().to_string();
        assert!(
            err.contains("mqtt.host: with TLS, write the IPv6 address without brackets"),
            "{err}"
        );
        let err = host("::1", true).unwrap_err().to_string();
        assert!(err.contains("mqtt.tls.ca_file"), "{err}");
        // A zone is for the resolver: not with TLS (no server name), not inside brackets.
        let err = host("fe80::1%eth0", true).unwrap_err().to_string();
        assert!(
            err.contains("mqtt.host: with TLS, the address cannot carry a zone: write \"fe80::1\""),
            "{err}"
        );
        let err = host("[fe80::1%eth0]", false).unwrap_err().to_string();
        assert!(
            err.contains("mqtt.host: write an IPv6 address with a zone without brackets"),
            "{err}"
        );
    }

    #[test]
    fn http_and_security_keys_are_checked_by_name() {
        let cases = [
            ("[http]\nlisten = \"localhost:9464\"\n", "http.listen"),
            ("[http]\nworker_stall_secs = 0\n", "http.worker_stall_secs"),
            ("[mqtt]\npassword_file = \"pw\"\n", "mqtt.password_file"),
            (
                "[mqtt]\nusername = \"u\"\npassword_file = \"/nonexistent/pw\"\n",
                "/nonexistent/pw",
            ),
            ("[mqtt.tls]\nca_file = \"ca.pem\"\n", "mqtt.tls.ca_file"),
            (
                "[mqtt.tls]\nenabled = true\nca_file = \"/nonexistent/ca.pem\"\n",
                "mqtt.tls.ca_file",
            ),
            ("[mqtt.tls]\nenabeld = true\n", "enabeld"),
        ];
        for (text, key) in cases {
            let err = load_with_env(Source::Text(text), no_env()).unwrap_err();
            assert!(err.to_string().contains(key), "{text:?} gave {err}");
        }
        let v = load_with_env(Source::Default, no_env()).unwrap();
        assert_eq!(v.http_listen, "127.0.0.1:9464".parse().unwrap());
        assert!(!v.mqtt_security.tls());
        assert_eq!(v.mqtt_security.username(), None);
    }

    #[test]
    fn a_relative_password_file_is_read_from_the_credentials_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mqtt-password"), "s3cret\n").unwrap();
        let text = "[mqtt]\nusername = \"u\"\npassword_file = \"mqtt-password\"\n";
        let env = vec![(
            CREDENTIALS_DIRECTORY.to_string(),
            dir.path().display().to_string(),
        )];
        let v = load_with_env(Source::Text(text), env).unwrap();
        assert_eq!(v.mqtt_security.username(), Some("u"));
        assert!(
            !format!("{v:?}").contains("s3cret"),
            "Debug shows the password"
        );
        let err = load_with_env(Source::Text(text), no_env()).unwrap_err();
        assert!(err.to_string().contains("mqtt.password_file"), "{err}");
    }

    /// The README's setup (`password_file = "mqtt-password"`, read from systemd's credentials)
    /// fails `check-config` in a shell, where $CREDENTIALS_DIRECTORY is unset: the message must
    /// say why and how to check it; where the variable is set or the path is absolute, the
    /// plain error is the whole story.
    #[test]
    fn a_missing_relative_secret_outside_systemd_explains_credentials_directory() {
        const HINT: &str =
            "CREDENTIALS_DIRECTORY=/etc/sparsewatch/credentials sparsewatch check-config";
        let relative = [
            (
                "[mqtt]\nusername = \"u\"\npassword_file = \"no-such-password\"\n",
                "mqtt.password_file",
            ),
            (
                "[mqtt.tls]\nenabled = true\nca_file = \"no-such-ca.pem\"\n",
                "mqtt.tls.ca_file",
            ),
        ];
        for (text, key) in relative {
            let err = load_with_env(Source::Text(text), no_env())
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("{key}: cannot read ")), "{err}");
            assert!(
                err.contains("$CREDENTIALS_DIRECTORY") && err.contains(HINT),
                "{err}"
            );
            assert!(err.contains("absolute path"), "{err}");
            let dir = tempfile::tempdir().unwrap();
            let env = vec![(
                CREDENTIALS_DIRECTORY.to_string(),
                dir.path().display().to_string(),
            )];
            let err = load_with_env(Source::Text(text), env)
                .unwrap_err()
                .to_string();
            assert!(err.contains(&dir.path().display().to_string()), "{err}");
            assert!(!err.contains(HINT), "the directory is set: {err}");
        }
        // An absolute path that is missing needs no word on $CREDENTIALS_DIRECTORY.
        let absolute = "[mqtt.tls]\nenabled = true\nca_file = \"/nonexistent/ca.pem\"\n";
        let err = load_with_env(Source::Text(absolute), no_env())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("mqtt.tls.ca_file: cannot read /nonexistent/ca.pem"),
            "{err}"
        );
        assert!(!err.contains(HINT), "{err}");
    }

    #[test]
    fn a_misspelt_choice_names_the_key_and_the_valid_values() {
        let cases = [
            (
                "[pipeline]\ndetector = \"foo\"",
                "pipeline.detector",
                "`gated`",
            ),
            (
                "[pipeline]\ndetector = 3",
                "pipeline.detector",
                "`baseline`",
            ),
            ("[mqtt]\noverload = \"drop\"", "mqtt.overload", "`shed`"),
            (
                "[output.codes]\nformat = \"xml\"",
                "output.codes.format",
                "`cbor`",
            ),
            (
                "[pipeline.baseline]\ntail = \"t\"",
                "pipeline.baseline.tail",
                "`student_t`",
            ),
            (
                "[pipeline.likelihood]\nscale = \"x\"",
                "pipeline.likelihood.scale",
                "`log`",
            ),
            (
                "[pipeline.memory.sdr]\npolicy = \"x\"",
                "pipeline.memory.sdr.policy",
                "`rotate`",
            ),
            (
                "[pipeline.dictionary]\npolar = \"x\"",
                "pipeline.dictionary.polar",
                "`svd`",
            ),
        ];
        for (text, key, choice) in cases {
            let err = load_with_env(Source::Text(text), no_env())
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("{key}: must be ")), "{err}");
            assert!(err.contains(choice), "{err}");
            assert!(!err.contains("variant constructor"), "{err}");
        }
        let env = vec![(
            "SPARSEWATCH__PIPELINE__DETECTOR".to_string(),
            "foo".to_string(),
        )];
        let err = load_with_env(Source::Default, env).unwrap_err().to_string();
        assert!(err.contains("pipeline.detector: must be one of"), "{err}");
        assert!(err.contains("got \"foo\""), "{err}");
    }

    #[test]
    fn a_directory_is_reported_as_one() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_with_env(Source::File(dir.path()), no_env())
            .unwrap_err()
            .to_string();
        assert!(err.contains("is a directory"), "{err}");
        assert!(!err.contains("not found"), "{err}");
    }

    #[test]
    fn a_missing_file_is_reported_with_its_path() {
        let err =
            load_with_env(Source::File(Path::new("/nonexistent/x.toml")), no_env()).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/x.toml"), "{err}");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Every (table, key) of the compiled-in default, read off its text.
        fn known_keys() -> Vec<(String, String)> {
            let mut table = String::new();
            let mut keys = vec![];
            for line in DEFAULT_CONFIG.lines().map(str::trim) {
                if let Some(t) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                    table = t.to_string();
                } else if let Some((k, _)) = line.split_once(" = ") {
                    if !line.starts_with('#') {
                        keys.push((table.clone(), k.to_string()));
                    }
                }
            }
            keys
        }

        /// TOML values of every type, at and beyond the edges of the checked ranges.
        fn toml_value() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<i64>().prop_map(|v| v.to_string()),
                (0i64..70_000).prop_map(|v| v.to_string()),
                Just("18446744073709551616".to_string()),
                Just("0".to_string()),
                any::<f64>().prop_map(|v| format!("{v:?}")),
                Just("nan".to_string()),
                Just("-inf".to_string()),
                Just("1e400".to_string()),
                any::<bool>().prop_map(|v| v.to_string()),
                "[ -~]{0,12}".prop_map(|v| format!("{v:?}")),
                Just("\"sensors/{a}/{b}\"".to_string()),
                Just("[\"a/#\", \"+/b\"]".to_string()),
                Just("[]".to_string()),
                Just("{ x = 1 }".to_string()),
                Just("1979-05-27T07:32:00Z".to_string()),
            ]
        }

        /// A config file that sets some known keys (sometimes misspelt) to arbitrary values.
        fn config_text() -> impl Strategy<Value = String> {
            let keys = known_keys();
            prop::collection::vec(
                (
                    prop::sample::select(keys),
                    toml_value(),
                    prop::bool::weighted(0.05),
                ),
                0..6,
            )
            .prop_map(|sets| {
                let mut text = String::new();
                for ((table, key), value, typo) in sets {
                    let key = if typo { format!("{key}x") } else { key };
                    text.push_str(&format!("[{table}]\n{key} = {value}\n"));
                }
                text
            })
        }

        /// Environment overrides of known keys (and of near misses) with arbitrary text.
        fn env_vars() -> impl Strategy<Value = Vec<(String, String)>> {
            let keys = known_keys();
            let name = prop_oneof![
                4 => prop::sample::select(keys).prop_map(|(t, k)| format!(
                    "{ENV_PREFIX}__{}__{}",
                    t.replace('.', "__").to_uppercase(),
                    k.to_uppercase()
                )),
                1 => "SPARSEWATCH_{0,3}[A-Z_]{0,8}",
            ];
            let value = prop_oneof![
                "[ -~]{0,10}",
                any::<i64>().prop_map(|v| v.to_string()),
                Just(String::new())
            ];
            prop::collection::vec((name, value), 0..4)
        }

        /// What every accepted configuration promises the code that runs with it.
        fn check_accepted(v: &ValidSettings) {
            let s = &v.settings;
            let max_backoff = std::time::Duration::from_millis(s.mqtt.reconnect_max_ms);
            assert!(
                max_backoff.checked_mul(2).is_some(),
                "backoff doubling cannot overflow"
            );
            let every = std::time::Duration::from_secs(s.log.summary_interval_secs);
            assert!(std::time::Instant::now().checked_add(every).is_some());
            let l = v.payload_limits();
            assert!((1..=MAX_CHANNELS).contains(&l.max_channels));
            assert!(l.max_future_ms >= 0 && l.max_past_ms >= 0);
            assert!(!s.mqtt.subscribe.is_empty());
            assert!(validate(s.clone()).is_ok(), "validation is idempotent");
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 3_000, ..ProptestConfig::default() })]

            /// Arbitrary text as the config file: Ok or an error that says what is wrong.
            #[test]
            fn arbitrary_text_is_loaded_or_refused(text in "[ -~\n]{0,200}") {
                match load_with_env(Source::Text(&text), no_env()) {
                    Ok(v) => check_accepted(&v),
                    Err(e) => prop_assert!(e.to_string().starts_with("invalid configuration")),
                }
            }

            /// Known keys set to values of every type, plus environment overrides: Ok with
            /// every promise kept, or an error naming the key at fault.
            #[test]
            fn known_keys_with_any_values_are_loaded_or_refused(text in config_text(), env in env_vars()) {
                match load_with_env(Source::Text(&text), env) {
                    Ok(v) => check_accepted(&v),
                    Err(e) => prop_assert!(e.to_string().starts_with("invalid configuration: "), "{e}"),
                }
            }
        }
    }
}
