//! Conversions to protobuf timestamps.

use std::time::SystemTime;

/// A protobuf timestamp for `t`.
pub fn from_system_time(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

/// A protobuf timestamp for Unix milliseconds.
pub fn from_unix_ms(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}
