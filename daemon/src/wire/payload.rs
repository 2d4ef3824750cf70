//! Payload formats:
//!
//! - JSON, one channel: `{"ts": 1700000000000, "value": 1.2}` (channel name `value`)
//! - JSON, several channels: `{"ts": "2026-01-05T08:00:00Z", "values": {"temp": 1.2, "rpm": 900}}`
//! - a bare number: `1.2` (the arrival time is the timestamp)
//!
//! `ts` is milliseconds since the Unix epoch or an RFC 3339 string; without it (or `null`) the
//! arrival time is used. Other JSON fields are ignored. Channels are ordered by name. A numeric
//! `ts` that looks like seconds ([`looks_like_seconds`]) is still milliseconds; the ingest logs it.
//!
//! Every payload is hostile until decoded, so the decoder is bounded in time, stack and memory
//! by the payload's size and [`PayloadLimits`]:
//!
//! - a payload above `max_bytes` is refused before it is looked at;
//! - the JSON is decoded by a streaming visitor, not into a `serde_json::Value` tree: ignored
//!   fields are skipped without being built (serde_json skips them iteratively, so 100 000 `[`
//!   cost heap bytes of the payload's size, not stack), `values` stops at the first channel
//!   beyond `max_channels`, and a channel that is not a number aborts the decode at once;
//! - every value must be finite and at most [`MAX_ABS_VALUE`] in magnitude (NaN, ±inf, `1e400`
//!   and `1e300` are refused), so the pipeline's squares and sums stay finite;
//! - timestamps must lie in [1970, 2286) and, when configured, within `max_future_ms` ahead of
//!   or `max_past_ms` behind the arrival time (see [`PayloadLimits`] for why).
//!
//! Each refusal is a [`PayloadError`] whose [`PayloadError::kind`] names the counter it is
//! counted under.

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use sparsewatch_dsp::MAX_CHANNELS;
use thiserror::Error;

/// One decoded reading for the worker that owns `key`.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub key: String,
    pub ts_ms: i64,
    /// (channel name, value), sorted by name, all finite.
    pub channels: Vec<(String, f64)>,
}

/// Largest magnitude a channel value may have. Far beyond any physical measurement, and small
/// enough that squares and sums over a window (the normaliser's variance, a window's energy)
/// cannot overflow to infinity and turn a stream's state into NaN.
pub const MAX_ABS_VALUE: f64 = 1e100;

/// Timestamps at or beyond this (the year 2286) are refused rather than wrapped or misread.
const MAX_TS_MS: i64 = 10_000_000_000_000;

/// What the decoder accepts; built from the `[mqtt]` configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadLimits {
    /// Larger payloads are refused unread (`mqtt.max_payload_bytes`).
    pub max_bytes: usize,
    /// Payloads with more channels are refused (`mqtt.max_channels`, at most
    /// [`MAX_CHANNELS`]).
    pub max_channels: usize,
    /// Timestamps more than this many ms ahead of the arrival time are refused; 0 = no limit
    /// (`mqtt.max_future_ms`). One sample from the far future would otherwise make every later
    /// sample of its stream "out of order" until that time came: a poisoned stream.
    pub max_future_ms: i64,
    /// Timestamps more than this many ms behind the arrival time are refused; 0 = no limit
    /// (`mqtt.max_past_ms`). Off by default: replays and devices that buffer while offline
    /// send old timestamps legitimately, and an old sample can only be refused as out of order
    /// or restart a window after a gap, never poison a stream.
    pub max_past_ms: i64,
}

impl PayloadLimits {
    /// Limits with only a size bound: every channel count up to [`MAX_CHANNELS`], any time.
    pub fn with_max_bytes(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            max_channels: MAX_CHANNELS,
            max_future_ms: 0,
            max_past_ms: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Error)]
