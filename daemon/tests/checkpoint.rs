//! Checkpoints: the file format, the state directory's two generations, every fault the
//! issue lists (a write killed half-way, a truncated file, a flipped byte, a full disk), and
//! restored streams that continue exactly where they stopped.

use std::path::Path;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use sparsewatch::checkpoint::store::{CURRENT, PREVIOUS, REJECTED_SUFFIX, TMP};
use sparsewatch::checkpoint::{
    self, decode_file, encode_file, encode_stream, inspect_path, CheckpointError, Fault, FileParts,
    Generation, Meta, Store, StreamRecord,
};
use sparsewatch::metrics::Metrics;
use sparsewatch::wire::Reading;
use sparsewatch::worker::{Dispatch, WorkerContext, Workers};
use sparsewatch_dsp::{
    DetectorKind, Pipeline, PipelineParams, Sample, ValidPipelineParams, WindowReport,
};

fn params() -> ValidPipelineParams {
    PipelineParams::default().check().unwrap()
}

/// A deterministic two-channel signal: a slow sine plus a faster one.
fn value(t: i64) -> [f64; 2] {
    let x = t as f64;
    [
        10.0 + (x * 0.21).sin() + 0.3 * (x * 1.7).sin(),
        5.0 + (x * 0.05).cos(),
    ]
}

fn feed(p: &mut Pipeline, range: std::ops::Range<i64>) -> Vec<WindowReport> {
    range
        .filter_map(|t| p.push(Sample::new(t * 1000, &value(t)).unwrap()).report)
        .collect()
}

/// The checkpoint record of a two-channel stream `key` with `pipeline`.
fn record(key: &str, pipeline: Pipeline) -> StreamRecord {
    StreamRecord {
        key: key.into(),
        channels: vec!["a".into(), "b".into()],
        pipeline,
        silent: false,
    }
}

/// A stream that has learned `samples` samples.
fn learned(key: &str, samples: i64) -> StreamRecord {
    let mut pipeline = Pipeline::new(&params(), 2);
    feed(&mut pipeline, 0..samples);
    record(key, pipeline)
}

fn file_of(records: &[StreamRecord], created_ms: i64) -> Vec<u8> {
    let encoded: Vec<Vec<u8>> = records
        .iter()
        .map(|r| encode_stream(&r.key, &r.channels, &r.pipeline))
        .collect();
    let meta = Meta {
        created_ms,
        node: "edge-1".into(),
        daemon_version: "test".into(),
        streams: encoded.len() as u64,
    };
    encode_file(&meta, &encoded)
}

/// Two generations on disk: `old` (1 stream) saved first, then `new` (2 streams), the
/// second written part by part as the daemon does.
fn two_generations(dir: &Path) -> Store {
    let store = Store::open(dir).unwrap();
    store.save(&file_of(&[learned("a/1", 300)], 1_000)).unwrap();
    let records: Vec<Vec<u8>> = [learned("a/1", 600), learned("a/2", 200)]
        .iter()
        .map(|r| encode_stream(&r.key, &r.channels, &r.pipeline))
        .collect();
    let meta = Meta {
        created_ms: 2_000,
        node: "edge-1".into(),
        daemon_version: "test".into(),
        streams: 2,
    };
    let parts = FileParts::new(&meta, &records);
    assert_eq!(parts.len(), encode_file(&meta, &records).len());
    store.save_parts(parts.parts()).unwrap();
    store
}

/// A file round-trips: the same meta, keys, channel names and bit-identical pipelines.
#[test]
fn a_checkpoint_round_trips() {
    let records = vec![learned("plant/pump1", 900), learned("plant/pump2", 10)];
    let bytes = file_of(&records, 42);
    let c = decode_file(&bytes).unwrap();
    assert_eq!(c.meta.created_ms, 42);
    assert_eq!(c.meta.streams, 2);
    assert_eq!(c.file_bytes, bytes.len());
    let back: Vec<StreamRecord> = c.streams.into_iter().map(|s| s.record).collect();
    assert_eq!(back, records);
}

