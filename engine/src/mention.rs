//! Mentions of users in text fields, in the three forms editors write them:
//! - plain-text markup `@[Display Name](user-id)` (react-mentions' default markup);
//! - a Y.Text embed that is a map with a `"mention"` key (`insertEmbed({mention: "user-id"})`);
//! - a formatting attribute `{"mention": "user-id"}` on a run of text (Quill/TipTap style).
//!
//! The attribute and embed value may also be an object with an `"id"` string.
//! [`crate::Document::mentions`] lists every mention a field holds now; comparing two such
//! lists (as multisets) tells which mentions are new, whatever edits happened in between.

/// One mention found in plain text: the user id and where the markup sits (byte offsets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Markup {
    /// The mentioned user's id.
    pub user: String,
    /// The display name between the brackets.
    pub name: String,
    /// Byte offset of the `@`.
    pub start: usize,
    /// Byte offset just after the closing `)`.
    pub end: usize,
}

/// Longest display name or user id accepted in markup, in bytes.
const MAX_PART: usize = 256;

/// Every complete `@[Display Name](user-id)` in `text`, in order. Incomplete markup (typed
/// halfway) is not a mention yet.
pub fn parse_markup(text: &str) -> Vec<Markup> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = text[from..].find("@[") {
        let start = from + i;
        from = start + 2;
        let rest = &text[start + 2..];
        let Some(close) = rest.find("](") else { break };
        let name = &rest[..close];
        if name.is_empty() || name.len() > MAX_PART || name.contains(['[', ']', '\n']) {
            continue;
        }
        let after = &rest[close + 2..];
        let Some(end) = after.find(')') else { break };
        let user = &after[..end];
        if user.is_empty() || user.len() > MAX_PART || user.contains(['(', ' ', '\n', '[']) {
            continue;
        }
        let stop = start + 2 + close + 2 + end + 1;
        out.push(Markup {
            user: user.to_owned(),
            name: name.to_owned(),
            start,
            end: stop,
        });
        from = stop;
    }
    out
}

/// `text` with every mention markup shown as `@Display Name`, for excerpts.
pub fn render(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for m in parse_markup(text) {
        out.push_str(&text[at..m.start]);
        out.push('@');
        out.push_str(&m.name);
        at = m.end;
    }
    out.push_str(&text[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_is_found_only_when_complete() {
        let t = "hi @[Bob Smith](bob) and @[Ann](ann)!";
        let users: Vec<_> = parse_markup(t).into_iter().map(|m| m.user).collect();
        assert_eq!(users, ["bob", "ann"]);
        assert!(parse_markup("hi @[Bob Smith](bo").is_empty());
        assert!(parse_markup("hi @[Bob Smith]").is_empty());
        assert!(parse_markup("@[](x) @[a]( )").is_empty());
        assert_eq!(render(t), "hi @Bob Smith and @Ann!");
        assert_eq!(parse_markup("@[x @[Y](y)")[0].user, "y");
    }
}
