//! Errors as JavaScript sees them: an `Error` whose `code` property is one of the constants
//! below, so callers branch on a stable string rather than on message text.

use tandem_engine::presence::PresenceError;
use tandem_engine::{DecodeError, DocumentError};
use wasm_bindgen::JsValue;

/// Bytes from the network or storage could not be decoded.
pub const DECODE: &str = "decode";
/// A field or register name is empty, too long or reserved (`tandem:`).
pub const INVALID_NAME: &str = "invalid_name";
/// A text offset or range lies outside the field.
pub const OUT_OF_RANGE: &str = "out_of_range";
/// The update could not be integrated.
pub const APPLY: &str = "apply";
/// A transaction is already open (re-entrant call from an observer).
pub const BUSY: &str = "busy";
/// A value could not be converted to or from JSON.
pub const INVALID_VALUE: &str = "invalid_value";
/// A presence operation needs a local user first (`setUser`).
pub const NO_USER: &str = "no_user";

/// An error to throw into JavaScript.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingError {
    /// One of the constants of this module.
    pub code: &'static str,
    /// Human-readable detail.
    pub message: String,
}

impl BindingError {
    /// An error with `code` and `message`.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        BindingError {
            code,
            message: message.into(),
        }
    }
}

impl From<DocumentError> for BindingError {
    fn from(e: DocumentError) -> Self {
        let code = match &e {
            DocumentError::Decode(_) => DECODE,
            DocumentError::Apply(_) | DocumentError::OwnClientId(_) => APPLY,
            DocumentError::InvalidFieldName(_) => INVALID_NAME,
            DocumentError::OutOfRange { .. } => OUT_OF_RANGE,
            DocumentError::Busy => BUSY,
        };
        BindingError::new(code, e.to_string())
    }
}

impl From<DecodeError> for BindingError {
    fn from(e: DecodeError) -> Self {
        BindingError::new(DECODE, e.to_string())
    }
}

impl From<PresenceError> for BindingError {
    fn from(e: PresenceError) -> Self {
        let code = match &e {
            PresenceError::NoLocalState => NO_USER,
            PresenceError::OffsetOutOfRange { .. } => OUT_OF_RANGE,
            PresenceError::DocumentBusy => BUSY,
            PresenceError::InvalidStateJson { .. } => DECODE,
            PresenceError::NotUtf16 | PresenceError::Awareness(_) => APPLY,
        };
        BindingError::new(code, e.to_string())
    }
}

impl From<BindingError> for JsValue {
    fn from(e: BindingError) -> Self {
        let error = js_sys::Error::new(&e.message);
        // Setting a property on a fresh Error object cannot fail.
        let _ = js_sys::Reflect::set(&error, &"code".into(), &e.code.into());
        error.into()
    }
}
