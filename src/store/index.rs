//! The subject index: for each run, one entry per exact subject in it and one per token
//! prefix of those subjects (up to [`INDEX_PREFIX_TOKENS`] tokens, so an event costs
//! in proportion to its subject's length), each listing its sequences in the run.
//!
//! Key `subject 0x00 seq` or `prefix.> 0x00 seq`, where `seq` is the entry's first sequence
//! (big-endian, so entries sort in log order); value `revision u64 | offset u16 ...`, one
//! offset from `seq` per event (the revision is that of the first event, and counts up by
//! one per offset; prefix entries store 0). A literal subject or a literal prefix
//! (`orders.42.>`) is then one range scan in sequence order, and "last event of S" one
//! reverse seek. Subjects cannot contain 0x00 or a `>` token, so the kinds never collide.

use std::collections::HashMap;

use bytes::BufMut;

use super::run::RUN_EVENTS;
use crate::config::INDEX_PREFIX_TOKENS;
use crate::subject::Filter;

/// Index entries of one run being built, by subject (`false`) or token prefix (`true`).
#[derive(Default)]
pub(super) struct RunIndex<'a> {
    entries: HashMap<(&'a [u8], bool), Entry>,
}

struct Entry {
    first: u64,
    value: Vec<u8>,
}

impl<'a> RunIndex<'a> {
    /// Notes that the event `seq` (with its revision) on `subject` is in the run.
    pub(super) fn add(&mut self, subject: &'a [u8], seq: u64, revision: u64) {
        self.note((subject, false), seq, revision);
        for prefix in prefixes(subject) {
            self.note((prefix, true), seq, 0);
        }
    }

    fn note(&mut self, name: (&'a [u8], bool), seq: u64, revision: u64) {
        let entry =
            self.entries.entry(name).or_insert_with(|| Entry { first: seq, value: revision.to_be_bytes().into() });
        // A run holds at most RUN_EVENTS events, so the offset fits.
        debug_assert!(seq - entry.first < RUN_EVENTS as u64);
        entry.value.put_u16(u16::try_from(seq - entry.first).unwrap_or(u16::MAX));
    }

    /// The finished entries as index keys and values; leaves the builder empty.
    pub(super) fn drain(&mut self) -> impl Iterator<Item = (Vec<u8>, Vec<u8>)> + '_ {
        self.entries.drain().map(|((name, is_prefix), entry)| {
            let mut key = Vec::with_capacity(name.len() + 11);
            key.extend_from_slice(name);
            if is_prefix {
                key.extend_from_slice(b".>");
            }
            key.push(0);
            key.extend_from_slice(&entry.first.to_be_bytes());
            (key, entry.value)
        })
    }
}

/// The `(sequence, revision)` pairs of a stored entry whose key ends in `first`.
pub(super) fn entry_seqs(first: u64, value: &[u8]) -> impl Iterator<Item = (u64, u64)> + '_ {
    let revision = be_u64(value);
    value
        .get(8..)
        .unwrap_or_default()
        .chunks_exact(2)
        .zip(0..)
        .map(move |(offset, i)| (first + u64::from(u16::from_be_bytes([offset[0], offset[1]])), revision + i))
}

/// A big-endian u64 from the first 8 bytes (0 if shorter).
pub(super) fn be_u64(bytes: &[u8]) -> u64 {
    bytes.get(..8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_be_bytes)
}

/// The sequence at the end of an index key (`name 0x00 seq`).
pub(super) fn key_seq(key: &[u8]) -> u64 {
    be_u64(&key[key.len().saturating_sub(8)..])
}

/// The proper token prefixes of a subject the index lists: `a.b.c` -> `a`, `a.b`; at
/// most [`INDEX_PREFIX_TOKENS`] tokens long.
fn prefixes(subject: &[u8]) -> impl Iterator<Item = &[u8]> {
    subject.iter().enumerate().filter(|&(_, &b)| b == b'.').map(|(i, _)| &subject[..i]).take(INDEX_PREFIX_TOKENS)
}

/// The literal tokens before the first wildcard, with their trailing dot (`orders.*.x` ->
/// `orders.`), or the whole subject for a literal filter.
pub(super) fn literal_prefix(filter: &Filter) -> &[u8] {
    let bytes = filter.as_bytes();
    let mut end = 0;
    for token in bytes.split(|&b| b == b'.') {
        if token == b"*" || token == b">" {
            return &bytes[..end];
        }
        end += token.len() + 1;
    }
    bytes
}

