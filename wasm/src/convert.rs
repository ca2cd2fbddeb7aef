//! Conversions between JSON values and JavaScript values.
//!
//! Values cross the boundary as JSON text parsed on the other side (`JSON.parse` /
//! `JSON.stringify`), which keeps the module small: no serde-to-JS layer is compiled in.

use crate::error::{BindingError, INVALID_VALUE};
use serde_json::{json, Value};
use tandem_engine::{DeltaOp, FieldValue};
use wasm_bindgen::JsValue;

/// A JSON value as a JavaScript value.
pub fn to_js(value: &Value) -> JsValue {
    // serde_json always writes valid JSON, so the parse only fails on exhausted memory.
    js_sys::JSON::parse(&value.to_string()).unwrap_or(JsValue::UNDEFINED)
}

/// A JavaScript value as JSON (`undefined` becomes `null`). Fails for values JSON cannot hold
/// (functions, symbols, cycles, BigInt).
pub fn from_js(value: &JsValue) -> Result<Value, BindingError> {
    if value.is_undefined() {
        return Ok(Value::Null);
    }
    let text = js_sys::JSON::stringify(value)
        .map_err(|_| BindingError::new(INVALID_VALUE, "value cannot be written as JSON"))?;
    let text: String = text.into();
    serde_json::from_str(&text).map_err(|e| BindingError::new(INVALID_VALUE, e.to_string()))
}

/// A register state as `{value, version, author, at}`.
pub fn field_json(field: &FieldValue) -> Value {
    json!({
        "value": field.value,
        "version": field.version,
        "author": field.author,
        "at": field.at,
    })
}

/// A text delta as Quill-style JSON: `[{"retain": 3}, {"insert": "x"}, {"delete": 1}]`.
pub fn delta_json(delta: &[DeltaOp]) -> Value {
    Value::Array(
        delta
            .iter()
            .map(|op| match op {
                DeltaOp::Retain(n) => json!({ "retain": n }),
                DeltaOp::Insert(s) => json!({ "insert": s }),
                DeltaOp::Delete(n) => json!({ "delete": n }),
            })
            .collect(),
    )
}

/// A client id given by JavaScript (a number) as a Yjs client id: an integer below 2^53.
pub fn client_id(id: f64) -> Result<u64, BindingError> {
    if id.is_finite() && id >= 0.0 && id.fract() == 0.0 && id <= 9_007_199_254_740_991.0 {
        Ok(id as u64)
    } else {
        Err(BindingError::new(
            INVALID_VALUE,
            "a client id is an integer from 0 to 2^53 - 1",
        ))
    }
}

/// A time given by JavaScript (`Date.now()`) as milliseconds; negative or NaN becomes 0.
pub fn millis(ms: f64) -> u64 {
    if ms.is_finite() && ms > 0.0 {
        ms as u64
    } else {
        0
    }
}
