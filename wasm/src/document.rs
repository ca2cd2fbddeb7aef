//! `Document`: a replica of one tandem document (text fields, registers, per-user undo).
//!
//! Every mutating method returns the Yjs update it produced (a `Uint8Array`), for the provider
//! to send, queue offline and share with other tabs. Changes, local or remote, are collected
//! with their authors and drained with `takeChanges()`.

use crate::convert::{self, delta_js, field_js, object, string_or_null};
use crate::error::BindingError;
use js_sys::{Array, Object};
use serde_json::Value;
use tandem_engine::{Change, Document};
use wasm_bindgen::prelude::*;

/// One replica of a document.
#[wasm_bindgen(js_name = Document)]
pub struct WasmDocument {
    inner: Document,
    /// Changes drained from the engine whose authors were filled in, waiting for `takeChanges`.
    changes: Vec<Change>,
}

impl std::fmt::Debug for WasmDocument {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl WasmDocument {
    /// The engine document (for the presence binding).
    pub fn engine(&self) -> &Document {
        &self.inner
    }

    /// Moves the engine's recorded changes into the local buffer, giving the ones without an
    /// author `author`.
    fn drain(&mut self, author: Option<&str>) {
        for mut change in self.inner.take_changes() {
            let slot = match &mut change {
                Change::Text { author, .. } | Change::Field { author, .. } => author,
            };
            if slot.is_none() {
                *slot = author.map(str::to_owned);
            }
            self.changes.push(change);
        }
    }
}

#[wasm_bindgen(js_class = Document)]
impl WasmDocument {
    /// An empty replica whose edits carry Yjs client id `clientId` (an integer below 2^53).
    #[wasm_bindgen(constructor)]
    pub fn new(client_id: f64) -> WasmDocument {
        // Out-of-range ids are masked to 53 bits by the engine, as Yjs does with its ids.
        let id = convert::client_id(client_id).unwrap_or(client_id.abs() as u64);
        let mut inner = Document::new(id);
        inner.set_change_feed(true);
        WasmDocument {
            inner,
            changes: Vec::new(),
        }
    }

    /// This replica's Yjs client id.
    #[wasm_bindgen(getter, js_name = clientId)]
    pub fn client_id(&self) -> f64 {
        self.inner.client_id() as f64
    }

    /// Sets the current time (`Date.now()`), used for undo grouping and register clocks.
    #[wasm_bindgen(js_name = setTime)]
    pub fn set_time(&self, now_ms: f64) {
        self.inner.set_time(convert::millis(now_ms));
    }

    /// The text of `field` (`undefined` when it does not exist).
    pub fn text(&self, field: &str) -> Option<String> {
        self.inner.text(field)
    }

    /// Length of `field` in UTF-16 code units.
    #[wasm_bindgen(js_name = textLength)]
    pub fn text_length(&self, field: &str) -> u32 {
        self.inner.text_len(field)
    }

    /// Names of the text fields this replica knows, sorted.
    #[wasm_bindgen(js_name = fieldNames)]
    pub fn field_names(&self) -> Vec<String> {
        self.inner.field_names()
    }

    /// Inserts `text` at UTF-16 offset `index` of `field`, as `user`.
    pub fn insert(
        &mut self,
        user: &str,
        field: &str,
        index: u32,
        text: &str,
    ) -> Result<Vec<u8>, BindingError> {
        let update = self.inner.insert(user, field, index, text)?;
        self.drain(Some(user));
        Ok(update)
    }

    /// Deletes `length` UTF-16 units at `index` of `field`, as `user`.
    pub fn delete(
        &mut self,
        user: &str,
        field: &str,
        index: u32,
        length: u32,
    ) -> Result<Vec<u8>, BindingError> {
        let update = self.inner.delete(user, field, index, length)?;
        self.drain(Some(user));
        Ok(update)
    }

    /// Replaces `deleteCount` units at `index` of `field` with `insert`, as one edit.
    pub fn edit(
        &mut self,
        user: &str,
        field: &str,
        index: u32,
        delete_count: u32,
        insert: &str,
    ) -> Result<Vec<u8>, BindingError> {
        let update = self.inner.edit(user, field, index, delete_count, insert)?;
        self.drain(Some(user));
        Ok(update)
    }

    /// The state of register `name` as `{value, version, author, at}`, or `undefined`.
    pub fn field(&self, name: &str) -> JsValue {
        match self.inner.field(name) {
            Some(f) => field_js(&f),
            None => JsValue::UNDEFINED,
        }
    }

    /// Every register that has a value, by name.
    pub fn fields(&self) -> JsValue {
        let o = Object::new();
        for (name, field) in self.inner.fields() {
            convert::set(&o, &name, &field_js(&field));
        }
        o.into()
    }

    /// Writes register `name` as `user` (last write wins). Any JSON value is allowed.
    #[wasm_bindgen(js_name = setField)]
    pub fn set_field(
        &mut self,
        user: &str,
        name: &str,
        value: JsValue,
    ) -> Result<Vec<u8>, BindingError> {
        let value = convert::from_js(&value)?;
        self.set_field_json(user, name, Some(value))
    }

    /// Deletes register `name` as `user`.
    #[wasm_bindgen(js_name = deleteField)]
    pub fn delete_field(&mut self, user: &str, name: &str) -> Result<Vec<u8>, BindingError> {
        self.set_field_json(user, name, None)
    }

    /// Undoes `user`'s last step (never another user's). Returns the update, or `undefined`
    /// when there was nothing to undo.
    pub fn undo(&mut self, user: &str) -> Option<Vec<u8>> {
        let update = self.inner.undo(user);
        self.drain(Some(user));
        update
    }

