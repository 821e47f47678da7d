//! Subjects: validation, wildcard matching and the subscription trie.
//!
//! A subject is a `.`-separated list of non-empty tokens, with no whitespace
//! anywhere. A filter may also use two wildcards, each only as a whole token:
//! `*` matches exactly one token and `>` (last token only) matches one or more
//! trailing tokens. As in NATS, `*` or `>` inside a longer token (`a*`, `>b`)
//! is plain literal text, and subjects are bytes, not necessarily UTF-8.
//!
//! [`Subject`] is what can be published to (no wildcards), [`Filter`] is what
//! can be subscribed to. Both validate once in their constructors, so layers
//! above never re-check. [`Sublist`] routes a subject to its subscribers.

mod trie;

use std::fmt;

use bytes::Bytes;

pub use trie::{Matches, QueueGroup, Sublist};

/// Why a subject, filter or queue name was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    /// Nothing at all.
    #[error("empty subject")]
    Empty,
    /// Two dots in a row, or a leading or trailing dot.
    #[error("empty token")]
    EmptyToken,
    /// A space, tab, CR, LF or form feed: it would split the protocol line.
    #[error("whitespace in subject")]
    Whitespace,
    /// `*` or `>` in a subject that is published to.
    #[error("wildcard not allowed")]
    WildcardNotAllowed,
    /// `>` followed by more tokens.
    #[error("'>' must be the last token")]
    GreaterThanNotLast,
    /// A NUL byte: the event log's subject index uses it as the separator.
    #[error("NUL byte in subject")]
    Nul,
    /// More than [`MAX_SUBJECT_TOKENS`] tokens.
    #[error("more than 256 tokens")]
    TooManyTokens,
    /// More than [`MAX_SUBJECT_BYTES`] bytes.
    #[error("longer than 4096 bytes")]
    TooLong,
}

/// Most tokens a subject or filter may have. nats-server sets none, but no subject needs
/// more, and this bounds what one subject costs the subscription trie (a level per token)
/// and the matcher. A subject's length is bounded by the control line it arrives on.
pub const MAX_SUBJECT_TOKENS: usize = 256;
/// Longest subject or filter, as long as a control line may carry: a `$EL.` JSON body
/// could otherwise name a longer one than the store's keys may hold.
pub const MAX_SUBJECT_BYTES: usize = 4096;

/// A literal subject, valid to publish to: no wildcard tokens.
///
/// Cloning is cheap (a `Bytes` handle).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Subject(Bytes);

impl Subject {
    /// Validates `bytes` as a publish subject.
    ///
    /// # Errors
    /// The first [`SubjectError`] found; wildcards give
    /// [`SubjectError::WildcardNotAllowed`].
    pub fn new(bytes: Bytes) -> Result<Self, SubjectError> {
        validate(&bytes, false)?;
        Ok(Self(bytes))
    }

    /// The subject as sent on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The underlying buffer, without copying.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

/// A subscription filter: a valid subject that may contain `*` and a final `>`.
///
/// Cloning is cheap (a `Bytes` handle).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Filter(Bytes);

impl Filter {
    /// Validates `bytes` as a subscription filter.
    ///
    /// # Errors
    /// The first [`SubjectError`] found.
    pub fn new(bytes: Bytes) -> Result<Self, SubjectError> {
        validate(&bytes, true)?;
        Ok(Self(bytes))
    }

    /// The filter as sent on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The underlying buffer, without copying.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// `>`: every subject.
    pub fn everything() -> Self {
        Self(Bytes::from_static(b">"))
    }

    /// True when the filter has no wildcard token, so it matches only itself.
    pub fn is_literal(&self) -> bool {
        self.0.split(|&b| b == b'.').all(|t| !is_wildcard(t))
    }