/// A restored pipeline is the pipeline: fed the same samples afterwards, it reports exactly
/// what the uninterrupted one does (no new warm-up, same window indices, same likelihoods).
#[test]
fn a_restored_stream_continues_where_it_stopped() {
    let mut live = Pipeline::new(&params(), 2);
    let before = feed(&mut live, 0..3_000);
    assert!(
        before.last().unwrap().likelihood.is_some(),
        "past warm-up before the checkpoint"
    );
    let bytes = file_of(
        &[StreamRecord {
            key: "k".into(),
            channels: vec!["a".into(), "b".into()],
            pipeline: live.clone(),
            silent: false,
        }],
        0,
    );
    let mut restored = decode_file(&bytes)
        .unwrap()
        .streams
        .remove(0)
        .record
        .pipeline;
    let after_live = feed(&mut live, 3_000..4_000);
    let after_restored = feed(&mut restored, 3_000..4_000);
    assert_eq!(after_live, after_restored);
    assert_eq!(after_restored[0].index, before.len() as u64);
    assert!(after_restored.iter().all(|r| r.likelihood.is_some()));
}

/// Saving twice keeps both generations; loading takes the newer.
#[test]
fn saves_rotate_one_generation_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = two_generations(dir.path());
    assert!(dir.path().join(CURRENT).exists() && dir.path().join(PREVIOUS).exists());
    assert!(!dir.path().join(TMP).exists());
    let out = store.load();
    assert!(out.rejected.is_empty());
    let loaded = out.loaded.unwrap();
    assert_eq!(loaded.generation, Generation::Current);
    assert_eq!(loaded.checkpoint.meta.created_ms, 2_000);
}

fn assert_falls_back(dir: &Path, check: impl Fn(&CheckpointError) -> bool) {
    let out = Store::open(dir).unwrap().load();
    let loaded = out.loaded.expect("the previous generation is used");
    assert_eq!(loaded.generation, Generation::Previous);
    assert_eq!(loaded.checkpoint.meta.created_ms, 1_000);
    assert_eq!(out.rejected.len(), 1, "{:?}", out.rejected);
    assert!(check(&out.rejected[0].1), "{:?}", out.rejected[0].1);
    assert!(
        dir.join(format!("{CURRENT}{REJECTED_SUFFIX}")).exists(),
        "the bad file is kept aside"
    );
    assert!(
        !dir.join(CURRENT).exists(),
        "so the next save cannot rotate the good generation away"
    );
}

/// A truncated current file is rejected (the header's length says so) and the previous
/// generation is used.
#[test]
fn a_truncated_checkpoint_falls_back_to_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    two_generations(dir.path());
    let path = dir.path().join(CURRENT);
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len / 2).unwrap();
    assert_falls_back(
        dir.path(),
        |e| matches!(e, CheckpointError::Truncated { got, .. } if *got == len / 2),
    );
    // Cut inside the header as well.
    let dir = tempfile::tempdir().unwrap();
    two_generations(dir.path());
    std::fs::write(dir.path().join(CURRENT), b"SWSTATE\n\x01").unwrap();
    assert_falls_back(dir.path(), |e| {
        matches!(e, CheckpointError::Truncated { .. })
    });
}