pub enum PayloadError {
    #[error("payload of {0} bytes is larger than mqtt.max_payload_bytes")]
    TooLarge(usize),
    #[error("payload is not UTF-8")]
    NotUtf8,
    #[error("payload is neither a JSON object nor a number")]
    NotJsonOrNumber,
    #[error("malformed JSON: {0}")]
    Json(String),
    #[error("JSON payload has neither \"value\" nor \"values\"")]
    NoValue,
    #[error("JSON payload has both \"value\" and \"values\"")]
    BothValueAndValues,
    #[error("\"values\" is empty")]
    EmptyValues,
    #[error("more than the {0} channels allowed (mqtt.max_channels)")]
    TooManyChannels(usize),
    #[error("channel {0:?} appears twice")]
    DuplicateChannel(String),
    #[error("channel {0:?} is not a number")]
    NotANumber(String),
    #[error("channel {0:?} is not finite or its magnitude is above {MAX_ABS_VALUE:e}")]
    OutOfRange(String),
    #[error("bad timestamp: {0}")]
    BadTimestamp(String),
    #[error("timestamp {ts_ms} is {by_ms} ms ahead of the arrival time (mqtt.max_future_ms)")]
    TooFarAhead { ts_ms: i64, by_ms: i64 },
    #[error("timestamp {ts_ms} is {by_ms} ms behind the arrival time (mqtt.max_past_ms)")]
    TooFarBehind { ts_ms: i64, by_ms: i64 },
}

/// The counter a refusal is counted under, besides the `payload_errors` total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadErrorKind {
    /// Larger than `mqtt.max_payload_bytes`: `oversized_payloads`.
    Oversized,
    /// More than `mqtt.max_channels` channels: `too_many_channels`.
    TooManyChannels,
    /// NaN, ±inf, beyond f64 or above [`MAX_ABS_VALUE`]: `out_of_range_values`.
    OutOfRange,
    /// Malformed, outside [1970, 2286), or beyond the configured skew: `bad_timestamps`.
    Timestamp,
    /// Anything else (not UTF-8, malformed JSON, missing or non-number value): only
    /// `payload_errors`.
    Malformed,
}

impl PayloadError {
    /// How many distinct reasons [`PayloadError::reason`] tells apart.
    pub const REASONS: usize = 14;

    /// The reason, as a number below [`Self::REASONS`]: one per variant, so the ingest can
    /// rate-limit its warnings per reason. A single limit for all of them let a flood of one
    /// kind (or one bad payload a moment earlier) hide every other kind from the log, while
    /// the counters went up.
    pub fn reason(&self) -> usize {
        match self {
            Self::TooLarge(_) => 0,
            Self::NotUtf8 => 1,
            Self::NotJsonOrNumber => 2,
            Self::Json(_) => 3,
            Self::NoValue => 4,
            Self::BothValueAndValues => 5,
            Self::EmptyValues => 6,
            Self::TooManyChannels(_) => 7,
            Self::DuplicateChannel(_) => 8,
            Self::NotANumber(_) => 9,
            Self::OutOfRange(_) => 10,
            Self::BadTimestamp(_) => 11,
            Self::TooFarAhead { .. } => 12,
            Self::TooFarBehind { .. } => 13,
        }
    }

    pub fn kind(&self) -> PayloadErrorKind {
        match self {
            Self::TooLarge(_) => PayloadErrorKind::Oversized,
            Self::TooManyChannels(_) => PayloadErrorKind::TooManyChannels,
            Self::OutOfRange(_) => PayloadErrorKind::OutOfRange,
            Self::BadTimestamp(_) | Self::TooFarAhead { .. } | Self::TooFarBehind { .. } => {
                PayloadErrorKind::Timestamp
            }
            Self::NotUtf8
            | Self::NotJsonOrNumber
            | Self::Json(_)
            | Self::NoValue
            | Self::BothValueAndValues
            | Self::EmptyValues
            | Self::DuplicateChannel(_)
            | Self::NotANumber(_) => PayloadErrorKind::Malformed,
        }
    }
}

/// Decodes one payload received at `arrival_ms` (wall clock, ms since the epoch).
pub fn decode_payload(
    payload: &[u8],
    arrival_ms: i64,
    limits: &PayloadLimits,
) -> Result<(i64, Vec<(String, f64)>), PayloadError> {
    decode_payload_stamped(payload, arrival_ms, limits).map(|(ts, _, channels)| (ts, channels))
}

