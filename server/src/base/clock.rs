//! Wall-clock readings. Code that decides anything from time takes it as a parameter; these are
//! read once at the edge of an operation and passed down.

use std::time::{SystemTime, UNIX_EPOCH};

/// The current time as unix seconds (token times are whole seconds).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The current time as unix milliseconds (what the engine and the store take).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