/// One flipped bit in the payload fails the payload checksum; in the header, the header
/// checksum; a foreign file fails the magic. Each falls back to the previous generation.
#[test]
fn a_flipped_byte_is_caught_by_the_checksums() {
    for (offset_from, expect) in [
        (
            "payload",
            (|e: &CheckpointError| matches!(e, CheckpointError::PayloadChecksum { .. }))
                as fn(&CheckpointError) -> bool,
        ),
        ("header", |e| matches!(e, CheckpointError::HeaderChecksum)),
        ("magic", |e| matches!(e, CheckpointError::BadMagic)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        two_generations(dir.path());
        let path = dir.path().join(CURRENT);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = match offset_from {
            "payload" => bytes.len() * 2 / 3,
            "header" => 17,
            _ => 0,
        };
        bytes[at] ^= 0x04;
        std::fs::write(&path, &bytes).unwrap();
        assert_falls_back(dir.path(), expect);
    }
}

/// A foreign file shorter than a header is "not a checkpoint", not a truncated one
/// (`inspect /etc/hostname`); a short file that begins like one (a crash before the first
/// write finished) is truncated.
#[test]
fn a_short_file_is_truncated_only_if_it_begins_like_a_checkpoint() {
    let foreign: [&[u8]; 3] = [b"edge-1\n", b"a line of someone's notes\n", b"SWSTATE?"];
    let begun: [&[u8]; 4] = [b"", b"SWST", b"SWSTATE\n", b"SWSTATE\n\x01\x00\x00\x00xx"];
    for bytes in foreign {
        let e = sparsewatch::checkpoint::split_file(bytes).unwrap_err();
        assert!(matches!(e, CheckpointError::BadMagic), "{bytes:?}: {e}");
        assert_eq!(e.to_string(), "not a sparsewatch checkpoint (bad magic)");
    }
    for bytes in begun {
        let e = sparsewatch::checkpoint::split_file(bytes).unwrap_err();
        assert!(
            matches!(e, CheckpointError::Truncated { expected: 32, got } if got == bytes.len() as u64),
            "{bytes:?}: {e}"
        );
    }
}

/// A file from a future format version is reported as such, not misread; one of version 1
/// (before empty memory banks were written empty) still loads.
#[test]
fn an_unknown_format_version_is_incompatible() {
    let with_version = |v: u32| {
        let mut bytes = file_of(&[learned("a", 100)], 0);
        bytes[8..12].copy_from_slice(&v.to_le_bytes());
        let crc = crc32(&bytes[..28]);
        bytes[28..32].copy_from_slice(&crc.to_le_bytes());
        bytes
    };
    let err = decode_file(&with_version(3)).unwrap_err();
    assert!(
        matches!(err, CheckpointError::UnsupportedVersion { found: 3 }),
        "{err}"
    );
    assert!(err.to_string().contains("version 3"), "{err}");
    let v1 = decode_file(&with_version(1)).unwrap();
    assert_eq!((v1.format, v1.streams.len()), (1, 1));
    assert_eq!(decode_file(&with_version(2)).unwrap().format, 2);
    assert!(decode_file(&with_version(0)).is_err());
}

/// A record that passes the checksum but that this build cannot decode (a changed state
/// layout) makes the checkpoint incompatible.
#[test]
fn an_undecodable_record_is_incompatible() {
    let meta = Meta {
        created_ms: 0,
        node: "n".into(),
        daemon_version: "future".into(),
        streams: 1,
    };
    let mut record = Vec::new();
    ciborium::into_writer(&("k", ["a"], "not a pipeline"), &mut record).unwrap();
    let err = decode_file(&encode_file(&meta, &[record])).unwrap_err();
    assert!(
        matches!(err, CheckpointError::Incompatible { index: 0, .. }),
        "{err}"
    );
}

/// Adds a relative 2⁻⁴⁰ to every non-zero float under `v`: the value then needs f64 (CBOR
/// writes it as a double) and its nearest f32 is still the original. Returns how many changed.
fn widen_floats(v: &mut ciborium::Value) -> usize {
    match v {
        ciborium::Value::Float(x) if *x != 0.0 => {
            *x += *x * 2f64.powi(-40);
            1
        }
        ciborium::Value::Array(items) => items.iter_mut().map(widen_floats).sum(),
        ciborium::Value::Map(entries) => entries.iter_mut().map(|(_, v)| widen_floats(v)).sum(),
        _ => 0,
    }
}

/// Sets every float under `v` to `x`.
fn set_floats(v: &mut ciborium::Value, x: f64) {
    match v {
        ciborium::Value::Float(f) => *f = x,
        ciborium::Value::Array(items) => items.iter_mut().for_each(|v| set_floats(v, x)),
        ciborium::Value::Map(entries) => entries.iter_mut().for_each(|(_, v)| set_floats(v, x)),
        _ => {}
    }
}

/// The entry `key` of a CBOR map.
fn entry<'a>(v: &'a mut ciborium::Value, key: &str) -> &'a mut ciborium::Value {
    let ciborium::Value::Map(entries) = v else {
        panic!("{key}: not inside a map");
    };
    entries
        .iter_mut()
        .find(|(k, _)| k.as_text() == Some(key))
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no field {key}"))
}