/// Where a decoded reading's timestamp comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsSource {
    /// The payload's `ts`.
    Payload,
    /// The payload had none (a bare number, no `ts`, `"ts": null`): the arrival time.
    Arrival,
}

/// Whether a payload's numeric `ts`, read as milliseconds as documented, looks like seconds
/// since the epoch: as milliseconds it falls in 1970-01-12 .. 1970-04-26, as seconds in
/// 2001-09-09 .. 2286-11-20. Devices that send seconds are common; the value is still taken
/// as milliseconds (guessing would make one stream's clock depend on its first value), and
/// the daemon logs what it saw so a user whose events are dated 1970 learns why.
pub fn looks_like_seconds(ts_ms: i64) -> bool {
    (1_000_000_000..10_000_000_000).contains(&ts_ms)
}

/// A decoded payload: timestamp, where it comes from, channels sorted by name.
pub type Stamped = (i64, TsSource, Vec<(String, f64)>);

/// [`decode_payload`], also saying whether the timestamp is the arrival time.
pub fn decode_payload_stamped(
    payload: &[u8],
    arrival_ms: i64,
    limits: &PayloadLimits,
) -> Result<Stamped, PayloadError> {
    if payload.len() > limits.max_bytes {
        return Err(PayloadError::TooLarge(payload.len()));
    }
    let text = std::str::from_utf8(payload).map_err(|_| PayloadError::NotUtf8)?;
    let trimmed = text.trim();
    if !trimmed.starts_with('{') {
        let v: f64 = trimmed.parse().map_err(|_| PayloadError::NotJsonOrNumber)?;
        let v = in_range("value", v)?;
        return Ok((
            arrival_ms,
            TsSource::Arrival,
            vec![("value".to_string(), v)],
        ));
    }
    let max_channels = limits.max_channels.min(MAX_CHANNELS);
    let mut refusal = None;
    let mut de = serde_json::Deserializer::from_str(trimmed);
    let parsed = PayloadSeed {
        max_channels,
        refusal: &mut refusal,
    }
    .deserialize(&mut de)
    .and_then(|p| de.end().map(|()| p));
    let p = match (parsed, refusal) {
        // A refusal recorded by a visitor is the reason the parse stopped.
        (_, Some(e)) => return Err(e),
        (Ok(p), None) => p,
        (Err(e), None) => return Err(json_error(&e)),
    };
    let (ts, source) = match p.ts {
        None => (arrival_ms, TsSource::Arrival),
        Some(ts) => (
            check_skew(timestamp(ts)?, arrival_ms, limits)?,
            TsSource::Payload,
        ),
    };
    let channels = match (p.value, p.values) {
        (Some(_), Some(_)) => return Err(PayloadError::BothValueAndValues),
        (None, None) => return Err(PayloadError::NoValue),
        (Some(v), None) => vec![("value".to_string(), v)],
        (None, Some(mut channels)) => {
            if channels.is_empty() {
                return Err(PayloadError::EmptyValues);
            }
            channels.sort_by(|a, b| a.0.cmp(&b.0));
            if let Some(w) = channels.windows(2).find(|w| w[0].0 == w[1].0) {
                return Err(PayloadError::DuplicateChannel(w[0].0.clone()));
            }
            channels
        }
    };
    Ok((ts, source, channels))
}

/// serde_json's own refusals; a number beyond f64 (`1e400`) is an out-of-range value.
fn json_error(e: &serde_json::Error) -> PayloadError {
    let msg = e.to_string();
    if msg.starts_with("number out of range") {
        PayloadError::OutOfRange(format!("a number ({msg})"))
    } else {
        PayloadError::Json(msg)
    }
}

fn in_range(name: &str, x: f64) -> Result<f64, PayloadError> {
    if x.is_finite() && x.abs() <= MAX_ABS_VALUE {
        Ok(x)
    } else {
        Err(PayloadError::OutOfRange(name.to_string()))
    }
}

