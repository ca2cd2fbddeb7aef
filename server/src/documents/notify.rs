//! What a document's durable changes mean for people: mentions, assignments, new comments
//! and due dates, derived by the owner task ([`Watch`]) and handed to the
//! [`super::notifier::Notifier`].
//!
//! Decisions:
//! - **New mentions are counted, not parsed from deltas.** After a change settles, each text
//!   field it touched is read whole ([`Document::mentions`]: markup, embeds and `mention`
//!   attributes) and compared, as a multiset, with what the field held when it last settled.
//!   A user whose count grew is newly mentioned. So editing around an existing mention
//!   repeats nothing, markup typed over several inserts counts once it is complete, and an
//!   insert undone before the field settles cancels itself.
//! - **Settle window.** Changes are collected for [`SETTLE`] (30 ms) after the first durable
//!   change, then settled together: an undo (or a deletion) within that window cancels the
//!   notification, and a mention still reaches its user well within 100 ms of the keystroke.
//!   An undo after delivery does not take a notification back.
//! - Only this node's committed batches notify (each batch is committed by exactly one node);
//!   changes that arrived from other nodes only move the baseline.
//! - **Assigned**: the `--assignee-field` register set to a user id by this node's batch,
//!   still holding it when the window settles. **Reply**: a text field `comment:*` that was
//!   empty or absent before, recipients resolved from the store's comment authors.
//!   **Due**: any change of the due or assignee register re-indexes the document's due date.

use std::collections::{HashMap, HashSet};

use tandem_engine::mention;
use tandem_engine::{Change, Document};

use crate::infra::config::NotifyConfig;
use crate::infra::store::DueEntry;

/// How long changes are collected before they are settled.
pub const SETTLE: std::time::Duration = std::time::Duration::from_millis(30);
/// Longest excerpt, in characters.
const EXCERPT_CHARS: usize = 140;

/// A notification to make, before its recipients' access is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// `mention`, `assigned`, `reply` or `due`.
    pub kind: &'static str,
    /// Whom it is for; `None` for a reply (everyone who commented earlier).
    pub user: Option<String>,
    /// The document.
    pub doc: String,
    /// The field.
    pub field: String,
    /// Who caused it (`None` for reminders).
    pub from: Option<String>,
    /// An excerpt.
    pub excerpt: String,
}

/// What settling produced.
#[derive(Debug, Default, PartialEq)]
pub struct Settled {
    /// Notifications to make.
    pub candidates: Vec<Candidate>,
    /// The due date to index, when the due or assignee register changed (`Some(None)`: none).
    pub due: Option<Option<DueEntry>>,
}

/// One document's notification bookkeeping (kept by its owner task).
#[derive(Debug)]
pub struct Watch {
    assignee_field: String,
    due_field: String,
    /// Mentions each text field held when it last settled.
    baseline: HashMap<String, Vec<String>>,
    /// Text fields that have held text.
    known: HashSet<String>,
    /// Text fields this node's batches changed since the last settle, with the last author.
    dirty: HashMap<String, String>,
    /// Text fields other nodes changed: their baseline moves without notifying.
    refresh: HashSet<String>,
    /// The assignee this node's batch set, and who set it.
    assigned: Option<(String, String)>,
    /// Comments this node's batches started: (field, author).
    new_comments: Vec<(String, String)>,
    /// Whether the due or assignee register changed.
    due_changed: bool,
}

impl Watch {
    /// Starts watching `doc` as loaded.
    pub fn new(doc: &Document, config: &NotifyConfig) -> Self {
        let mut baseline = HashMap::new();
        let mut known = HashSet::new();
        for field in doc.field_names() {
            if doc.text_len(&field) > 0 {
                known.insert(field.clone());
            }
            baseline.insert(field.clone(), doc.mentions(&field));
        }
        Watch {
            assignee_field: config.assignee_field.clone(),
            due_field: config.due_field.clone(),
            baseline,
            known,
            dirty: HashMap::new(),
            refresh: HashSet::new(),
            assigned: None,
            new_comments: Vec::new(),
            due_changed: false,
        }
    }