/// Migration: checkpoints written before the dictionary learner stored its matrices as f32
/// and folded windows into its gradient as they came (same format version 1 and record
/// layout, but A, d, D as f64 values and a minibatch buffer `batch`; emulated here from a
/// stream at a minibatch boundary by giving every such value bits an f32 cannot hold and
/// adding the buffer) still load. Each value is rounded to the nearest f32, the record then
/// equals the state it came from, and the stream continues exactly like one that was never
/// checkpointed. (Buffered windows mid-minibatch are folded into d on load: the dsp unit
/// test `a_checkpoint_with_a_minibatch_buffer_is_folded_into_d`.)
#[test]
fn a_checkpoint_with_f64_learner_state_loads_rounded_to_f32() {
    let mut record = learned("old-build", 600);
    let mut t = 600;
    while record.pipeline.dictionary().unwrap().pending() != 0 {
        record
            .pipeline
            .push(Sample::new(t * 1000, &value(t)).unwrap());
        t += 1;
        assert!(t < 2000, "no minibatch boundary");
    }
    let n = record.pipeline.dictionary().expect("a dictionary").n();
    let current = encode_stream(&record.key, &record.channels, &record.pipeline);
    let mut value: ciborium::Value = ciborium::from_reader(current.as_slice()).unwrap();
    let state = entry(entry(entry(&mut value, "pipeline"), "codes"), "dictionary");
    let mut widened: usize = ["a", "d", "dictionary"]
        .iter()
        .map(|m| widen_floats(entry(state, m)))
        .sum();
    assert!(widened > 2 * n * n, "only {widened} values widened");
    // The buffer (n × b, b = n by default) had A's layout; its windows are ignored at a
    // minibatch boundary (none buffered), so any f64 values do.
    let mut batch = entry(state, "a").clone();
    set_floats(&mut batch, 0.1);
    widened += widen_floats(&mut batch);
    let ciborium::Value::Map(fields) = state else {
        unreachable!()
    };
    fields.push((ciborium::Value::Text("batch".into()), batch));
    let mut old = Vec::new();
    ciborium::into_writer(&value, &mut old).unwrap();
    // Each widened value is now a 9-byte double instead of a 5-byte (or shorter) single.
    assert!(old.len() >= current.len() + 4 * widened);

    let meta = Meta {
        created_ms: 1,
        node: "edge-1".into(),
        daemon_version: "0.1.0 (f64 learner state)".into(),
        streams: 1,
    };
    let decoded = decode_file(&encode_file(&meta, &[old])).expect("an f64 checkpoint loads");
    let mut restored = decoded.streams.into_iter().next().unwrap().record;
    assert!(restored == record, "not rounded back to the f32 state");
    let mut uninterrupted = record.pipeline;
    assert_eq!(
        feed(&mut restored.pipeline, t..t + 600),
        feed(&mut uninterrupted, t..t + 600)
    );
}

/// The daemon was killed -9 while writing: half a temporary file is left. It is removed
/// and the last complete checkpoint is loaded.
#[test]
fn an_unfinished_write_is_discarded() {
    let dir = tempfile::tempdir().unwrap();
    two_generations(dir.path());
    let full = file_of(&[learned("a/9", 400)], 3_000);
    std::fs::write(dir.path().join(TMP), &full[..full.len() / 2]).unwrap();
    let out = Store::open(dir.path()).unwrap().load();
    assert!(out.removed_unfinished);
    assert!(out.rejected.is_empty());
    assert_eq!(out.loaded.unwrap().checkpoint.meta.created_ms, 2_000);
    assert!(!dir.path().join(TMP).exists());
}

/// The disk fills up (ENOSPC injected after 1 000 bytes of the write): the save fails with
/// that error, the temporary file is removed, and both generations are untouched.
#[test]
fn a_full_disk_fails_the_write_and_keeps_both_generations() {
    let dir = tempfile::tempdir().unwrap();
    two_generations(dir.path());
    let before = (
        std::fs::read(dir.path().join(CURRENT)).unwrap(),
        std::fs::read(dir.path().join(PREVIOUS)).unwrap(),
    );
    let store = Store::open(dir.path())
        .unwrap()
        .with_fault(Some(Fault::EnospcAfter(1_000)));
    let err = store
        .save(&file_of(&[learned("a/3", 500)], 3_000))
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    assert!(!dir.path().join(TMP).exists());
    let after = (
        std::fs::read(dir.path().join(CURRENT)).unwrap(),
        std::fs::read(dir.path().join(PREVIOUS)).unwrap(),
    );
    assert!(before == after, "a failed save changed the generations");
    assert_eq!(
        store.load().loaded.unwrap().checkpoint.meta.created_ms,
        2_000
    );
}