fn check_skew(ts_ms: i64, arrival_ms: i64, limits: &PayloadLimits) -> Result<i64, PayloadError> {
    let ahead = ts_ms.saturating_sub(arrival_ms);
    if limits.max_future_ms > 0 && ahead > limits.max_future_ms {
        return Err(PayloadError::TooFarAhead {
            ts_ms,
            by_ms: ahead,
        });
    }
    if limits.max_past_ms > 0 && -ahead > limits.max_past_ms {
        return Err(PayloadError::TooFarBehind {
            ts_ms,
            by_ms: -ahead,
        });
    }
    Ok(ts_ms)
}

/// A `ts` field as it came: milliseconds (any JSON number) or an RFC 3339 string.
enum RawTs {
    Ms(f64),
    Text(String),
}

fn timestamp(ts: RawTs) -> Result<i64, PayloadError> {
    match ts {
        RawTs::Ms(ms) => {
            if !(0.0..MAX_TS_MS as f64).contains(&ms) {
                return Err(PayloadError::BadTimestamp(format!(
                    "{ms} is not milliseconds since 1970 (expected 0..1e13)"
                )));
            }
            Ok(ms.round() as i64)
        }
        RawTs::Text(s) => {
            let t = chrono::DateTime::parse_from_rfc3339(&s)
                .map_err(|e| PayloadError::BadTimestamp(format!("{s:?}: {e}")))?;
            let ms = t.timestamp_millis();
            if !(0..MAX_TS_MS).contains(&ms) {
                return Err(PayloadError::BadTimestamp(format!("{s:?} is out of range")));
            }
            Ok(ms)
        }
    }
}

/// The fields of a JSON payload, values already checked.
struct RawPayload {
    ts: Option<RawTs>,
    value: Option<f64>,
    values: Option<Vec<(String, f64)>>,
}

/// Decodes the top-level object. Semantic refusals (a channel that is not a number, one
/// channel too many, …) are written to `refusal` and abort the parse with a placeholder
/// serde error, so the caller reports the typed reason.
struct PayloadSeed<'r> {
    max_channels: usize,
    refusal: &'r mut Option<PayloadError>,
}

/// Aborts a visitor with a typed refusal.
fn refuse<E: de::Error>(slot: &mut Option<PayloadError>, e: PayloadError) -> E {
    let msg = e.to_string();
    *slot = Some(e);
    E::custom(msg)
}

impl<'de> DeserializeSeed<'de> for PayloadSeed<'_> {
    type Value = RawPayload;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<RawPayload, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for PayloadSeed<'_> {
    type Value = RawPayload;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object with \"value\" or \"values\"")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawPayload, A::Error> {
        let mut p = RawPayload {
            ts: None,
            value: None,
            values: None,
        };
        let refusal = self.refusal;
        let mut seen = [false; 3];
        while let Some(field) = map.next_key::<Field>()? {
            let slot = match field {
                Field::Ts => 0,
                Field::Value => 1,
                Field::Values => 2,
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            if std::mem::replace(&mut seen[slot], true) {
                return Err(de::Error::custom(format_args!(
                    "duplicate field `{}`",
                    ["ts", "value", "values"][slot]
                )));
            }
            match field {
                Field::Ts => {
                    p.ts = map.next_value_seed(TsSeed {
                        refusal: &mut *refusal,
                    })?
                }
                Field::Value => {
                    p.value = Some(map.next_value_seed(NumberSeed {
                        name: "value",
                        refusal: &mut *refusal,
                    })?)
                }
                Field::Values => {
                    p.values = Some(map.next_value_seed(ChannelsSeed {
                        max_channels: self.max_channels,
                        refusal: &mut *refusal,
                    })?)
                }
                Field::Other => unreachable!("skipped above"),
            }
        }
        Ok(p)
    }
}

/// A top-level field name, matched without allocating.
enum Field {
    Ts,
    Value,
    Values,
    Other,
}

impl<'de> de::Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Field;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Field, E> {
                Ok(match s {
                    "ts" => Field::Ts,
                    "value" => Field::Value,
                    "values" => Field::Values,
                    _ => Field::Other,
                })
            }
        }
        d.deserialize_identifier(V)
    }
}

