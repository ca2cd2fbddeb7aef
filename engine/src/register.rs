//! Last-write-wins registers stored inside the Yjs document.
//!
//! # Encoding
//!
//! All registers live in one top-level `Y.Map` named [`REGISTERS_MAP`]. Every write is its own
//! entry: the key is `"<name>#<version>"` and the value is a string holding a JSON object
//!
//! ```json
//! {"name": "status", "value": "done", "deleted": false,
//!  "wall": 1732270000000, "counter": 0, "client": 1234, "author": "alice"}
//! ```
//!
//! `wall`/`counter` form the write's hybrid logical clock; `client` is the writer's Yjs client
//! id. A register's value is the entry with the greatest `(wall, counter, client)` among the
//! entries named after it; `deleted: true` means the register was deleted by that write. Its
//! `version` is `"<wall>-<counter>-<client>"`, the same on every replica. An entry counts only
//! when its key is exactly `"<name>#<version>"` of its own JSON; anything else in the map is
//! ignored by every reader.
//!
//! A writer removes the entries it has seen for that register when it adds its own, which is
//! greater than all of them: the greatest write ever made is never removed, so every replica that
//! has seen the same updates picks the same winner, whatever the delivery order.
//!
//! The clock rule: a new write takes `wall = max(now, greatest wall seen)`; the counter restarts
//! at 0 when `wall` moved forward and otherwise counts up. So a write made later in real time
//! wins even when it arrives earlier, and a write made after seeing another always beats it.

use serde::de::{Error as _, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::cmp::Ordering;

/// Name of the top-level `Y.Map` holding register writes.
pub const REGISTERS_MAP: &str = "tandem:registers";

/// A hybrid logical timestamp naming one register write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Stamp {
    /// Milliseconds since the Unix epoch (as the writer's clock saw it, or later).
    pub wall: u64,
    /// Tie counter within one `wall` millisecond.
    pub counter: u32,
    /// Yjs client id of the writer; breaks remaining ties.
    pub client: u64,
}

impl Stamp {
    /// The opaque version token naming this write.
    pub fn version(&self) -> String {
        format!("{}-{}-{}", self.wall, self.counter, self.client)
    }

    /// The next stamp for a write by `client` at `now_ms`, after every stamp in `seen`.
    pub fn next(now_ms: u64, client: u64, seen: impl IntoIterator<Item = Stamp>) -> Stamp {
        let mut wall = 0;
        let mut counter = 0;
        for s in seen {
            if (s.wall, s.counter) > (wall, counter) {
                wall = s.wall;
                counter = s.counter;
            }
        }
        if now_ms > wall {
            Stamp {
                wall: now_ms,
                counter: 0,
                client,
            }
        } else {
            Stamp {
                wall,
                counter: counter.saturating_add(1),
                client,
            }
        }
    }
}

impl Ord for Stamp {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.wall, self.counter, self.client).cmp(&(other.wall, other.counter, other.client))
    }
}

impl PartialOrd for Stamp {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// One register write as stored in the document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Register name.
    pub name: String,
    /// The value written (`null` when deleted).
    #[serde(default)]
    pub value: serde_json::Value,
    /// True when this write deleted the register.
    #[serde(default)]
    pub deleted: bool,
    /// Hybrid clock wall time, ms.
    pub wall: u64,
    /// Hybrid clock counter.
    pub counter: u32,
    /// Writer's Yjs client id.
    pub client: u64,
    /// Who wrote it (user id), if known.
    #[serde(default)]
    pub author: Option<String>,
}

impl Entry {
    /// The write's stamp.
    pub fn stamp(&self) -> Stamp {
        Stamp {
            wall: self.wall,
            counter: self.counter,
            client: self.client,
        }
    }

    /// The map key this entry is stored under.
    pub fn key(&self) -> String {
        format!("{}#{}", self.name, self.stamp().version())
    }