/// A checkpoint whose streams were discarded is copied aside whole, under its creation time;
/// only three copies are kept (the new one always, then the newest others), a copy decodes
/// to what was discarded, and `inspect` lists the copies after the generations.
#[test]
fn discarded_checkpoints_are_kept_aside_three_at_most() {
    let dir = tempfile::tempdir().unwrap();
    let store = two_generations(dir.path());
    let mut kept = Vec::new();
    for created_ms in [5_000, 3_000, 9_000, 7_000] {
        let path = store
            .keep_discarded(Generation::Current, created_ms)
            .unwrap();
        assert_eq!(
            path.file_name().unwrap().to_str().unwrap(),
            format!("checkpoint.{created_ms}.discarded.swst")
        );
        kept.push(path);
    }
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".discarded.swst") || n.ends_with(".tmp"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "checkpoint.5000.discarded.swst",
            "checkpoint.7000.discarded.swst",
            "checkpoint.9000.discarded.swst"
        ]
    );
    let copy = decode_file(&std::fs::read(&kept[2]).unwrap()).unwrap();
    let current = decode_file(&std::fs::read(dir.path().join(CURRENT)).unwrap()).unwrap();
    assert_eq!(copy.meta.created_ms, current.meta.created_ms);
    assert_eq!(copy.streams.len(), 2);
    // A copy older than every kept one (a clock that went back) is kept all the same; the
    // oldest other goes.
    let older = store.keep_discarded(Generation::Current, 1_000).unwrap();
    assert!(older.exists());
    assert!(!dir.path().join("checkpoint.5000.discarded.swst").exists());
    // A copy a crash left unfinished is removed at the next load; the generations
    // themselves are untouched.
    let leftover = dir.path().join("checkpoint.42.discarded.swst.tmp");
    std::fs::write(&leftover, b"half a copy").unwrap();
    assert!(store.load().loaded.is_some());
    assert!(!leftover.exists());
    // `inspect` on the directory lists the generations, then the copies, newest first.
    let listed: Vec<String> = inspect_path(dir.path())
        .unwrap()
        .iter()
        .map(|i| i.path.file_name().unwrap().to_str().unwrap().to_string())
        .collect();
    assert_eq!(
        listed,
        [
            CURRENT,
            PREVIOUS,
            "checkpoint.9000.discarded.swst",
            "checkpoint.7000.discarded.swst",
            "checkpoint.1000.discarded.swst"
        ]
    );
}

/// Both generations damaged: nothing is restored, both are reported, and nothing panics.
#[test]
fn with_no_good_generation_both_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    two_generations(dir.path());
    for name in [CURRENT, PREVIOUS] {
        std::fs::write(dir.path().join(name), b"garbage").unwrap();
    }
    let out = Store::open(dir.path()).unwrap().load();
    assert!(out.loaded.is_none());
    assert_eq!(out.rejected.len(), 2);
}

/// A stream restored under new alert thresholds keeps what it learned and takes the new
/// thresholds; one learned with another model structure is refused, naming the section.
#[test]
fn restored_streams_are_fitted_to_the_configured_model() {
    let r = learned("k", 2_000);
    let windows = r.pipeline.counters().windows;
    let mut p = PipelineParams::default();
    p.alert.threshold = 0.999;
    let fitted = checkpoint::reconcile(r.clone(), &p.check().unwrap()).unwrap();
    assert_eq!(fitted.pipeline.params().alert.threshold, 0.999);
    assert_eq!(fitted.pipeline.counters().windows, windows);

    let mut p = PipelineParams::default();
    p.framer.hop = 8; // the default is 4
    let err = checkpoint::reconcile(r, &p.check().unwrap()).unwrap_err();
    assert!(err.contains("pipeline.framer"), "{err}");
}

