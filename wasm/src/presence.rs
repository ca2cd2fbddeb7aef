//! `Presence`: who is viewing, who is typing in which field, and where their cursors are.
//!
//! A thin binding over the engine's presence layer for one replica. The local user is set once
//! with `setUser`; cursors are given and read as absolute UTF-16 offsets and travel as
//! relative positions, so they survive concurrent edits. Awareness payloads (the bytes inside
//! a y-websocket awareness message) go in through `applyUpdate` and out through `localUpdate`.

use crate::convert::{self, numbers, object, string_or_null};
use crate::document::WasmDocument;
use crate::error::BindingError;
use js_sys::Array;
use std::collections::HashMap;
use std::sync::Arc;
use tandem_engine::presence::{Presence, PresenceState, RemoteCursor, TypingUser, User, Viewer};
use tandem_engine::wire::Reader;
use tandem_engine::DecodeError;
use wasm_bindgen::prelude::*;
use yrs::sync::awareness::{AwarenessUpdate, AwarenessUpdateEntry};
use yrs::updates::encoder::Encode;
use yrs::ClientID;

/// Presence of everyone on one document replica.
#[wasm_bindgen(js_name = Presence)]
#[derive(Debug)]
pub struct WasmPresence {
    inner: Presence,
}

#[wasm_bindgen(js_class = Presence)]
impl WasmPresence {
    /// Presence for the replica `doc` (the local client id is the document's).
    #[wasm_bindgen(constructor)]
    pub fn new(doc: &WasmDocument) -> Result<WasmPresence, BindingError> {
        let inner = Presence::new(doc.engine().doc().clone())?;
        Ok(WasmPresence { inner })
    }

    /// Sets the local user (viewing, not typing, no cursors), replacing any previous state.
    #[wasm_bindgen(js_name = setUser)]
    pub fn set_user(&mut self, id: &str, name: &str, color: &str, now_ms: f64) {
        let now = convert::millis(now_ms);
        self.inner
            .set_state(PresenceState::new(User::new(id, name, color), now), now);
    }

    /// Sets the local selection in `field` (`anchor == head` is a caret), UTF-16 offsets.
    #[wasm_bindgen(js_name = setCursor)]
    pub fn set_cursor(
        &mut self,
        field: &str,
        anchor: u32,
        head: u32,
        now_ms: f64,
    ) -> Result<(), BindingError> {
        Ok(self
            .inner
            .set_cursor(field, anchor, head, convert::millis(now_ms))?)
    }

    /// Removes the local selection in `field` (it lost focus).
    #[wasm_bindgen(js_name = clearCursor)]
    pub fn clear_cursor(&mut self, field: &str, now_ms: f64) -> Result<(), BindingError> {
        Ok(self.inner.clear_cursor(field, convert::millis(now_ms))?)
    }

    /// Sets the field the local user is typing in; `undefined` means not typing.
    #[wasm_bindgen(js_name = setTyping)]
    pub fn set_typing(&mut self, field: Option<String>, now_ms: f64) -> Result<(), BindingError> {
        Ok(self
            .inner
            .set_typing(field.as_deref(), convert::millis(now_ms))?)
    }

    /// Sets whether the local user has the document on screen.
    #[wasm_bindgen(js_name = setViewing)]
    pub fn set_viewing(&mut self, viewing: bool, now_ms: f64) -> Result<(), BindingError> {
        Ok(self.inner.set_viewing(viewing, convert::millis(now_ms))?)
    }

    /// Whether the local state should be renewed now (every 15 s).
    #[wasm_bindgen(js_name = renewalDue)]
    pub fn renewal_due(&self, now_ms: f64) -> bool {
        self.inner.renewal_due(convert::millis(now_ms))
    }

    /// Republishes the local state unchanged, as y-protocols clients do to stay alive.
    pub fn renew(&mut self, now_ms: f64) -> Result<(), BindingError> {
        Ok(self.inner.renew(convert::millis(now_ms))?)
    }

    /// Removes the local state (the user leaves); returns the awareness payload announcing it.
    pub fn leave(&mut self, now_ms: f64) -> Result<Vec<u8>, BindingError> {
        Ok(self.inner.leave(convert::millis(now_ms))?.encode_v1())
    }

    /// The local state as an awareness payload, or `undefined` before `setUser`.
    #[wasm_bindgen(js_name = localUpdate)]
    pub fn local_update(&self) -> Option<Vec<u8>> {
        self.inner.encode_local_update().ok()
    }

    /// Every present state (local included) as one awareness payload.
    #[wasm_bindgen(js_name = fullUpdate)]
    pub fn full_update(&self) -> Result<Vec<u8>, BindingError> {
        Ok(self.inner.full_update()?.encode_v1())
    }

    /// Applies an awareness payload from a peer. Returns whether anything changed.
    #[wasm_bindgen(js_name = applyUpdate)]
    pub fn apply_update(&mut self, payload: &[u8], now_ms: f64) -> Result<bool, BindingError> {
        let update = decode_awareness(payload)?;
        Ok(self
            .inner
            .apply_update(update, convert::millis(now_ms))?
            .is_some())
    }

    /// Removes the states of `clients` (for example every peer when the connection to them is
    /// lost). Returns whether any was removed.
    #[wasm_bindgen(js_name = removeClients)]
    pub fn remove_clients(&mut self, clients: Vec<f64>, now_ms: f64) -> Result<bool, BindingError> {
        let ids: Vec<ClientID> = clients
            .iter()
            .filter_map(|c| convert::client_id(*c).ok())
            .map(ClientID::new)
            .collect();
        let update = self.inner.remove_clients(&ids, convert::millis(now_ms))?;
        Ok(!update.clients.is_empty())
    }

