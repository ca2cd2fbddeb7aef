//! How documents look in JSON, the same in every route and event: a register is `{value,
//! version, author, at}`, a snapshot `{doc, sid, texts, fields}`.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use tandem_engine::FieldValue;

use crate::infra::store::Sid;

/// `{value, version, author, at}` as every API shows a register.
pub fn field_json(f: &FieldValue) -> Value {
    json!({"value": f.value, "version": f.version, "author": f.author, "at": f.at})
}

/// The snapshot body: `{doc, sid, texts, fields}`.
pub fn snapshot_json(
    doc: &str,
    sid: Sid,
    texts: &BTreeMap<String, String>,
    fields: &BTreeMap<String, FieldValue>,
) -> Value {
    let fields: serde_json::Map<String, Value> = fields
        .iter()
        .map(|(k, v)| (k.clone(), field_json(v)))
        .collect();
    json!({"doc": doc, "sid": sid, "texts": texts, "fields": fields})
}