/// A stream learned with the `baseline` detector (the default before the memory became it,
/// with that release's `[pipeline.gated]`) restored under today's defaults switches to the
/// gated detector keeping everything its baseline learned: it scores the next windows
/// exactly as the baseline would (its memories start empty, so the gate passes every
/// score). From another detector, or with another change, it is still refused.
#[test]
fn a_stream_learned_with_the_baseline_detector_moves_to_the_gated_default() {
    let mut old = PipelineParams {
        detector: DetectorKind::Baseline,
        ..PipelineParams::default()
    };
    old.gated.sdr.index_capacity = 256;
    let old = old.check().unwrap();
    let mut baseline = Pipeline::new(&old, 2);
    feed(&mut baseline, 0..2_000);
    let record = record("k", baseline.clone());
    let mut moved = checkpoint::reconcile(record.clone(), &params())
        .unwrap()
        .pipeline;
    assert_eq!(moved.params(), params().get());
    assert_eq!(moved.counters().windows, baseline.counters().windows);
    assert!(moved.gate_reading().is_some());
    let (a, b) = (
        feed(&mut baseline, 2_000..2_400),
        feed(&mut moved, 2_000..2_400),
    );
    assert!(!a.is_empty());
    let scores = |r: &[WindowReport]| {
        r.iter()
            .map(|w| (w.score, w.likelihood, w.step))
            .collect::<Vec<_>>()
    };
    assert_eq!(scores(&a), scores(&b));

    let mut memory = params().get().clone();
    memory.detector = DetectorKind::Memory;
    let err = checkpoint::reconcile(record.clone(), &memory.check().unwrap()).unwrap_err();
    assert!(err.contains("pipeline.detector"), "{err}");
    let mut hop = params().get().clone();
    hop.framer.hop = 8;
    let err = checkpoint::reconcile(record.clone(), &hop.check().unwrap()).unwrap_err();
    assert!(err.contains("pipeline.framer"), "{err}");

    // Kept on `baseline` by the configuration: the old [pipeline.gated] (index 256), which
    // the baseline does not read, is no reason to discard it.
    let mut still_baseline = params().get().clone();
    still_baseline.detector = DetectorKind::Baseline;
    let windows = record.pipeline.counters().windows;
    let fitted = checkpoint::reconcile(record, &still_baseline.clone().check().unwrap()).unwrap();
    assert_eq!(fitted.pipeline.params(), &still_baseline);
    assert_eq!(fitted.pipeline.counters().windows, windows);
}

/// A stream that already ran the gated detector with the older index size (256) keeps
/// everything under the new default (64): the index starts again, every score is as before.
/// Any other change of the gate's parameters is refused.
#[test]
fn a_gated_stream_takes_a_new_index_size_and_nothing_else() {
    let mut old = params().get().clone();
    old.gated.sdr.index_capacity = 256;
    let mut before = Pipeline::new(&old.check().unwrap(), 2);
    // A jump on one channel, so the memories store rare states and the index holds codes.
    let jump = |p: &mut Pipeline, range: std::ops::Range<i64>| -> Vec<WindowReport> {
        range
            .filter_map(|t| {
                let mut v = value(t);
                if t % 400 >= 380 {
                    v[0] += 40.0;
                }
                p.push(Sample::new(t * 1000, &v).unwrap()).report
            })
            .collect()
    };
    jump(&mut before, 0..2_400);
    let m = before.memory().unwrap();
    assert!(
        m.learned() > 0 && m.stored_codes() > 0,
        "the gate stored the jumps"
    );
    let record = record("k", before.clone());
    let mut after = checkpoint::reconcile(record.clone(), &params())
        .unwrap()
        .pipeline;
    assert_eq!(after.params(), params().get());
    let m = after.memory().unwrap();
    assert_eq!((m.params().index_capacity, m.stored_codes()), (64, 0));
    assert_eq!(
        m.learned(),
        before.memory().unwrap().learned(),
        "the weights are kept"
    );
    let scores = |r: &[WindowReport]| r.iter().map(|w| (w.score, w.step)).collect::<Vec<_>>();
    assert_eq!(
        scores(&jump(&mut before, 2_400..3_600)),
        scores(&jump(&mut after, 2_400..3_600))
    );
    let mut other = params().get().clone();
    other.gated.store_above = 0.7;
    let err = checkpoint::reconcile(record, &other.check().unwrap()).unwrap_err();
    assert!(err.contains("pipeline.gated"), "{err}");
}

