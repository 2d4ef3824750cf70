//! Payload formats:
//!
//! - JSON, one channel: `{"ts": 1700000000000, "value": 1.2}` (channel name `value`)
//! - JSON, several channels: `{"ts": "2026-01-05T08:00:00Z", "values": {"temp": 1.2, "rpm": 900}}`
//! - a bare number: `1.2` (the arrival time is the timestamp)
//!
//! `ts` is milliseconds since the Unix epoch or an RFC 3339 string; without it the arrival time
//! is used. Other JSON fields are ignored. Channels are ordered by name.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
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
    #[error("{0} channels, more than the {MAX_CHANNELS} allowed")]
    TooManyChannels(usize),
    #[error("channel {0:?} is not a number")]
    NotANumber(String),
    #[error("channel {0:?} is not finite")]
    NonFinite(String),
    #[error("bad timestamp: {0}")]
    BadTimestamp(String),
}

#[derive(Deserialize)]
struct JsonPayload {
    ts: Option<Value>,
    value: Option<Value>,
    values: Option<BTreeMap<String, Value>>,
}

/// Timestamps outside [1970, 2286) are refused rather than wrapped or misread as seconds.
const MAX_TS_MS: f64 = 1e13;

/// Decodes one payload received at `arrival_ms` (wall clock, ms since the epoch).
pub fn decode_payload(
    payload: &[u8],
    arrival_ms: i64,
    max_bytes: usize,
) -> Result<(i64, Vec<(String, f64)>), PayloadError> {
    if payload.len() > max_bytes {
        return Err(PayloadError::TooLarge(payload.len()));
    }
    let text = std::str::from_utf8(payload).map_err(|_| PayloadError::NotUtf8)?;
    let trimmed = text.trim();
    if !trimmed.starts_with('{') {
        let v: f64 = trimmed.parse().map_err(|_| PayloadError::NotJsonOrNumber)?;
        let v = finite("value", v)?;
        return Ok((arrival_ms, vec![("value".to_string(), v)]));
    }
    let p: JsonPayload =
        serde_json::from_str(trimmed).map_err(|e| PayloadError::Json(e.to_string()))?;
    let ts = match p.ts {
        None | Some(Value::Null) => arrival_ms,
        Some(ts) => timestamp(&ts)?,
    };
    let channels = match (p.value, p.values) {
        (Some(_), Some(_)) => return Err(PayloadError::BothValueAndValues),
        (None, None) => return Err(PayloadError::NoValue),
        (Some(v), None) => vec![("value".to_string(), number("value", &v)?)],
        (None, Some(map)) => {
            if map.is_empty() {
                return Err(PayloadError::EmptyValues);
            }
            if map.len() > MAX_CHANNELS {
                return Err(PayloadError::TooManyChannels(map.len()));
            }
            map.into_iter()
                .map(|(name, v)| number(&name, &v).map(|x| (name, x)))
                .collect::<Result<_, _>>()?
        }
    };
    Ok((ts, channels))
}

fn number(name: &str, v: &Value) -> Result<f64, PayloadError> {
    let x = v
        .as_f64()
        .ok_or_else(|| PayloadError::NotANumber(name.to_string()))?;
    finite(name, x)
}

fn finite(name: &str, x: f64) -> Result<f64, PayloadError> {
    if x.is_finite() {
        Ok(x)
    } else {
        Err(PayloadError::NonFinite(name.to_string()))
    }
}