    /// Removes peers not renewed for 30 s; returns their client ids.
    pub fn expire(&mut self, now_ms: f64) -> Vec<f64> {
        self.inner
            .expire(convert::millis(now_ms))
            .into_iter()
            .map(|c| c.get() as f64)
            .collect()
    }

    /// Client ids of every present state other than the local one.
    #[wasm_bindgen(js_name = remoteClients)]
    pub fn remote_clients(&self) -> Vec<f64> {
        let me = self.inner.client_id();
        self.inner
            .states()
            .into_iter()
            .filter(|(c, _)| *c != me)
            .map(|(c, _)| c.get() as f64)
            .collect()
    }

    /// The user id published by client `clientId`, if any (to name the author of its edits).
    #[wasm_bindgen(js_name = userOf)]
    pub fn user_of(&self, client_id: f64) -> Option<String> {
        let id = convert::client_id(client_id).ok()?;
        self.inner.state(ClientID::new(id))?.user.id.clone()
    }

    /// The users viewing the document, one entry per user:
    /// `[{userId, name, color, clients, lastActiveMs}]`.
    pub fn viewers(&self, now_ms: f64) -> JsValue {
        self.inner
            .viewers(convert::millis(now_ms))
            .iter()
            .map(viewer_js)
            .collect::<Array>()
            .into()
    }

    /// Who is typing where: `[{userId, name, color, field, clients}]`.
    pub fn typing(&self, now_ms: f64) -> JsValue {
        self.inner
            .typing(convert::millis(now_ms))
            .iter()
            .map(typing_js)
            .collect::<Array>()
            .into()
    }

    /// Remote selections in `field` as absolute UTF-16 offsets:
    /// `[{clientId, user: {id, name, color}, anchor, head}]`.
    pub fn cursors(&self, field: &str) -> Result<JsValue, BindingError> {
        let list: Array = self.inner.cursors(field)?.iter().map(cursor_js).collect();
        Ok(list.into())
    }

    /// The local selection in `field` as `[anchor, head]`, mapped to the current text.
    #[wasm_bindgen(js_name = localCursor)]
    pub fn local_cursor(&self, field: &str) -> Result<Option<Vec<u32>>, BindingError> {
        Ok(self
            .inner
            .local_cursor(field)?
            .map(|(anchor, head)| vec![anchor, head]))
    }
}

/// Decodes an awareness payload with every count and length bounded by the bytes present.
pub fn decode_awareness(payload: &[u8]) -> Result<AwarenessUpdate, BindingError> {
    let mut r = Reader::new(payload);
    let n = r.len_prefix(3)?;
    let mut clients = HashMap::with_capacity(n);
    for _ in 0..n {
        let id = r.client_id()?;
        let clock = r.var_u32()?;
        let json = r.var_str()?;
        clients.insert(
            ClientID::new(id),
            AwarenessUpdateEntry {
                clock,
                json: Arc::from(json),
            },
        );
    }
    if !r.is_empty() {
        return Err(DecodeError::TrailingBytes(r.remaining()).into());
    }
    Ok(AwarenessUpdate { clients })
}

fn user_js(user: &User) -> JsValue {
    object(&[
        ("color", string_or_null(user.color.as_deref())),
        ("id", string_or_null(user.id.as_deref())),
        ("name", string_or_null(user.name.as_deref())),
    ])
}

fn ids(clients: &[ClientID]) -> JsValue {
    numbers(clients.iter().map(|c| c.get() as f64))
}

fn viewer_js(v: &Viewer) -> JsValue {
    object(&[
        ("clients", ids(&v.clients)),
        ("color", string_or_null(v.color.as_deref())),
        ("lastActiveMs", JsValue::from_f64(v.last_active_ms as f64)),
        ("name", string_or_null(v.name.as_deref())),
        ("userId", string_or_null(v.user_id.as_deref())),
    ])
}

fn typing_js(t: &TypingUser) -> JsValue {
    object(&[
        ("clients", ids(&t.clients)),
        ("color", string_or_null(t.color.as_deref())),
        ("field", JsValue::from_str(&t.field)),
        ("name", string_or_null(t.name.as_deref())),
        ("userId", string_or_null(t.user_id.as_deref())),
    ])
}

fn cursor_js(c: &RemoteCursor) -> JsValue {
    object(&[
        ("anchor", JsValue::from_f64(f64::from(c.anchor))),
        ("clientId", JsValue::from_f64(c.client_id.get() as f64)),
        ("head", JsValue::from_f64(f64::from(c.head))),
        ("user", user_js(&c.user)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_and_typing_cross_replicas() {
        let mut da = WasmDocument::new(1.0);
        let mut db = WasmDocument::new(2.0);
        let u = da.insert("alice", "d", 0, "hello").unwrap();
        db.apply_update(&u, None).unwrap();
        let mut a = WasmPresence::new(&da).unwrap();
        let mut b = WasmPresence::new(&db).unwrap();
        a.set_user("alice", "Alice", "#f00", 1000.0);
        a.set_cursor("d", 2, 2, 1000.0).unwrap();
        a.set_typing(Some("d".into()), 1000.0).unwrap();
        assert!(b.apply_update(&a.local_update().unwrap(), 1000.0).unwrap());
        let cursors = b.inner.cursors("d").unwrap();
        assert_eq!((cursors[0].anchor, cursors[0].head), (2, 2));
        assert_eq!(b.inner.typing(1000)[0].field, "d");
        assert_eq!(b.user_of(1.0).as_deref(), Some("alice"));
        assert_eq!(b.remote_clients(), vec![1.0]);
        // Bytes that are not an awareness payload are refused, not trusted.
        assert!(decode_awareness(&[5, 1]).is_err());
    }
}