/// One channel value: a JSON number, checked by [`in_range`]; anything else is refused
/// before it is parsed further.
struct NumberSeed<'n, 'r> {
    name: &'n str,
    refusal: &'r mut Option<PayloadError>,
}

impl<'de> DeserializeSeed<'de> for NumberSeed<'_, '_> {
    type Value = f64;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<f64, D::Error> {
        d.deserialize_any(self)
    }
}

impl NumberSeed<'_, '_> {
    fn number<E: de::Error>(self, x: f64) -> Result<f64, E> {
        in_range(self.name, x).map_err(|e| refuse(self.refusal, e))
    }

    fn not_a_number<E: de::Error>(self) -> Result<f64, E> {
        Err(refuse(
            self.refusal,
            PayloadError::NotANumber(self.name.to_string()),
        ))
    }
}

impl<'de> Visitor<'de> for NumberSeed<'_, '_> {
    type Value = f64;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a number")
    }
    fn visit_f64<E: de::Error>(self, x: f64) -> Result<f64, E> {
        self.number(x)
    }
    fn visit_i64<E: de::Error>(self, x: i64) -> Result<f64, E> {
        self.number(x as f64)
    }
    fn visit_u64<E: de::Error>(self, x: u64) -> Result<f64, E> {
        self.number(x as f64)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<f64, E> {
        self.not_a_number()
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<f64, E> {
        self.not_a_number()
    }
    fn visit_unit<E: de::Error>(self) -> Result<f64, E> {
        self.not_a_number()
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<f64, A::Error> {
        self.not_a_number()
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<f64, A::Error> {
        self.not_a_number()
    }
}

/// The `values` object: at most `max_channels` (name, number) pairs, refused at the first
/// one beyond.
struct ChannelsSeed<'r> {
    max_channels: usize,
    refusal: &'r mut Option<PayloadError>,
}

impl<'de> DeserializeSeed<'de> for ChannelsSeed<'_> {
    type Value = Vec<(String, f64)>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ChannelsSeed<'_> {
    type Value = Vec<(String, f64)>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object of channel name → number")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let refusal = self.refusal;
        let mut channels = Vec::with_capacity(map.size_hint().unwrap_or(0).min(self.max_channels));
        while let Some(name) = map.next_key::<String>()? {
            if channels.len() == self.max_channels {
                return Err(refuse(
                    refusal,
                    PayloadError::TooManyChannels(self.max_channels),
                ));
            }
            let v = map.next_value_seed(NumberSeed {
                name: &name,
                refusal: &mut *refusal,
            })?;
            channels.push((name, v));
        }
        Ok(channels)
    }
}

/// The `ts` field: `null` (use the arrival time), a number of ms, or a string.
struct TsSeed<'r> {
    refusal: &'r mut Option<PayloadError>,
}

impl<'de> DeserializeSeed<'de> for TsSeed<'_> {
    type Value = Option<RawTs>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl TsSeed<'_> {
    fn bad<E: de::Error>(self, what: &str) -> Result<Option<RawTs>, E> {
        Err(refuse(
            self.refusal,
            PayloadError::BadTimestamp(format!(
                "{what} is neither a number nor an RFC 3339 string"
            )),
        ))
    }
}

impl<'de> Visitor<'de> for TsSeed<'_> {
    type Value = Option<RawTs>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("milliseconds since 1970 or an RFC 3339 string")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E: de::Error>(self, x: f64) -> Result<Self::Value, E> {
        Ok(Some(RawTs::Ms(x)))
    }
    fn visit_i64<E: de::Error>(self, x: i64) -> Result<Self::Value, E> {
        Ok(Some(RawTs::Ms(x as f64)))
    }
    fn visit_u64<E: de::Error>(self, x: u64) -> Result<Self::Value, E> {
        Ok(Some(RawTs::Ms(x as f64)))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Some(RawTs::Text(s.to_string())))
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
        self.bad(&b.to_string())
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
        self.bad("an array")
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
        self.bad("an object")
    }
}

#[cfg(test)]
mod tests;