    /// Redoes `user`'s last undone step.
    pub fn redo(&mut self, user: &str) -> Option<Vec<u8>> {
        let update = self.inner.redo(user);
        self.drain(Some(user));
        update
    }

    /// Whether `user` has a step to undo.
    #[wasm_bindgen(js_name = canUndo)]
    pub fn can_undo(&self, user: &str) -> bool {
        self.inner.can_undo(user)
    }

    /// Whether `user` has a step to redo.
    #[wasm_bindgen(js_name = canRedo)]
    pub fn can_redo(&self, user: &str) -> bool {
        self.inner.can_redo(user)
    }

    /// Ends `user`'s current undo step: the next edit starts a new one.
    #[wasm_bindgen(js_name = stopCapturing)]
    pub fn stop_capturing(&mut self, user: &str) {
        self.inner.stop_capturing(user);
    }

    /// Applies an update from elsewhere (server, another tab, storage). `author` is reported
    /// with the changes it causes; it never enters anyone's undo history. Returns whether the
    /// update held anything new.
    #[wasm_bindgen(js_name = applyUpdate)]
    pub fn apply_update(
        &mut self,
        update: &[u8],
        author: Option<String>,
    ) -> Result<bool, BindingError> {
        self.drain(None);
        let applied = self.inner.apply_update(update, None)?;
        self.drain(author.as_deref());
        Ok(applied.changed)
    }

    /// This replica's state vector (sync step 1 payload).
    #[wasm_bindgen(js_name = stateVector)]
    pub fn state_vector(&self) -> Vec<u8> {
        self.inner.state_vector()
    }

    /// The update a peer with state vector `stateVector` is missing (sync step 2 payload).
    pub fn diff(&self, state_vector: &[u8]) -> Result<Vec<u8>, BindingError> {
        Ok(self.inner.diff(state_vector)?)
    }

    /// The whole document as one update.
    #[wasm_bindgen(js_name = encodeState)]
    pub fn encode_state(&self) -> Vec<u8> {
        self.inner.encode_state()
    }

    /// Size, in bytes, of updates waiting for missing dependencies.
    #[wasm_bindgen(getter, js_name = pendingLength)]
    pub fn pending_length(&self) -> usize {
        self.inner.pending_len()
    }

    /// Drains the changes since the last call, oldest first:
    /// `{kind: "text", field, delta, author}` or `{kind: "field", name, value, author}` where
    /// `value` is `{value, version, author, at}` or `null` after a delete.
    #[wasm_bindgen(js_name = takeChanges)]
    pub fn take_changes(&mut self) -> JsValue {
        self.drain(None);
        std::mem::take(&mut self.changes)
            .iter()
            .map(change_js)
            .collect::<Array>()
            .into()
    }
}

impl WasmDocument {
    /// Writes or deletes a register from a JSON value.
    pub fn set_field_json(
        &mut self,
        user: &str,
        name: &str,
        value: Option<Value>,
    ) -> Result<Vec<u8>, BindingError> {
        let (_, update) = self.inner.set_field(user, name, value)?;
        self.drain(Some(user));
        Ok(update)
    }

    /// The buffered changes, drained (for native callers and tests).
    pub fn take_changes_native(&mut self) -> Vec<Change> {
        self.drain(None);
        std::mem::take(&mut self.changes)
    }
}

/// A change as the object `takeChanges` returns.
pub fn change_js(change: &Change) -> JsValue {
    match change {
        Change::Text {
            field,
            delta,
            author,
            ..
        } => object(&[
            ("author", string_or_null(author.as_deref())),
            ("delta", delta_js(delta)),
            ("field", field.into()),
            ("kind", "text".into()),
        ]),
        Change::Field {
            name,
            value,
            author,
        } => object(&[
            ("author", string_or_null(author.as_deref())),
            ("kind", "field".into()),
            ("name", name.into()),
            ("value", value.as_ref().map_or(JsValue::NULL, field_js)),
        ]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_engine::DeltaOp;

    #[test]
    fn remote_author_is_reported_but_never_undone_locally() {
        let mut a = WasmDocument::new(1.0);
        let mut b = WasmDocument::new(2.0);
        let u = a.insert("alice", "description", 0, "Hi").unwrap();
        // Same user in another tab: the change shows alice as author, but this tab's undo
        // history of alice stays empty.
        assert!(b.apply_update(&u, Some("alice".into())).unwrap());
        let changes = b.take_changes_native();
        assert_eq!(
            changes,
            vec![Change::Text {
                field: "description".into(),
                delta: vec![DeltaOp::Insert("Hi".into())],
                grew: true,
                author: Some("alice".into()),
            }]
        );
        assert!(!b.can_undo("alice"));
        assert!(b.undo("alice").is_none());
        assert_eq!(b.text("description").as_deref(), Some("Hi"));
    }

    #[test]
    fn undo_reverts_only_the_users_own_text() {
        let mut a = WasmDocument::new(1.0);
        let mut b = WasmDocument::new(2.0);
        let u = a.insert("alice", "d", 0, "alice ").unwrap();
        b.apply_update(&u, Some("alice".into())).unwrap();
        let u = b.insert("bob", "d", 6, "bob").unwrap();
        a.apply_update(&u, Some("bob".into())).unwrap();
        let undo = a.undo("alice").unwrap();
        b.apply_update(&undo, Some("alice".into())).unwrap();
        assert_eq!(a.text("d").as_deref(), Some("bob"));
        assert_eq!(b.text("d").as_deref(), Some("bob"));
    }
}
