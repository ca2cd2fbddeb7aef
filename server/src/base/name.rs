//! Document names and the document patterns tokens carry.

use std::fmt;
use std::ops::Deref;
use std::str::FromStr;

/// A document name as it appears in a URL or a message: 1 to 256 characters (at most 1,024
/// bytes), no control characters. Checked once where it enters the server; code below the edge
/// takes a `DocName` (or a `&str` of one) and never checks again.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocName(String);

/// A name that is not a valid document name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid document name: 1 to 256 characters, no control characters")]
pub struct InvalidDocName;

impl DocName {
    /// Checks `name`.
    pub fn parse(name: &str) -> Result<Self, InvalidDocName> {
        let valid = !name.is_empty()
            && name.len() <= 1024
            && name.chars().count() <= 256
            && !name.chars().any(char::is_control);
        if valid {
            Ok(DocName(name.to_owned()))
        } else {
            Err(InvalidDocName)
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name, owned.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl Deref for DocName {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for DocName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DocName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for DocName {
    type Err = InvalidDocName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DocName::parse(s)
    }
}

/// Which documents a token opens: an exact name, or every name starting with a prefix
/// (written with a trailing `*`; a lone `*` matches every document).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DocPattern {
    /// Exactly this document.
    Exact(String),
    /// Every document whose name starts with this prefix.
    Prefix(String),
}

/// An empty document pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the document pattern is empty")]
pub struct EmptyPattern;

impl DocPattern {
    /// Parses `name` or `prefix*`. Only a trailing `*` is special; an empty pattern is refused.
    pub fn parse(s: &str) -> Result<Self, EmptyPattern> {
        if s.is_empty() {
            return Err(EmptyPattern);
        }
        match s.strip_suffix('*') {
            Some(prefix) => Ok(DocPattern::Prefix(prefix.to_owned())),
            None => Ok(DocPattern::Exact(s.to_owned())),
        }
    }

    /// Whether `doc` is covered by this pattern.
    pub fn matches(&self, doc: &str) -> bool {
        match self {
            DocPattern::Exact(name) => name == doc,
            DocPattern::Prefix(prefix) => doc.starts_with(prefix.as_str()),
        }
    }
}

impl fmt::Display for DocPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DocPattern::Exact(name) => f.write_str(name),
            DocPattern::Prefix(prefix) => write!(f, "{prefix}*"),
        }
    }
}

impl FromStr for DocPattern {
    type Err = EmptyPattern;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DocPattern::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_names_are_checked() {
        for ok in ["a", "task:42", "comment/7", &"é".repeat(256)] {
            assert_eq!(DocName::parse(ok).unwrap().as_str(), ok);
        }
        for bad in ["", "a\nb", "\u{7f}", &"x".repeat(257), &"€".repeat(300)] {
            assert_eq!(DocName::parse(bad), Err(InvalidDocName), "{bad:?}");
        }
    }

    #[test]
    fn patterns_match_exact_and_prefix() {
        let check = |pattern: &str, doc: &str, expected: bool| {
            let p = DocPattern::parse(pattern).unwrap();
            assert_eq!(p.matches(doc), expected, "{pattern} vs {doc}");
            assert_eq!(p.to_string(), pattern);
        };
        check("task:1", "task:1", true);
        check("task:1", "task:10", false);
        check("task:1*", "task:10", true);
        check("task:*", "task:", true);
        check("task:*", "tas", false);
        check("*", "anything", true);
        check("*", "", true);
        check("a*b", "a*b", true);
        check("a*b", "axb", false);
        assert_eq!(DocPattern::parse(""), Err(EmptyPattern));
    }
}