    /// Whether `subject` (a valid subject) matches: [`matches()`], with the common
    /// `literal.prefix.>` filter checked by a prefix comparison instead of token by token,
    /// since this runs per message.
    pub fn matches(&self, subject: &[u8]) -> bool {
        match self.0.strip_suffix(b">") {
            Some(prefix)
                if (prefix.is_empty() || prefix.ends_with(b"."))
                    && !prefix.split(|&b| b == b'.').any(|t| t == b"*" || t == b">") =>
            {
                subject.len() > prefix.len() && subject.starts_with(prefix)
            }
            _ => matches(&self.0, subject),
        }
    }
}

impl From<Subject> for Filter {
    fn from(subject: Subject) -> Self {
        Self(subject.0)
    }
}

impl AsRef<[u8]> for Subject {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Filter {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Lossy UTF-8: subjects are bytes, this is for logs and messages only.
impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

/// Lossy UTF-8: filters are bytes, this is for logs and messages only.
impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

/// True if `bytes` is a valid publish subject (no wildcards).
pub fn is_valid_subject(bytes: &[u8]) -> bool {
    validate(bytes, false).is_ok()
}

/// Why `bytes` is not a valid publish subject, if it is not.
///
/// # Errors
/// The first problem from the left.
pub fn check_subject(bytes: &[u8]) -> Result<(), SubjectError> {
    validate(bytes, false)
}

/// True if `bytes` is a valid subscription filter (wildcards allowed).
pub fn is_valid_filter(bytes: &[u8]) -> bool {
    validate(bytes, true).is_ok()
}

/// True if `bytes` is a usable queue group name: non-empty, no whitespace.
///
/// This is exactly what nats-server accepts (its parser splits on whitespace
/// and checks nothing else) and what the official clients check before
/// sending, so no NATS client's queue name is refused. Dots and `*`/`>` are
/// plain characters here: a queue name is compared as a whole, never matched.
pub fn is_valid_queue(bytes: &[u8]) -> bool {
    !bytes.is_empty() && !bytes.iter().any(|&b| is_whitespace(b))
}

/// Token-by-token match of a literal `subject` against `filter`.
///
/// The reference matcher: the trie's tests use it as their oracle, the trie's
/// cache uses it to find stale entries, and store scans use it on stored
/// subjects. Inputs are assumed valid; invalid ones give a wrong answer, never
/// a panic.
pub fn matches(filter: &[u8], subject: &[u8]) -> bool {
    let mut f = filter.split(|&b| b == b'.');
    let mut s = subject.split(|&b| b == b'.');
    loop {
        match (f.next(), s.next()) {
            (Some(b">"), Some(_)) => return true,
            (Some(b"*"), Some(_)) => {}
            (Some(ft), Some(st)) if ft == st => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// A whole token that is `*` or `>`.
fn is_wildcard(token: &[u8]) -> bool {
    matches!(token, b"*" | b">")
}

/// Whitespace as nats-server's subject check defines it (form feed included).
fn is_whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b'\x0c')
}

/// One pass over the bytes; reports the first problem from the left.
fn validate(bytes: &[u8], allow_wildcards: bool) -> Result<(), SubjectError> {
    if bytes.is_empty() {
        return Err(SubjectError::Empty);
    }
    if bytes.len() > MAX_SUBJECT_BYTES {
        return Err(SubjectError::TooLong);
    }
    let mut after_gt = false;
    for (i, token) in bytes.split(|&b| b == b'.').enumerate() {
        if i == MAX_SUBJECT_TOKENS {
            return Err(SubjectError::TooManyTokens);
        }
        if token.is_empty() {
            return Err(SubjectError::EmptyToken);
        }
        if token.iter().any(|&b| is_whitespace(b)) {
            return Err(SubjectError::Whitespace);
        }
        if token.contains(&0) {
            return Err(SubjectError::Nul);
        }
        if after_gt {
            return Err(SubjectError::GreaterThanNotLast);
        }
        if is_wildcard(token) {
            if !allow_wildcards {
                return Err(SubjectError::WildcardNotAllowed);
            }
            after_gt = token == b">";
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::SubjectError::*;
    use super::*;

    type Verdict = Result<(), SubjectError>;

    /// (input, as a subject, as a filter)
    const TABLE: &[(&[u8], Verdict, Verdict)] = &[
        (b"foo", Ok(()), Ok(())),
        (b"foo.bar.baz", Ok(()), Ok(())),
        (b"a.b*", Ok(()), Ok(())),
        (b">b.a*", Ok(()), Ok(())),
        (b"a.**.>>", Ok(()), Ok(())),
        (b"$SYS._INBOX-1", Ok(()), Ok(())),
        ("caf\u{e9}.\u{1f600}".as_bytes(), Ok(()), Ok(())),
        (b"\xff\xfe", Ok(()), Ok(())),
        (b"*", Err(WildcardNotAllowed), Ok(())),
        (b">", Err(WildcardNotAllowed), Ok(())),
        (b"a.*.c", Err(WildcardNotAllowed), Ok(())),
        (b"a.*.>", Err(WildcardNotAllowed), Ok(())),
        (b"*.*", Err(WildcardNotAllowed), Ok(())),
        (b"a.>.b", Err(WildcardNotAllowed), Err(GreaterThanNotLast)),
        (b">.>", Err(WildcardNotAllowed), Err(GreaterThanNotLast)),
        (b"", Err(Empty), Err(Empty)),
        (b".", Err(EmptyToken), Err(EmptyToken)),
        (b"a..b", Err(EmptyToken), Err(EmptyToken)),
        (b".a", Err(EmptyToken), Err(EmptyToken)),
        (b"a.", Err(EmptyToken), Err(EmptyToken)),
        (b"a.>.", Err(WildcardNotAllowed), Err(EmptyToken)),
        (b"foo bar", Err(Whitespace), Err(Whitespace)),
        (b"a\tb", Err(Whitespace), Err(Whitespace)),
        (b"a\r", Err(Whitespace), Err(Whitespace)),
        (b"a.\nb", Err(Whitespace), Err(Whitespace)),
        (b"a\x0cb", Err(Whitespace), Err(Whitespace)),
        (b" ", Err(Whitespace), Err(Whitespace)),
        (b"a.> ", Err(Whitespace), Err(Whitespace)),
    ];

    #[test]
    fn a_subject_may_have_at_most_max_subject_tokens() {
        let subject = |tokens: usize| vec!["a"; tokens].join(".");
        assert_eq!(validate(subject(MAX_SUBJECT_TOKENS).as_bytes(), false), Ok(()));
        assert_eq!(validate(subject(MAX_SUBJECT_TOKENS + 1).as_bytes(), true), Err(TooManyTokens));
        assert_eq!(TooManyTokens.to_string(), format!("more than {MAX_SUBJECT_TOKENS} tokens"));
        assert_eq!(validate(&vec![b'a'; MAX_SUBJECT_BYTES], true), Ok(()));
        assert_eq!(validate(&vec![b'a'; MAX_SUBJECT_BYTES + 1], true), Err(TooLong));
        assert_eq!(TooLong.to_string(), format!("longer than {MAX_SUBJECT_BYTES} bytes"));
    }

    #[test]
    fn validation_table() {
        for &(input, subject, filter) in TABLE {
            let shown = String::from_utf8_lossy(input);
            let bytes = Bytes::copy_from_slice(input);
            assert_eq!(Subject::new(bytes.clone()).map(drop), subject, "subject {shown:?}");
            assert_eq!(Filter::new(bytes).map(drop), filter, "filter {shown:?}");
            assert_eq!(is_valid_subject(input), subject.is_ok(), "{shown:?}");
            assert_eq!(is_valid_filter(input), filter.is_ok(), "{shown:?}");
        }
    }

    #[test]
    fn queue_names() {
        for ok in [&b"workers"[..], b"a.b", b"q*", b">", b"a..b"] {
            assert!(is_valid_queue(ok), "{ok:?}");
        }
        for bad in [&b""[..], b"job worker", b"q\t", b"\r\n"] {
            assert!(!is_valid_queue(bad), "{bad:?}");
        }
    }

    #[test]
    fn literal_filters() {
        let f = |s: &'static str| Filter::new(Bytes::from_static(s.as_bytes())).unwrap();
        assert!(f("a.b").is_literal());
        assert!(f("a*.>b").is_literal());
        assert!(!f("a.*").is_literal());
        assert!(!f(">").is_literal());
        let s = Subject::new(Bytes::from_static(b"a.b")).unwrap();
        assert_eq!(Filter::from(s.clone()).as_bytes(), s.as_bytes());
        assert_eq!(s.to_string(), "a.b");
        assert_eq!(s.into_bytes(), Bytes::from_static(b"a.b"));
    }

    #[test]
    fn matcher() {
        let cases: &[(&str, &str, bool)] = &[
            ("a.b", "a.b", true),
            ("a.b", "a.c", false),
            ("a.b", "a.b.c", false),
            ("a.b.c", "a.b", false),
            ("*", "a", true),
            ("*", "a.b", false),
            ("a.*", "a", false),
            ("a.*.c", "a.b.c", true),
            ("a.*.c", "a.b.d", false),
            (">", "a", true),
            (">", "a.b.c", true),
            ("a.>", "a", false),
            ("a.>", "a.b", true),
            ("a.>", "a.b.c", true),
            ("a.>", "b.c", false),
            ("*.>", "a.b", true),
            ("*.>", "a", false),
            ("a*", "a*", true),
            ("a*", "ab", false),
        ];
        for &(filter, subject, want) in cases {
            assert_eq!(matches(filter.as_bytes(), subject.as_bytes()), want, "{filter} ~ {subject}");
        }
    }
}