    /// Takes a durable update's changes (`local`: committed by this node). Returns whether
    /// something waits to be settled.
    pub fn changed(&mut self, changes: &[Change], author: &str, local: bool) -> bool {
        for change in changes {
            match change {
                Change::Text { field, grew, .. } => {
                    let inserted = *grew;
                    // Typing keeps touching the same field: its entries are updated in place
                    // (no strings made per keystroke).
                    if local {
                        match self.dirty.get_mut(field) {
                            Some(last) if last == author => {}
                            Some(last) => author.clone_into(last),
                            None => {
                                self.dirty.insert(field.clone(), author.to_owned());
                            }
                        }
                        if inserted && field.starts_with("comment:") && !self.known.contains(field)
                        {
                            self.new_comments.push((field.clone(), author.to_owned()));
                        }
                    } else if !self.refresh.contains(field) {
                        self.refresh.insert(field.clone());
                    }
                    if inserted && !self.known.contains(field) {
                        self.known.insert(field.clone());
                    }
                }
                Change::Field { name, value, .. } => {
                    if *name == self.assignee_field {
                        self.due_changed = true;
                        if local {
                            self.assigned = value
                                .as_ref()
                                .and_then(|v| v.value.as_str())
                                .filter(|u| !u.is_empty())
                                .map(|u| (u.to_owned(), author.to_owned()));
                        }
                    } else if *name == self.due_field {
                        self.due_changed = true;
                    }
                }
            }
        }
        self.is_pending()
    }

    /// Whether something waits to be settled.
    pub fn is_pending(&self) -> bool {
        !self.dirty.is_empty()
            || !self.refresh.is_empty()
            || self.assigned.is_some()
            || !self.new_comments.is_empty()
            || self.due_changed
    }

    /// Settles what changed against the document as it is now (`name`: the document's name).
    pub fn settle(&mut self, doc: &Document, name: &str) -> Settled {
        let mut out = Settled::default();
        for field in std::mem::take(&mut self.refresh) {
            self.baseline.insert(field.clone(), doc.mentions(&field));
        }
        let mut dirty: Vec<(String, String)> = self.dirty.drain().collect();
        dirty.sort();
        for (field, author) in dirty {
            let now = doc.mentions(&field);
            let before = self
                .baseline
                .insert(field.clone(), now.clone())
                .unwrap_or_default();
            let mut left = before;
            // Read only for an excerpt: most settles find no new mention.
            let mut text: Option<String> = None;
            let mut seen = HashSet::new();
            for user in now {
                if let Some(i) = left.iter().position(|u| *u == user) {
                    left.swap_remove(i);
                    continue;
                }
                // One notification per user and settle, however many new mentions.
                if user == author || !seen.insert(user.clone()) {
                    continue;
                }
                out.candidates.push(Candidate {
                    kind: "mention",
                    excerpt: excerpt(
                        text.get_or_insert_with(|| doc.text(&field).unwrap_or_default()),
                        Some(&user),
                    ),
                    user: Some(user),
                    doc: name.to_owned(),
                    field: field.clone(),
                    from: Some(author.clone()),
                });
            }
        }
        for (field, author) in std::mem::take(&mut self.new_comments) {
            let text = doc.text(&field).unwrap_or_default();
            if text.is_empty() {
                continue; // undone before it settled
            }
            out.candidates.push(Candidate {
                kind: "reply",
                user: None,
                doc: name.to_owned(),
                field,
                from: Some(author),
                excerpt: excerpt(&text, None),
            });
        }
        if let Some((user, author)) = self.assigned.take() {
            let current = doc.field(&self.assignee_field);
            let still = current.as_ref().and_then(|f| f.value.as_str()) == Some(user.as_str());
            if still && user != author {
                let title = doc.text("title").unwrap_or_default();
                out.candidates.push(Candidate {
                    kind: "assigned",
                    user: Some(user),
                    doc: name.to_owned(),
                    field: self.assignee_field.clone(),
                    from: Some(author),
                    excerpt: excerpt(&title, None),
                });
            }
        }
        if std::mem::take(&mut self.due_changed) {
            out.due = Some(self.due_entry(doc, name));
        }
        out
    }

    /// The document's due date as the index keeps it.
    fn due_entry(&self, doc: &Document, name: &str) -> Option<DueEntry> {
        let due = doc.field(&self.due_field)?;
        let value = due.value.as_str()?.to_owned();
        let due_at = parse_due(&value)?;
        let assignee = doc
            .field(&self.assignee_field)
            .and_then(|f| f.value.as_str().map(str::to_owned))
            .filter(|a| !a.is_empty());
        Some(DueEntry {
            doc: name.to_owned(),
            value,
            due_at,
            assignee,
        })
    }
}

