//! Who made a remote update: the Yjs client id of its first block.
//!
//! y-websocket relays updates without naming their author, but every block of a Yjs update
//! carries its creator's client id, and that client publishes its user in its presence state.
//! The provider combines the two (`Presence.userOf`) to report authors of remote changes. An
//! update holding only deletions names no creator.

use tandem_engine::wire::Reader;
use wasm_bindgen::prelude::*;

/// The client id of the first block of a v1 update, if it has one.
pub fn first_client(update: &[u8]) -> Option<u64> {
    let mut r = Reader::new(update);
    let clients = r.var_u64().ok()?;
    if clients == 0 {
        return None;
    }
    let _blocks = r.var_u64().ok()?;
    r.client_id().ok()
}

/// The Yjs client id that created the first block of `update` (`undefined` when it creates
/// nothing, e.g. only deletes).
#[wasm_bindgen(js_name = updateClient)]
pub fn update_client(update: &[u8]) -> Option<f64> {
    first_client(update).map(|c| c as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_engine::Document;

    #[test]
    fn names_the_creator() {
        let mut d = Document::new(4242);
        let u = d.insert("a", "t", 0, "x").unwrap();
        assert_eq!(first_client(&u), Some(4242));
        let u = d.delete("a", "t", 0, 1).unwrap();
        assert_eq!(first_client(&u), None);
    }
}