/// A checkpoint whose baseline history was written as f64 (before it was stored as f32)
/// still loads from CBOR, each value rounded to the nearest f32, and scores as the stream
/// that wrote it to that precision.
#[test]
fn a_baseline_history_written_as_f64_loads_rounded() {
    let mut p = Pipeline::new(&params(), 2);
    feed(&mut p, 0..1_500);
    let mut v = serde_json::to_value(&p).unwrap();
    let ring = v["scorer"]["Gated"]["baseline"]["ring"]
        .as_array_mut()
        .expect("the gated scorer's baseline ring");
    assert!(ring.len() >= 256 * 2 * 4);
    // Values an f32 cannot hold exactly, as an f64 history had them: each a few f32 ulps
    // off, so they round to other f32s than the stream that wrote them holds.
    for x in ring.iter_mut() {
        *x = serde_json::json!(x.as_f64().unwrap() * (1.0 + 3e-7));
    }
    let mut cbor = Vec::new();
    ciborium::into_writer(&v, &mut cbor).unwrap();
    let mut old: Pipeline = ciborium::from_reader(&cbor[..]).unwrap();
    assert_eq!(old.params(), p.params());
    let (a, b) = (feed(&mut p, 1_500..1_800), feed(&mut old, 1_500..1_800));
    assert_eq!(a.len(), b.len());
    assert_ne!(old, p, "the rounded history differs from the original");
    for (x, y) in a.iter().zip(&b) {
        assert!((x.score - y.score).abs() < 1e-3, "{x:?} {y:?}");
        assert_eq!(x.step, y.step);
    }
}

fn context(max_streams: usize) -> WorkerContext {
    let (events, _) = tokio::sync::mpsc::channel(16);
    WorkerContext {
        node: "n".into(),
        pipeline: params(),
        max_streams,
        metrics: Arc::new(Metrics::default()),
        events,
        codes: None,
        stream_count: Arc::new(AtomicUsize::new(0)),
        acker: None,
        no_data_after: None,
    }
}

/// Streams are restored by key into however many workers run now (the key → worker hash
/// is not part of the checkpoint), continue learning there, and come back in a snapshot and
/// in the final state handed back at stop.
#[test]
fn workers_take_restored_streams_by_key_and_hand_them_back() {
    let keys: Vec<String> = (0..7).map(|i| format!("site/s{i}")).collect();
    let records: Vec<StreamRecord> = keys.iter().map(|k| learned(k, 500)).collect();
    let ctx = context(100);
    let metrics = ctx.metrics.clone();
    let workers = Workers::spawn_restored(3, 64, ctx, records).unwrap();
    assert_eq!(metrics.snapshot().streams, 7);
    let snapshot = workers
        .controls()
        .snapshot(Duration::from_secs(10))
        .unwrap();
    assert_eq!(snapshot.len(), 7);
    for t in 500..540 {
        let v = value(t);
        workers
            .try_dispatch(Dispatch::plain(Reading {
                key: "site/s3".into(),
                ts_ms: t * 1000,
                channels: vec![("a".into(), v[0]), ("b".into(), v[1])],
            }))
            .expect("room in the queue");
    }
    let last = workers.join();
    let meta = Meta {
        created_ms: 0,
        node: "n".into(),
        daemon_version: "t".into(),
        streams: last.len() as u64,
    };
    let c = decode_file(&encode_file(&meta, &last)).unwrap();
    let mut got: Vec<(String, u64)> = c
        .streams
        .iter()
        .map(|s| (s.record.key.clone(), s.record.pipeline.counters().samples))
        .collect();
    got.sort();
    let want: Vec<(String, u64)> = keys
        .iter()
        .map(|k| (k.clone(), if k == "site/s3" { 540 } else { 500 }))
        .collect();
    assert_eq!(got, want);
}

/// More restored streams than `workers.max_streams` allows: the extra ones are refused and
/// counted, not silently kept.
#[test]
fn restored_streams_respect_max_streams() {
    let records: Vec<StreamRecord> = (0..3).map(|i| learned(&format!("k{i}"), 50)).collect();
    let ctx = context(2);
    let metrics = ctx.metrics.clone();
    let workers = Workers::spawn_restored(1, 8, ctx, records).unwrap();
    assert_eq!(workers.join().len(), 2);
    let s = metrics.snapshot();
    assert_eq!((s.streams, s.refused_streams), (2, 1));
}

