//! Shared pieces of tandem's fuzz targets (see `fuzz/README.md`).
//!
//! - [`alloc`]: a global allocator that counts the bytes the code under test holds.
//! - [`frames`]: builds client frames and parses the frames the room sends, strictly.
//! - [`awareness`]: the y-protocols awareness rules as a stock client applies them.

pub mod alloc;
pub mod awareness;
pub mod frames;

/// A state vector as `client → next clock`, without clients at clock 0 (an entry at 0 says
/// nothing: yrs sometimes keeps one for a client it has only heard of).
pub fn clocks(state_vector: &[u8]) -> std::collections::BTreeMap<u64, u32> {
    use yrs::updates::decoder::Decode;
    yrs::StateVector::decode_v1(state_vector)
        .expect("a document's own state vector decodes")
        .iter()
        .filter(|(_, clock)| **clock > 0)
        .map(|(client, clock)| (client.get(), *clock))
        .collect()
}

/// The first client id from `from` on that none of `updates` mentions (carries blocks of,
/// refers to, or deletes from). A document that loads or replays them takes it, as a real
/// replica's random id would be: a document refuses an update that waits for ids of its own
/// client (`DocumentError::OwnClientId`).
pub fn unused_client(updates: &[&[u8]], from: u64) -> u64 {
    let mut used = std::collections::BTreeSet::new();
    for update in updates {
        if let Ok(s) = tandem_engine::guard::check_update_v1(update) {
            used.extend(s.provides.iter().map(|&(client, _, _)| client));
            used.extend(s.needs.iter().map(|&(client, _)| client));
            used.extend(s.deletes.iter().map(|&(client, _)| client));
        }
    }
    (from..)
        .find(|c| !used.contains(c))
        .expect("a free client id")
}
