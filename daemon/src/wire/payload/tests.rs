//! The decoder against hand-picked hostile payloads, and property tests with many generated
//! ones: arbitrary bytes never panic, and JSON payloads decode exactly as a naive reference
//! decoder (a full `serde_json::Value` tree, the decoder this one replaced) says they should.

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::Value;

use super::*;

const ARRIVAL: i64 = 1_000;

fn limits(max_bytes: usize) -> PayloadLimits {
    PayloadLimits::with_max_bytes(max_bytes)
}

fn dec(s: &str) -> Result<(i64, Vec<(String, f64)>), PayloadError> {
    decode_payload(s.as_bytes(), ARRIVAL, &limits(1024))
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
    let (ts, ch) = dec(r#"{"ts": "2026-01-05T08:00:00.250+01:00", "values": {"temp": 1.2, "rpm": 900}, "unit": "x"}"#).unwrap();
    assert_eq!(ts, 1_767_596_400_250);
    assert_eq!(ch, vec![("rpm".into(), 900.0), ("temp".into(), 1.2)]);
    assert_eq!(dec(r#"{"value": 3}"#).unwrap().0, ARRIVAL);
    assert_eq!(dec(r#"{"ts": null, "value": 3}"#).unwrap().0, ARRIVAL);
    // Ignored fields may hold anything, nested deeply or with numbers beyond f64.
    assert_eq!(
        dec(r#"{"meta": {"a": [1, {"b": null}], "big": 1e400}, "value": -4}"#).unwrap(),
        (ARRIVAL, vec![("value".into(), -4.0)])
    );
}

/// The worker moves arrival-time timestamps past the stream's last one, so it must know which
/// timestamps are arrival times, including one that equals a payload's `ts`.
#[test]
fn says_whether_the_timestamp_is_the_arrival_time() {
    let source = |s: &str| {
        decode_payload_stamped(s.as_bytes(), ARRIVAL, &limits(1024))
            .unwrap()
            .1
    };
    assert_eq!(source("1.5"), TsSource::Arrival);
    assert_eq!(source(r#"{"value": 3}"#), TsSource::Arrival);
    assert_eq!(
        source(r#"{"ts": null, "values": {"a": 1}}"#),
        TsSource::Arrival
    );
    assert_eq!(source(r#"{"ts": 1000, "value": 3}"#), TsSource::Payload);
    assert_eq!(
        source(r#"{"ts": "1970-01-01T00:00:01Z", "value": 3}"#),
        TsSource::Payload
    );
}

#[test]
fn refuses_bad_payloads_with_a_reason() {
    use PayloadErrorKind as K;
    let cases: &[(&str, K, &str)] = &[
        ("NaN", K::OutOfRange, "OutOfRange"),
        ("inf", K::OutOfRange, "OutOfRange"),
        ("-1e300", K::OutOfRange, "OutOfRange"),
        ("abc", K::Malformed, "NotJsonOrNumber"),
        ("{\"value\": ", K::Malformed, "Json"),
        (r#"{"value": "abc"}"#, K::Malformed, "NotANumber"),
        (r#"{"value": 1e400}"#, K::OutOfRange, "OutOfRange"),
        (r#"{"value": -1e101}"#, K::OutOfRange, "OutOfRange"),
        (
            r#"{"values": {"a": 1, "b": 1e400}}"#,
            K::OutOfRange,
            "OutOfRange",
        ),
        (r#"{"ts": 1}"#, K::Malformed, "NoValue"),
        (
            r#"{"value": 1, "values": {"a": 1}}"#,
            K::Malformed,
            "BothValueAndValues",
        ),
        (r#"{"value": 1, "value": 2}"#, K::Malformed, "Json"),
        (r#"{"values": {}}"#, K::Malformed, "EmptyValues"),
        (r#"{"values": {"a": null}}"#, K::Malformed, "NotANumber"),
        (
            r#"{"values": {"a": 1, "a": 2}}"#,
            K::Malformed,
            "DuplicateChannel",
        ),
        (r#"{"values": [1, 2]}"#, K::Malformed, "Json"),
        (r#"{"ts": -5, "value": 1}"#, K::Timestamp, "BadTimestamp"),
        (r#"{"ts": 1e20, "value": 1}"#, K::Timestamp, "BadTimestamp"),
        (
            r#"{"ts": "yesterday", "value": 1}"#,
            K::Timestamp,
            "BadTimestamp",
        ),
        (
            r#"{"ts": "+275760-09-13T00:00:00Z", "value": 1}"#,
            K::Timestamp,
            "BadTimestamp",
        ),
        (r#"{"ts": true, "value": 1}"#, K::Timestamp, "BadTimestamp"),
        (r#"{"ts": [1], "value": 1}"#, K::Timestamp, "BadTimestamp"),
        ("[1, 2]", K::Malformed, "NotJsonOrNumber"),
        ("{\"value\": 1} x", K::Malformed, "Json"),
    ];
    for (text, kind, variant) in cases {
        let err = dec(text).unwrap_err();
        assert_eq!(err.kind(), *kind, "{text:?} gave {err:?}");
        assert!(
            format!("{err:?}").starts_with(variant),
            "{text:?} gave {err:?}, expected {variant}"
        );
    }
    assert_eq!(
        decode_payload(&[0xff, 0xfe], 0, &limits(1024)),
        Err(PayloadError::NotUtf8)
    );
    let mut bad_utf8 = br#"{"value": 1, "x": ""#.to_vec();
    bad_utf8.extend_from_slice(&[0xc3, 0x28, b'"', b'}']);
    assert_eq!(
        decode_payload(&bad_utf8, 0, &limits(1024)),
        Err(PayloadError::NotUtf8)
    );
    let err = decode_payload(&[b'1'; 2000], 0, &limits(1024)).unwrap_err();
    assert_eq!(err, PayloadError::TooLarge(2000));
    assert_eq!(err.kind(), K::Oversized);
}

/// 100 000 (and 1 000 000) `[` neither overflow the stack nor take long, wherever they are:
/// as a channel value (refused at the first `[`), in an ignored field (skipped iteratively by
/// serde_json), or as `values`. Run on a thread with a 128 KiB stack to show the decoder's
/// stack use does not grow with the nesting.
#[test]
fn deep_nesting_uses_no_stack() {
    let worker = std::thread::Builder::new()
        .stack_size(128 * 1024)
        .spawn(|| {
            let big = limits(16 << 20);
            for depth in [100_000, 1_000_000] {
                let open = "[".repeat(depth);
                let close = "]".repeat(depth);
                let as_value = format!("{{\"value\": {open}{close}}}");
                assert!(matches!(
                    decode_payload(as_value.as_bytes(), 0, &big),
                    Err(PayloadError::NotANumber(_))
                ));
                let ignored = format!("{{\"x\": {open}{close}, \"value\": 1}}");
                assert_eq!(
                    decode_payload(ignored.as_bytes(), 0, &big),
                    Ok((0, vec![("value".into(), 1.0)]))
                );
                let unclosed = format!("{{\"x\": {open}");
                assert!(matches!(
                    decode_payload(unclosed.as_bytes(), 0, &big),
                    Err(PayloadError::Json(_))
                ));
                let objects = format!("{{\"values\": {{\"a\": {}", "{\"a\": ".repeat(depth));
                assert!(matches!(
                    decode_payload(objects.as_bytes(), 0, &big),
                    Err(PayloadError::NotANumber(_))
                ));
            }
        })
        .unwrap();
    worker.join().expect("no stack overflow");
}

/// 10 000 channels in one payload: refused at the first one beyond `max_channels`, with at most
/// that many decoded.
#[test]
fn a_channel_explosion_is_refused_at_the_limit() {
    let many: Vec<String> = (0..10_000).map(|i| format!("\"c{i}\": {i}")).collect();
    let text = format!("{{\"values\": {{{}}}}}", many.join(","));
    for max in [1, 8, MAX_CHANNELS] {
        let l = PayloadLimits {
            max_channels: max,
            ..limits(1 << 20)
        };
        let err = decode_payload(text.as_bytes(), 0, &l).unwrap_err();
        assert_eq!(err, PayloadError::TooManyChannels(max));
        assert_eq!(err.kind(), PayloadErrorKind::TooManyChannels);
    }
    // A configured limit above the dsp's is capped at the dsp's.
    let l = PayloadLimits {
        max_channels: 100_000,
        ..limits(1 << 20)
    };
    assert_eq!(
        decode_payload(text.as_bytes(), 0, &l),
        Err(PayloadError::TooManyChannels(MAX_CHANNELS))
    );
    let exactly: Vec<String> = (0..8).map(|i| format!("\"c{i}\": {i}")).collect();
    let text = format!("{{\"values\": {{{}}}}}", exactly.join(","));
    let l = PayloadLimits {
        max_channels: 8,
        ..limits(1 << 20)
    };
    assert_eq!(decode_payload(text.as_bytes(), 0, &l).unwrap().1.len(), 8);
}

#[test]
fn timestamps_beyond_the_configured_skew_are_refused() {
    let now = 1_767_600_000_000;
    let l = PayloadLimits {
        max_future_ms: 60_000,
        max_past_ms: 3_600_000,
        ..limits(1024)
    };
    let at = |ts: i64| decode_payload(format!("{{\"ts\":{ts},\"value\":1}}").as_bytes(), now, &l);
    assert_eq!(at(now + 60_000).unwrap().0, now + 60_000);
    assert_eq!(at(now - 3_600_000).unwrap().0, now - 3_600_000);
    assert_eq!(
        at(now + 60_001),
        Err(PayloadError::TooFarAhead {
            ts_ms: now + 60_001,
            by_ms: 60_001
        })
    );
    let err = at(now - 3_600_001).unwrap_err();
    assert_eq!(
        err,
        PayloadError::TooFarBehind {
            ts_ms: now - 3_600_001,
            by_ms: 3_600_001
        }
    );
    assert_eq!(err.kind(), PayloadErrorKind::Timestamp);
    // RFC 3339 strings are held to the same window; 0 turns each side off.
    let far = decode_payload(br#"{"ts":"2200-01-01T00:00:00Z","value":1}"#, now, &l);
    assert!(matches!(far, Err(PayloadError::TooFarAhead { .. })));
    let open = PayloadLimits {
        max_future_ms: 0,
        max_past_ms: 0,
        ..l
    };
    assert!(decode_payload(br#"{"ts":"2200-01-01T00:00:00Z","value":1}"#, now, &open).is_ok());
    assert!(decode_payload(br#"{"ts":0,"value":1}"#, now, &open).is_ok());
}

// ---- property tests -------------------------------------------------------------------------

/// The decoder this one replaced, with today's limits: the whole payload parsed into a
/// `serde_json::Value`, then checked. Slow and allocation-hungry, but obviously right; the
/// streaming decoder must agree with it on every payload it can judge (no duplicate channel
/// names, which a `Value` map cannot see).
fn reference(
    payload: &[u8],
    arrival_ms: i64,
    l: &PayloadLimits,
) -> Result<(i64, Vec<(String, f64)>), ()> {
    if payload.len() > l.max_bytes {
        return Err(());
    }
    let text = std::str::from_utf8(payload).map_err(|_| ())?.trim();
    if !text.starts_with('{') {
        let v: f64 = text.parse().map_err(|_| ())?;
        return in_range("value", v)
            .map(|v| (arrival_ms, vec![("value".into(), v)]))
            .map_err(|_| ());
    }
    let Value::Object(obj) = serde_json::from_str::<Value>(text).map_err(|_| ())? else {
        return Err(());
    };
    let ts = match obj.get("ts") {
        None | Some(Value::Null) => arrival_ms,
        Some(Value::Number(n)) => {
            let ms = n.as_f64().ok_or(())?;
            check_ts(timestamp(RawTs::Ms(ms)), arrival_ms, l)?
        }
        Some(Value::String(s)) => check_ts(timestamp(RawTs::Text(s.clone())), arrival_ms, l)?,
        Some(_) => return Err(()),
    };
    let number = |name: &str, v: &Value| {
        v.as_f64()
            .ok_or(())
            .and_then(|x| in_range(name, x).map_err(|_| ()))
    };
    let channels = match (obj.get("value"), obj.get("values")) {
        (Some(v), None) => vec![("value".to_string(), number("value", v)?)],
        (None, Some(Value::Object(m)))
            if !m.is_empty() && m.len() <= l.max_channels.min(MAX_CHANNELS) =>
        {
            let sorted: BTreeMap<&String, &Value> = m.iter().collect();
            sorted
                .into_iter()
                .map(|(k, v)| number(k, v).map(|x| (k.clone(), x)))
                .collect::<Result<_, _>>()?
        }
        _ => return Err(()),
    };
    Ok((ts, channels))
}

fn check_ts(ts: Result<i64, PayloadError>, arrival: i64, l: &PayloadLimits) -> Result<i64, ()> {
    ts.and_then(|t| check_skew(t, arrival, l)).map_err(|_| ())
}

/// Numbers as they appear in JSON text: ordinary, huge, tiny, negative zero, exponents,
/// integers beyond i64, and a few things that are not JSON numbers at all.
fn number_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<f64>().prop_map(|x| format!("{x}")),
        (-1e6f64..1e6).prop_map(|x| format!("{x}")),
        any::<i64>().prop_map(|x| x.to_string()),
        (0u64..20_000_000_000_000).prop_map(|x| x.to_string()),
        (-400i32..400, -9i32..10).prop_map(|(e, m)| format!("{m}e{e}")),
        Just("-0".to_string()),
        Just("1E+2".to_string()),
        Just("123456789012345678901234567890".to_string()),
        Just("NaN".to_string()),
        Just("Infinity".to_string()),
        Just("01".to_string()),
        Just("1.".to_string()),
    ]
}

/// Short names, with escapes and non-ASCII, rendered as JSON strings.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-d]{1,2}".prop_map(|s| s.to_string()),
        Just("ts".to_string()),
        Just("value".to_string()),
        Just("values".to_string()),
        Just("ä\u{1F600}".to_string()),
        Just(String::new()),
    ]
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

/// Numbers a `serde_json::Value` can hold (for ignored fields, which the reference decoder
/// cannot skip without parsing: it would refuse `1e400` there, where the decoder ignores it).
fn tame_number_text() -> BoxedStrategy<String> {
    prop_oneof![
        (-1e6f64..1e6).prop_map(|x| format!("{x}")),
        any::<i64>().prop_map(|x| x.to_string()),
    ]
    .boxed()
}

/// Any JSON-ish value as text, nested a few levels.
fn value_text() -> impl Strategy<Value = String> {
    value_text_with(number_text().boxed())
}

fn value_text_with(numbers: BoxedStrategy<String>) -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        numbers,
        Just("null".to_string()),
        Just("true".to_string()),
        name().prop_map(|s| json_string(&s)),
        Just("\"2026-01-05T08:00:00Z\"".to_string()),
        Just("\"2200-01-05T08:00:00.5+02:00\"".to_string()),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec((name(), inner), 0..6).prop_map(|kv| {
                let fields: Vec<String> = kv
                    .iter()
                    .map(|(k, v)| format!("{}:{v}", json_string(k)))
                    .collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    })
}

/// A `values` object with distinct channel names and mostly numeric values.
fn values_text() -> impl Strategy<Value = String> {
    prop::collection::btree_map(
        "[a-z]{1,3}",
        prop_oneof![4 => number_text(), 1 => value_text()],
        0..12,
    )
    .prop_map(|m| {
        let fields: Vec<String> = m
            .iter()
            .map(|(k, v)| format!("{}:{v}", json_string(k)))
            .collect();
        format!("{{{}}}", fields.join(","))
    })
}

/// A payload-shaped JSON object: some of ts / value / values / other fields, in any order.
fn payload_text() -> impl Strategy<Value = String> {
    let ts = prop_oneof![
        number_text(),
        (1_767_000_000_000i64..1_768_000_000_000).prop_map(|t| t.to_string()),
        Just("null".to_string()),
        Just("\"2026-01-05T08:00:00Z\"".to_string()),
        Just("\"2026-13-05T08:00:00Z\"".to_string()),
        value_text(),
    ];
    (
        prop::option::of(ts),
        prop::option::of(prop_oneof![3 => number_text(), 1 => value_text()]),
        prop::option::of(values_text()),
        prop::collection::vec(("[e-h]{1,2}", value_text_with(tame_number_text())), 0..3),
        any::<u64>(),
    )
        .prop_map(|(ts, value, values, others, order)| {
            let mut fields: Vec<String> = others
                .iter()
                .map(|(k, v)| format!("{}:{v}", json_string(k)))
                .collect();
            for (k, v) in [("ts", ts), ("value", value), ("values", values)] {
                if let Some(v) = v {
                    fields.push(format!("\"{k}\": {v}"));
                }
            }
            // A cheap seeded shuffle: the decoder must not depend on field order.
            let n = fields.len().max(1);
            fields.rotate_left((order as usize) % n);
            format!(" {{{}}}\n", fields.join(" , "))
        })
}

fn limits_strategy() -> impl Strategy<Value = PayloadLimits> {
    (
        16usize..400,
        1usize..80,
        prop_oneof![Just(0i64), 1i64..100_000_000_000],
        prop_oneof![Just(0i64), 1i64..100_000_000_000],
    )
        .prop_map(
            |(max_bytes, max_channels, max_future_ms, max_past_ms)| PayloadLimits {
                max_bytes,
                max_channels,
                max_future_ms,
                max_past_ms,
            },
        )
}

/// What every accepted payload satisfies.
fn check_invariants(out: &(i64, Vec<(String, f64)>), l: &PayloadLimits, arrival: i64) {
    let (ts, channels) = out;
    assert!((0..MAX_TS_MS).contains(ts) || *ts == arrival);
    if l.max_future_ms > 0 {
        assert!(ts - arrival <= l.max_future_ms);
    }
    if l.max_past_ms > 0 {
        assert!(arrival - ts <= l.max_past_ms);
    }
    assert!(!channels.is_empty() && channels.len() <= l.max_channels.min(MAX_CHANNELS));
    assert!(
        channels.windows(2).all(|w| w[0].0 < w[1].0),
        "sorted, distinct"
    );
    assert!(channels
        .iter()
        .all(|(_, v)| v.is_finite() && v.abs() <= MAX_ABS_VALUE));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 20_000, ..ProptestConfig::default() })]

    /// Arbitrary bytes (mostly not UTF-8, not JSON) never panic, and what is accepted is valid.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300), l in limits_strategy(), arrival in 0i64..4_000_000_000_000) {
        if let Ok(out) = decode_payload(&bytes, arrival, &l) {
            check_invariants(&out, &l, arrival);
        }
    }

    /// Generated JSON payloads decode exactly as the reference decoder says.
    #[test]
    fn json_payloads_agree_with_the_reference(text in payload_text(), l in limits_strategy(), arrival in 1_767_000_000_000i64..1_768_000_000_000) {
        let l = PayloadLimits { max_bytes: l.max_bytes * 4, ..l };
        let got = decode_payload(text.as_bytes(), arrival, &l);
        let want = reference(text.as_bytes(), arrival, &l);
        match (&got, &want) {
            (Ok(g), Ok(w)) => {
                prop_assert_eq!(g, w);
                check_invariants(g, &l, arrival);
            }
            (Err(_), Err(())) => {}
            _ => prop_assert!(false, "{text:?}: decoder {got:?}, reference {want:?}"),
        }
    }

    /// The same payloads cut off or with a byte replaced: never a panic, never an invalid
    /// reading.
    #[test]
    fn mutated_json_never_panics(text in payload_text(), cut in any::<prop::sample::Index>(), pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = text.into_bytes();
        let i = pos.index(bytes.len().max(1)).min(bytes.len().saturating_sub(1));
        if let Some(b) = bytes.get_mut(i) {
            *b = byte;
        }
        let l = limits(1 << 16);
        if let Ok(out) = decode_payload(&bytes, 5, &l) {
            check_invariants(&out, &l, 5);
        }
        bytes.truncate(cut.index(bytes.len() + 1));
        if let Ok(out) = decode_payload(&bytes, 5, &l) {
            check_invariants(&out, &l, 5);
        }
    }
}

#[test]
fn timestamps_in_seconds_are_recognised_but_read_as_documented() {
    for secs in [1_000_000_000i64, 1_767_600_000, 9_999_999_999] {
        assert!(looks_like_seconds(secs), "{secs}");
    }
    for ms in [0i64, 999_999_999, 10_000_000_000, 1_767_600_000_000] {
        assert!(!looks_like_seconds(ms), "{ms}");
    }
    let (ts, source, _) =
        decode_payload_stamped(br#"{"ts": 1767600000, "value": 1}"#, 0, &limits(1024)).unwrap();
    assert_eq!((ts, source), (1_767_600_000, TsSource::Payload));
}

/// The ingest keeps one log limit per reason: every variant needs its own number, in range,
/// or two reasons would again share one limit and one would hide the other.
#[test]
fn every_refusal_reason_has_its_own_number() {
    let s = String::new;
    let all = [
        PayloadError::TooLarge(1),
        PayloadError::NotUtf8,
        PayloadError::NotJsonOrNumber,
        PayloadError::Json(s()),
        PayloadError::NoValue,
        PayloadError::BothValueAndValues,
        PayloadError::EmptyValues,
        PayloadError::TooManyChannels(1),
        PayloadError::DuplicateChannel(s()),
        PayloadError::NotANumber(s()),
        PayloadError::OutOfRange(s()),
        PayloadError::BadTimestamp(s()),
        PayloadError::TooFarAhead { ts_ms: 0, by_ms: 0 },
        PayloadError::TooFarBehind { ts_ms: 0, by_ms: 0 },
    ];
    assert_eq!(all.len(), PayloadError::REASONS);
    let mut seen = [false; PayloadError::REASONS];
    for e in &all {
        let r = e.reason();
        assert!(r < PayloadError::REASONS, "{e:?}: {r}");
        assert!(!std::mem::replace(&mut seen[r], true), "{e:?} shares {r}");
    }
}
