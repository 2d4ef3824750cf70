//! The wire: how topics map to sensor keys and how payloads become readings.
//!
//! Nothing here touches the network; the MQTT task calls [`TopicTemplate::key`] and
//! [`decode_payload`] on every incoming PUBLISH, and the worker receives the [`Reading`].

pub mod events;
mod payload;
mod topic;

pub use events::{
    AnomalyMessage, CodeMessage, NoDataMessage, OutboundEvent, StatusMessage, SCHEMA_VERSION,
};
pub use payload::{
    decode_payload, decode_payload_stamped, looks_like_seconds, PayloadError, PayloadErrorKind,
    PayloadLimits, Reading, TsSource, MAX_ABS_VALUE,
};
pub use topic::{TopicTemplate, MAX_KEY_BYTES};