/// A short excerpt of `text` (mention markup shown as `@Name`), around `user`'s mention.
pub fn excerpt(text: &str, user: Option<&str>) -> String {
    let marks = mention::parse_markup(text);
    let centre = user
        .and_then(|u| marks.iter().find(|m| m.user == u))
        .map(|m| mention::render(&text[..m.start]).chars().count());
    let rendered: Vec<char> = mention::render(text).chars().collect();
    let start = centre.map_or(0, |c| c.saturating_sub(EXCERPT_CHARS / 3));
    let end = (start + EXCERPT_CHARS).min(rendered.len());
    let mut out: String = rendered[start..end].iter().collect();
    if start > 0 {
        out.insert(0, '…');
    }
    if end < rendered.len() {
        out.push('…');
    }
    out
}

/// An RFC 3339 date (`2026-12-24`, midnight UTC) or date-time (`2026-12-24T09:30:00Z`,
/// `…+01:00`, fractions allowed) as unix milliseconds.
pub fn parse_due(s: &str) -> Option<u64> {
    let s = s.trim();
    let num = |t: &str| -> Option<i64> {
        (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
            .then(|| t.parse().ok())
            .flatten()
    };
    let date = s.get(..10)?;
    let (y, m, d) = (
        num(date.get(..4)?)?,
        num(date.get(5..7)?)?,
        num(date.get(8..10)?)?,
    );
    if date.as_bytes()[4] != b'-' || date.as_bytes()[7] != b'-' || !(1..=12).contains(&m) {
        return None;
    }
    if !(1..=31).contains(&d) {
        return None;
    }
    let days = days_from_civil(y, m, d);
    let mut ms = days * 86_400_000;
    let rest = &s[10..];
    if !rest.is_empty() {
        let rest = rest.strip_prefix(['T', 't', ' '])?;
        let (h, mi, se) = (
            num(rest.get(..2)?)?,
            num(rest.get(3..5)?)?,
            num(rest.get(6..8)?)?,
        );
        if rest.as_bytes()[2] != b':' || rest.as_bytes()[5] != b':' || h > 23 || mi > 59 || se > 60
        {
            return None;
        }
        ms += (h * 3600 + mi * 60 + se) * 1000;
        let mut zone = &rest[8..];
        if let Some(frac) = zone.strip_prefix('.') {
            let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
            let ms_part: String = frac[..digits]
                .chars()
                .chain("000".chars())
                .take(3)
                .collect();
            ms += num(&ms_part)?;
            zone = &frac[digits..];
        }
        ms -= match zone {
            "Z" | "z" => 0,
            z if z.len() == 6 && matches!(&z[..1], "+" | "-") && &z[3..4] == ":" => {
                let off = (num(&z[1..3])? * 60 + num(&z[4..6])?) * 60_000;
                if &z[..1] == "+" {
                    off
                } else {
                    -off
                }
            }
            _ => return None,
        };
    }
    u64::try_from(ms).ok()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> NotifyConfig {
        NotifyConfig::default()
    }

    fn doc() -> Document {
        let mut d = Document::new(1);
        d.set_change_feed(true);
        d
    }

    fn settle(w: &mut Watch, d: &mut Document, author: &str) -> Settled {
        let changes = d.take_changes();
        w.changed(&changes, author, true);
        w.settle(d, "task-1")
    }

    fn users(s: &Settled, kind: &str) -> Vec<String> {
        s.candidates
            .iter()
            .filter(|c| c.kind == kind)
            .filter_map(|c| c.user.clone())
            .collect()
    }

    #[test]
    fn one_notification_per_new_mention() {
        let mut d = doc();
        let mut w = Watch::new(&d, &config());
        d.insert("ann", "comment:1", 0, "hi @[Bob](bob").unwrap();
        let first = settle(&mut w, &mut d, "ann");
        assert!(users(&first, "mention").is_empty(), "incomplete");
        assert_eq!(first.candidates[0].kind, "reply", "a new comment");
        d.insert("ann", "comment:1", 13, ") and @[Ann](ann)")
            .unwrap();
        let s = settle(&mut w, &mut d, "ann");
        assert_eq!(users(&s, "mention"), ["bob"], "never to the author");
        assert_eq!(s.candidates[0].excerpt, "hi @Bob and @Ann");
        assert_eq!(s.candidates[0].from.as_deref(), Some("ann"));
        // Editing around it does not repeat it.
        d.insert("cat", "comment:1", 0, "Well, ").unwrap();
        assert!(settle(&mut w, &mut d, "cat").candidates.is_empty());
        // A second mention of the same user is new.
        d.insert("cat", "comment:1", 0, "@[Bob](bob) ").unwrap();
        assert_eq!(users(&settle(&mut w, &mut d, "cat"), "mention"), ["bob"]);
    }

    #[test]
    fn an_insert_undone_before_it_settles_cancels_its_mention() {
        let mut d = doc();
        let mut w = Watch::new(&d, &config());
        d.insert("ann", "description", 0, "ping @[Bob](bob)")
            .unwrap();
        let changes = d.take_changes();
        w.changed(&changes, "ann", true);
        d.undo("ann").unwrap();
        let changes = d.take_changes();
        w.changed(&changes, "ann", true);
        assert!(w.settle(&d, "task-1").candidates.is_empty());
    }

    #[test]
    fn remote_changes_move_the_baseline_without_notifying() {
        let mut d = doc();
        let mut w = Watch::new(&d, &config());
        d.insert("ann", "description", 0, "@[Bob](bob)").unwrap();
        let changes = d.take_changes();
        assert!(w.changed(&changes, "ann", false));
        assert!(w.settle(&d, "task-1").candidates.is_empty());
        d.insert("cat", "description", 0, "x").unwrap();
        assert!(settle(&mut w, &mut d, "cat").candidates.is_empty());
    }

    #[test]
    fn assignments_replies_and_due_dates() {
        let mut d = doc();
        d.insert("ann", "title", 0, "Ship it").unwrap();
        let mut w = Watch::new(&d, &config());
        d.set_time(1);
        d.set_field("ann", "assignee", Some("bob".into())).unwrap();
        let s = settle(&mut w, &mut d, "ann");
        assert_eq!(users(&s, "assigned"), ["bob"]);
        assert_eq!(s.candidates[0].excerpt, "Ship it");
        assert_eq!(s.due, Some(None), "assignee changed, no due date");
        // Assigning yourself notifies nobody.
        d.set_time(2);
        d.set_field("bob", "assignee", Some("bob".into())).unwrap();
        assert!(settle(&mut w, &mut d, "bob").candidates.is_empty());
        d.set_time(3);
        d.set_field("bob", "due", Some("2026-12-24T10:00:00+01:00".into()))
            .unwrap();
        let due = settle(&mut w, &mut d, "bob").due.unwrap().unwrap();
        assert_eq!(due.assignee.as_deref(), Some("bob"));
        assert_eq!(due.due_at, parse_due("2026-12-24T09:00:00Z").unwrap());
        // A new comment is a reply candidate; typing on in it is not.
        d.insert("cat", "comment:2", 0, "me too").unwrap();
        let s = settle(&mut w, &mut d, "cat");
        assert_eq!(s.candidates.len(), 1);
        assert_eq!(
            (s.candidates[0].kind, s.candidates[0].user.clone()),
            ("reply", None)
        );
        d.insert("cat", "comment:2", 6, "!").unwrap();
        assert!(settle(&mut w, &mut d, "cat").candidates.is_empty());
    }

    #[test]
    fn due_dates_parse_as_rfc3339() {
        assert_eq!(parse_due("1970-01-02"), Some(86_400_000));
        assert_eq!(parse_due("2000-03-01T00:00:00Z"), Some(951_868_800_000));
        assert_eq!(
            parse_due("2000-03-01T01:00:00.5+01:00"),
            Some(951_868_800_500)
        );
        assert_eq!(
            parse_due("2000-03-01T00:00:00-00:30"),
            Some(951_870_600_000)
        );
        for bad in [
            "",
            "tomorrow",
            "2000-13-01",
            "2000-03-01T25:00:00Z",
            "2000-03-01T00:00",
        ] {
            assert_eq!(parse_due(bad), None, "{bad}");
        }
    }
}
