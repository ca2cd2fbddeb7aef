//! Conversions between JSON values and JavaScript values.
//!
//! What the bindings return is built as JavaScript objects and arrays directly, property by
//! property, so the module carries no JSON writer for them. Values from JavaScript cross as
//! JSON text (`JSON.stringify`, then the engine's JSON parser, which it has anyway).

use crate::error::{BindingError, INVALID_VALUE};
use js_sys::{Array, Object, Reflect};
use serde_json::Value;
use tandem_engine::{DeltaOp, FieldValue};
use wasm_bindgen::JsValue;

/// A plain JavaScript object with the properties `props`, in their order.
pub fn object(props: &[(&str, JsValue)]) -> JsValue {
    let o = Object::new();
    for (k, v) in props {
        set(&o, k, v);
    }
    o.into()
}

/// Sets an own data property of a fresh plain object, as `JSON.parse` would (`__proto__`
/// included, which a plain assignment would take as the prototype).
pub fn set(o: &Object, key: &str, value: &JsValue) {
    let key = JsValue::from_str(key);
    // Defining properties on a fresh plain object cannot fail.
    if key == "__proto__" {
        let descriptor = object(&[
            ("value", value.clone()),
            ("writable", JsValue::TRUE),
            ("enumerable", JsValue::TRUE),
            ("configurable", JsValue::TRUE),
        ]);
        let _ = Reflect::define_property(o, &key, &descriptor.into());
    } else {
        let _ = Reflect::set(o, &key, value);
    }
}

/// A JSON value as a JavaScript value (what `JSON.parse` of its text gives).
pub fn to_js(value: &Value) -> JsValue {
    match value {
        Value::Null => JsValue::NULL,
        Value::Bool(b) => JsValue::from_bool(*b),
        // Without serde_json's arbitrary precision every number has an f64 value.
        Value::Number(n) => JsValue::from_f64(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => JsValue::from_str(s),
        Value::Array(items) => items.iter().map(to_js).collect::<Array>().into(),
        Value::Object(map) => {
            let o = Object::new();
            for (k, v) in map {
                set(&o, k, &to_js(v));
            }
            o.into()
        }
    }
}

/// An optional string as a JavaScript string or `null`.
pub fn string_or_null(s: Option<&str>) -> JsValue {
    s.map_or(JsValue::NULL, JsValue::from_str)
}

/// An array of numbers.
pub fn numbers(values: impl IntoIterator<Item = f64>) -> JsValue {
    values
        .into_iter()
        .map(JsValue::from_f64)
        .collect::<Array>()
        .into()
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

/// A register state as `{at, author, value, version}`. The objects these bindings return have
/// their keys sorted, as the engine's JSON objects do.
pub fn field_js(field: &FieldValue) -> JsValue {
    object(&[
        ("at", JsValue::from_f64(field.at as f64)),
        ("author", string_or_null(field.author.as_deref())),
        ("value", to_js(&field.value)),
        ("version", JsValue::from_str(&field.version)),
    ])
}

/// A text delta as a Quill-style array: `[{retain: 3}, {insert: "x"}, {delete: 1}]`.
pub fn delta_js(delta: &[DeltaOp]) -> JsValue {
    delta
        .iter()
        .map(|op| match op {
            DeltaOp::Retain(n) => object(&[("retain", JsValue::from_f64(f64::from(*n)))]),
            DeltaOp::Insert(s) => object(&[("insert", JsValue::from_str(s))]),
            DeltaOp::Delete(n) => object(&[("delete", JsValue::from_f64(f64::from(*n)))]),
        })
        .collect::<Array>()
        .into()
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