    /// Parses a stored entry; entries that do not parse are ignored by readers.
    ///
    /// Accepts exactly what the derived `Deserialize` accepts (an object, or an array of the
    /// fields in order; the same types and defaults; unknown fields ignored, a repeated field
    /// refused), but reads the JSON as [`serde_json::Value`]s and checks them here. The derived
    /// code's type errors format the offending value, which brings serde's error formatting
    /// and float printing into the browser module (about 9 KB of code and data); this parser
    /// has none.
    pub fn parse(json: &str) -> Option<Entry> {
        let mut de = serde_json::Deserializer::from_str(json);
        let fields = serde::Deserializer::deserialize_any(&mut de, RawEntry).ok()?;
        de.end().ok()?;
        Entry::from_fields(fields)
    }

    /// An entry from its fields by name, with the derived `Deserialize`'s types and defaults.
    fn from_fields(mut f: serde_json::Map<String, Value>) -> Option<Entry> {
        let author = match f.remove("author") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(_) => return None,
        };
        let deleted = match f.remove("deleted") {
            None => false,
            Some(Value::Bool(b)) => b,
            Some(_) => return None,
        };
        let Value::String(name) = f.remove("name")? else {
            return None;
        };
        Some(Entry {
            name,
            value: f.remove("value").unwrap_or(Value::Null),
            deleted,
            wall: f.remove("wall")?.as_u64()?,
            counter: u32::try_from(f.remove("counter")?.as_u64()?).ok()?,
            client: f.remove("client")?.as_u64()?,
            author,
        })
    }
}

/// [`Entry`]'s fields in declaration order (the order of its array form).
const ENTRY_FIELDS: [&str; 7] = [
    "name", "value", "deleted", "wall", "counter", "client", "author",
];

/// Reads an entry's JSON as its fields by name, for [`Entry::parse`]. Anything but an object or
/// an array is refused with a plain message: serde's default answers format the value.
struct RawEntry;

impl<'de> Visitor<'de> for RawEntry {
    type Value = serde_json::Map<String, Value>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a register entry")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = serde_json::Map::new();
        while let Some((key, value)) = map.next_entry::<String, Value>()? {
            let known = ENTRY_FIELDS.contains(&key.as_str());
            if fields.insert(key, value).is_some() && known {
                return Err(A::Error::custom("duplicate field"));
            }
        }
        Ok(fields)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut fields = serde_json::Map::new();
        for name in ENTRY_FIELDS {
            match seq.next_element::<Value>()? {
                Some(value) => {
                    fields.insert(name.to_owned(), value);
                }
                // Only `author`, the last field, has a default in the array form: the derived
                // code fills `value` and `deleted` only when the array ends before them, and
                // then `wall` is missing anyway.
                None if name == "author" => break,
                None => return Err(A::Error::custom("too few fields")),
            }
        }
        Ok(fields)
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Err(E::custom("not an entry"))
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Err(E::custom("not an entry"))
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Err(E::custom("not an entry"))
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Err(E::custom("not an entry"))
    }

    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Err(E::custom("not an entry"))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Err(E::custom("not an entry"))
    }
}

/// The current state of a register, as every API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldValue {
    /// Current value.
    pub value: serde_json::Value,
    /// Opaque token naming the winning write.
    pub version: String,
    /// Who made the winning write.
    pub author: Option<String>,
    /// When the winning write was made (hybrid clock wall time, ms).
    pub at: u64,
}