/// `inspect` names every stream with its size, counts, state and dictionary statistics, and
/// marks a damaged file as unusable with the reason.
#[test]
fn inspect_shows_streams_and_damage() {
    let dir = tempfile::tempdir().unwrap();
    two_generations(dir.path());
    let reports = inspect_path(dir.path()).unwrap();
    assert_eq!(reports.len(), 2, "both generations");
    let text = reports[0].render();
    assert!(text.contains("ok, format 2"), "{text}");
    assert!(text.contains("2 streams"), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("a/1 "))
        .expect("a/1 listed");
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols[1], "a,b", "{line}");
    assert_eq!(cols[3], "600", "samples: {line}");
    assert_eq!(cols[4], "143", "windows: (600 − 32) / 4 + 1 = 143: {line}");
    assert_eq!(cols[8], "64", "dictionary n = 32 × 2: {line}");
    // Every row, header included, has its columns at the same places (the channel list "a,b"
    // and a long key used to push the rest of their row out of line).
    let rows: Vec<&str> = text.lines().skip(1).collect();
    let ends = |l: &str| -> Vec<usize> {
        l.char_indices()
            .filter(|&(i, ch)| ch != ' ' && l[i + ch.len_utf8()..].starts_with(' '))
            .map(|(i, _)| i)
            .collect()
    };
    for row in &rows[1..] {
        assert_eq!(ends(row).len(), ends(rows[0]).len(), "{text}");
        assert_eq!(
            ends(row)[1..],
            ends(rows[0])[1..],
            "columns out of line:\n{text}"
        );
    }

    let mut bytes = std::fs::read(dir.path().join(CURRENT)).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(dir.path().join(CURRENT), &bytes).unwrap();
    let reports = inspect_path(&dir.path().join(CURRENT)).unwrap();
    let text = reports[0].render();
    assert!(
        text.contains("UNUSABLE") && text.contains("checksum"),
        "{text}"
    );
}

/// The CRC-32 (IEEE) the format uses, bit by bit: an oracle for the header test above.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A reload reaches every stream: new alert thresholds (and code output settings) are
/// applied in place, and everything the stream learned stays as it was.
#[test]
fn a_reload_changes_thresholds_and_keeps_learned_state() {
    let record = learned("site/s1", 2_000);
    let before = record.pipeline.clone();
    let workers = Workers::spawn_restored(2, 8, context(10), vec![record]).unwrap();
    let mut alert = params().get().alert.clone();
    alert.threshold = 0.995;
    alert.release_windows = 3;
    workers
        .controls()
        .reload(&sparsewatch::worker::LiveWorkerSettings {
            alert: alert.clone(),
            codes_every: None,
        })
        .unwrap();
    let records = workers
        .controls()
        .snapshot(Duration::from_secs(10))
        .unwrap();
    workers.join();
    let meta = Meta {
        created_ms: 0,
        node: "n".into(),
        daemon_version: "t".into(),
        streams: 1,
    };
    let after = decode_file(&encode_file(&meta, &records))
        .unwrap()
        .streams
        .remove(0)
        .record
        .pipeline;
    assert_eq!(after.params().alert, alert);
    assert_eq!(after.counters(), before.counters());
    assert_eq!(after.dictionary(), before.dictionary());
    assert_eq!(after.alert_state(), before.alert_state());
}

/// Feeds `range` with a step of +40 on channel 1 from `fault_at`; the detections.
fn feed_fault(
    p: &mut Pipeline,
    range: std::ops::Range<i64>,
    fault_at: i64,
) -> Vec<sparsewatch_dsp::Detection> {
    range
        .filter_map(|t| {
            let mut v = value(t);
            if t >= fault_at {
                v[1] += 40.0;
            }
            p.push(Sample::new(t * 1000, &v).unwrap()).report
        })
        .filter_map(|r| r.detection)
        .collect()
}

/// Why subscribers deduplicate anomaly events on node, key and the window's bounds, not on
/// `seq` (ARCHITECTURE.md, "Outbound while the broker is down"): after an unclean stop the
/// stream comes back from its last checkpoint, with the detection counter of then, and the
/// samples acknowledged since are gone; the next incident gets the `seq` of one published
/// before the stop, but not its window.
#[test]
fn after_an_unclean_stop_a_new_incident_may_reuse_a_seq_but_not_a_window() {
    let mut live = Pipeline::new(&params(), 2);
    feed(&mut live, 0..6_000);
    let checkpoint = live.clone();
    let before_crash = feed_fault(&mut live, 6_000..7_000, 6_500);
    assert_eq!(before_crash.len(), 1, "{before_crash:?}");
    let mut restored = checkpoint;
    let after_restart = feed_fault(&mut restored, 8_000..9_000, 8_500);
    assert_eq!(after_restart.len(), 1, "{after_restart:?}");
    let (a, b) = (before_crash[0], after_restart[0]);
    assert_eq!(a.seq, b.seq, "the restored counter repeats the seq");
    assert_ne!((a.start_ms, a.end_ms), (b.start_ms, b.end_ms));
}