/// Whether the index answers `filter` exactly: a literal subject, or `prefix.>` with no
/// other wildcard and a prefix the index lists. Other filters with a literal first token
/// use it to narrow, then match.
pub(super) fn is_exact(filter: &Filter) -> bool {
    let bytes = filter.as_bytes();
    filter.is_literal()
        || (bytes.ends_with(b".>")
            && literal_prefix(filter).len() == bytes.len() - 1
            && indexed_prefix(filter).is_some_and(|prefix| prefix.len() == bytes.len() - 2))
}

/// The index key prefix (with its 0x00) that covers every subject `filter` can match, if
/// the filter starts with a literal token: the literal itself, or `prefix.>` for the
/// deepest indexed prefix of its literal tokens.
pub(super) fn name_of(filter: &Filter) -> Option<Vec<u8>> {
    if filter.is_literal() {
        let mut key = filter.as_bytes().to_vec();
        key.push(0);
        return Some(key);
    }
    let mut key = indexed_prefix(filter)?.to_vec();
    key.extend_from_slice(b".>");
    key.push(0);
    Some(key)
}

/// The filter's literal tokens before its first wildcard, without the trailing dot, cut
/// to the [`INDEX_PREFIX_TOKENS`] the index lists; `None` if it starts with a wildcard.
fn indexed_prefix(filter: &Filter) -> Option<&[u8]> {
    let prefix = literal_prefix(filter).strip_suffix(b".")?;
    match prefix.iter().enumerate().filter(|&(_, &b)| b == b'.').nth(INDEX_PREFIX_TOKENS - 1) {
        Some((cut, _)) => Some(&prefix[..cut]),
        None => Some(prefix),
    }
}

/// Index keys under `name` (which ends in 0x00) with sequences in `from..=to`.
pub(super) fn seq_range(name: &[u8], from: u64, to: u64) -> std::ops::RangeInclusive<Vec<u8>> {
    let mut start = name.to_vec();
    start.extend_from_slice(&from.to_be_bytes());
    let mut end = name.to_vec();
    end.extend_from_slice(&to.to_be_bytes());
    start..=end
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn an_event_lists_at_most_index_prefix_tokens_prefixes() {
        let deep = vec!["t"; 2_000].join(".");
        let mut index = RunIndex::default();
        index.add(deep.as_bytes(), 1, 1);
        let bytes: usize = index.drain().map(|(key, value)| key.len() + value.len()).sum();
        // The subject's own entry, plus prefixes of at most INDEX_PREFIX_TOKENS tokens each.
        assert!(bytes < deep.len() + INDEX_PREFIX_TOKENS * (2 * INDEX_PREFIX_TOKENS + 16) + 32, "{bytes} bytes");
    }

    #[test]
    fn deep_filters_read_through_the_deepest_indexed_prefix() {
        let filter = |text: &str| Filter::new(Bytes::copy_from_slice(text.as_bytes())).expect("filter");
        let tokens = |n: usize| (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join(".");
        let at_limit = format!("{}.>", tokens(INDEX_PREFIX_TOKENS));
        assert_eq!(name_of(&filter(&at_limit)), Some(format!("{}.>\0", tokens(INDEX_PREFIX_TOKENS)).into_bytes()));
        assert!(is_exact(&filter(&at_limit)));
        let deeper = format!("{}.>", tokens(INDEX_PREFIX_TOKENS + 3));
        assert_eq!(name_of(&filter(&deeper)), Some(format!("{}.>\0", tokens(INDEX_PREFIX_TOKENS)).into_bytes()));
        assert!(!is_exact(&filter(&deeper)), "narrowed by the index, then matched");
        let wildcard = format!("{}.*.x", tokens(INDEX_PREFIX_TOKENS + 1));
        assert_eq!(name_of(&filter(&wildcard)), Some(format!("{}.>\0", tokens(INDEX_PREFIX_TOKENS)).into_bytes()));
    }

    #[test]
    fn entries_list_each_name_once_per_run_with_its_sequences() {
        let mut index = RunIndex::default();
        index.add(b"a.b", 10, 4);
        index.add(b"a.c", 11, 1);
        index.add(b"a.b", 13, 5);
        let mut entries: Vec<_> = index
            .drain()
            .map(|(key, value)| {
                let seqs: Vec<(u64, u64)> = entry_seqs(key_seq(&key), &value).collect();
                (key[..key.len() - 9].to_vec(), seqs)
            })
            .collect();
        entries.sort();
        assert_eq!(
            entries,
            vec![
                (b"a.>".to_vec(), vec![(10, 0), (11, 1), (13, 2)]),
                (b"a.b".to_vec(), vec![(10, 4), (13, 5)]),
                (b"a.c".to_vec(), vec![(11, 1)]),
            ]
        );
    }
}