impl From<&Entry> for FieldValue {
    fn from(e: &Entry) -> Self {
        FieldValue {
            value: e.value.clone(),
            version: e.stamp().version(),
            author: e.author.clone(),
            at: e.wall,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Entry::parse` against the derived `Deserialize` it stands in for.
    #[test]
    fn entry_parse_accepts_what_the_derived_deserialize_accepts() {
        let cases = [
            r#"{"name":"s","value":"done","deleted":false,"wall":5,"counter":1,"client":7,"author":"a"}"#,
            r#"{"name":"s","wall":5,"counter":1,"client":7}"#,
            r#"{"name":"s","value":null,"deleted":true,"wall":5,"counter":0,"client":7,"author":null}"#,
            r#"{"name":"s","wall":5,"counter":1,"client":7,"extra":[1,{"x":2}],"extra":3}"#,
            r#"{"name":"s","name":"t","wall":5,"counter":1,"client":7}"#,
            r#"{"name":"s","wall":5,"wall":6,"counter":1,"client":7}"#,
            r#"{"na\u006de":"s","wall":5,"counter":1,"client":7}"#,
            r#"{"name":"s","wall":5,"counter":4294967295,"client":7}"#,
            r#"{"name":"s","wall":5,"counter":4294967296,"client":7}"#,
            r#"{"name":"s","wall":18446744073709551615,"counter":0,"client":7}"#,
            r#"{"name":"s","wall":18446744073709551616,"counter":0,"client":7}"#,
            r#"{"name":"s","wall":5.0,"counter":1,"client":7}"#,
            r#"{"name":"s","wall":-1,"counter":1,"client":7}"#,
            r#"{"name":"s","wall":-0,"counter":1,"client":7}"#,
            r#"{"name":"s","wall":1e3,"counter":1,"client":7}"#,
            r#"{"name":"s","wall":"5","counter":1,"client":7}"#,
            r#"{"name":"s","wall":5,"counter":1}"#,
            r#"{"name":5,"wall":5,"counter":1,"client":7}"#,
            r#"{"name":null,"wall":5,"counter":1,"client":7}"#,
            r#"{"name":"s","wall":5,"counter":1,"client":7,"deleted":null}"#,
            r#"{"name":"s","wall":5,"counter":1,"client":7,"deleted":1}"#,
            r#"{"name":"s","wall":5,"counter":1,"client":7,"author":5}"#,
            r#"{"name":"s","wall":5,"counter":1,"client":7,"author":["a"]}"#,
            r#"["s",{"v":1},true,5,1,7,"a"]"#,
            r#"["s",{"v":1},true,5,1,7]"#,
            r#"["s",{"v":1},true,5,1]"#,
            r#"["s",{"v":1},true,5,1,7,"a",8]"#,
            r#"["s",null,null,5,1,7]"#,
            r#"[]"#,
            r#"{}"#,
            r#"null"#,
            r#"true"#,
            r#"1.5"#,
            r#"-3"#,
            r#"3"#,
            r#""entry""#,
            r#"{"name":"s","wall":5,"counter":1,"client":7} x"#,
            r#"{"name":"s","wall":5,"counter":1,"client":7"#,
            r#" {"name":"s","wall":5,"counter":1,"client":7} "#,
        ];
        for json in cases {
            let derived = serde_json::from_str::<Entry>(json).ok();
            assert_eq!(Entry::parse(json), derived, "{json}");
        }
    }

    #[test]
    fn later_wall_time_wins_and_ties_break_by_client() {
        let a = Stamp {
            wall: 10,
            counter: 0,
            client: 9,
        };
        let b = Stamp {
            wall: 11,
            counter: 0,
            client: 1,
        };
        assert!(b > a);
        let c = Stamp {
            wall: 11,
            counter: 0,
            client: 2,
        };
        assert!(c > b);
    }

    #[test]
    fn next_stamp_follows_what_was_seen_even_with_a_slow_clock() {
        let seen = Stamp {
            wall: 1_000,
            counter: 3,
            client: 5,
        };
        let n = Stamp::next(500, 1, [seen]);
        assert_eq!((n.wall, n.counter, n.client), (1_000, 4, 1));
        assert!(n > seen);
        let n = Stamp::next(2_000, 1, [seen]);
        assert_eq!((n.wall, n.counter), (2_000, 0));
    }
}
