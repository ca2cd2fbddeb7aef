//! How the document layer answers what the engine refuses: the close a protocol error gets,
//! and the limit it counts as breached.

use tandem_engine::ProtocolError;

use crate::base::close::Close;
use crate::base::limit::LimitKind;
use crate::infra::metrics::Metrics;

/// The limit a protocol error from the engine reports a breach of, if any.
pub fn limit_of(err: &ProtocolError) -> Option<LimitKind> {
    match err {
        ProtocolError::FrameTooLarge { .. } => Some(LimitKind::FrameSize),
        ProtocolError::DocumentTooLarge(_) => Some(LimitKind::DocumentSize),
        ProtocolError::TooManyPending(_) => Some(LimitKind::PendingUpdates),
        _ => None,
    }
}

/// How to close a connection whose frame the engine refused with `err`: the engine's close
/// code; a breach of a limit is also counted in `metrics`.
pub fn protocol_error_close(err: &ProtocolError, metrics: &Metrics) -> Close {
    if let Some(kind) = limit_of(err) {
        metrics.limit_breached(kind);
    }
    Close::new(err.close_code(), err.close_reason())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_map_to_their_limits() {
        let metrics = Metrics::new();
        let close = protocol_error_close(&ProtocolError::DocumentTooLarge(64), &metrics);
        assert_eq!(Some(close.code), LimitKind::DocumentSize.close_code());
        assert!(close.reason.contains("64"), "{close:?}");
        let close = protocol_error_close(
            &ProtocolError::FrameTooLarge {
                size: 9000,
                limit: 8192,
            },
            &metrics,
        );
        assert_eq!(Some(close.code), LimitKind::FrameSize.close_code());
        assert_eq!(metrics.limit_breaches.get(LimitKind::DocumentSize).get(), 1);
        assert_eq!(metrics.limit_breaches.get(LimitKind::FrameSize).get(), 1);
        // Errors that are not limits keep the engine's code and count nothing.
        let close = protocol_error_close(&ProtocolError::UnknownMessage(42), &metrics);
        assert_eq!(close.code, 4400);
        let total: u64 = LimitKind::ALL
            .iter()
            .map(|k| metrics.limit_breaches.get(*k).get())
            .sum();
        assert_eq!(total, 2);
    }
}