fn timestamp(ts: &Value) -> Result<i64, PayloadError> {
    match ts {
        Value::Number(n) => {
            let ms = n
                .as_f64()
                .ok_or_else(|| PayloadError::BadTimestamp(n.to_string()))?;
            if !(0.0..MAX_TS_MS).contains(&ms) {
                return Err(PayloadError::BadTimestamp(format!(
                    "{n} is not milliseconds since 1970 (expected 0..1e13)"
                )));
            }
            Ok(ms.round() as i64)
        }
        Value::String(s) => {
            let t = chrono::DateTime::parse_from_rfc3339(s)
                .map_err(|e| PayloadError::BadTimestamp(format!("{s:?}: {e}")))?;
            let ms = t.timestamp_millis();
            if !(0..MAX_TS_MS as i64).contains(&ms) {
                return Err(PayloadError::BadTimestamp(format!("{s:?} is out of range")));
            }
            Ok(ms)
        }
        other => Err(PayloadError::BadTimestamp(format!(
            "{other} is neither a number nor an RFC 3339 string"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARRIVAL: i64 = 1_000;

    fn dec(s: &str) -> Result<(i64, Vec<(String, f64)>), PayloadError> {
        decode_payload(s.as_bytes(), ARRIVAL, 1024)
    }

    #[test]
    fn accepts_the_three_formats() {
        assert_eq!(
            dec(" 1.5\n").unwrap(),
            (ARRIVAL, vec![("value".into(), 1.5)])
        );
        assert_eq!(
            dec(r#"{"ts": 1700000000000, "value": 2}"#).unwrap(),
            (1_700_000_000_000, vec![("value".into(), 2.0)])
        );
        let (ts, ch) = dec(r#"{"ts": "2026-01-05T08:00:00.250+01:00", "values": {"rpm": 900, "temp": 1.2}, "unit": "x"}"#).unwrap();
        assert_eq!(ts, 1_767_596_400_250);
        assert_eq!(ch, vec![("rpm".into(), 900.0), ("temp".into(), 1.2)]);
        assert_eq!(dec(r#"{"value": 3}"#).unwrap().0, ARRIVAL);
    }

    #[test]
    fn refuses_bad_payloads_with_a_reason() {
        type IsExpected = fn(&PayloadError) -> bool;
        let cases: &[(&str, IsExpected)] = &[
            ("NaN", |e| matches!(e, PayloadError::NonFinite(_))),
            ("inf", |e| matches!(e, PayloadError::NonFinite(_))),
            ("abc", |e| matches!(e, PayloadError::NotJsonOrNumber)),
            ("{\"value\": ", |e| matches!(e, PayloadError::Json(_))),
            (r#"{"value": "abc"}"#, |e| {
                matches!(e, PayloadError::NotANumber(_))
            }),
            (r#"{"value": 1e400}"#, |e| {
                matches!(e, PayloadError::Json(_))
            }),
            (r#"{"ts": 1}"#, |e| matches!(e, PayloadError::NoValue)),
            (r#"{"value": 1, "values": {"a": 1}}"#, |e| {
                matches!(e, PayloadError::BothValueAndValues)
            }),
            (r#"{"values": {}}"#, |e| {
                matches!(e, PayloadError::EmptyValues)
            }),
            (r#"{"values": {"a": null}}"#, |e| {
                matches!(e, PayloadError::NotANumber(_))
            }),
            (r#"{"ts": -5, "value": 1}"#, |e| {
                matches!(e, PayloadError::BadTimestamp(_))
            }),
            (r#"{"ts": 1e20, "value": 1}"#, |e| {
                matches!(e, PayloadError::BadTimestamp(_))
            }),
            (r#"{"ts": "yesterday", "value": 1}"#, |e| {
                matches!(e, PayloadError::BadTimestamp(_))
            }),
            (r#"{"ts": true, "value": 1}"#, |e| {
                matches!(e, PayloadError::BadTimestamp(_))
            }),
            ("[1, 2]", |e| matches!(e, PayloadError::NotJsonOrNumber)),
        ];
        for (text, is_expected) in cases {
            let err = dec(text).unwrap_err();
            assert!(is_expected(&err), "{text:?} gave {err:?}");
        }
        assert_eq!(
            decode_payload(&[0xff, 0xfe], 0, 1024),
            Err(PayloadError::NotUtf8)
        );
        assert_eq!(
            decode_payload(&[b'1'; 2000], 0, 1024),
            Err(PayloadError::TooLarge(2000))
        );
        // serde_json's recursion limit refuses deep nesting instead of overflowing the stack.
        let deep = format!("{{\"value\": {}", "[".repeat(100_000));
        assert!(matches!(
            decode_payload(deep.as_bytes(), 0, 1 << 20),
            Err(PayloadError::Json(_))
        ));
    }
}
