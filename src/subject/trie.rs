//! The subscription trie: which subscriptions does a published subject reach?
//!
//! Modelled on nats-server's `Sublist` (server/sublist.go). Each level of the
//! trie holds one node per literal token, plus at most one `*` node and one
//! `>` node, so a match walks one path per wildcard branch instead of testing
//! every subscription. Each node keeps its plain subscribers and its queue
//! subscribers grouped by queue name.
//!
//! In front of the trie sits a bounded cache from subject to result, because
//! publishers tend to reuse a small set of subjects. Writers keep it exact:
//! an insert adds the new subscriber to every cached result its filter
//! matches, a remove drops those results. On top of that, [`Sublist::generation`]
//! changes on every write, so callers can keep lock-free caches of their own.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;

use super::Filter;

/// Cached results above which a sweep runs (nats-server uses the same bound).
const CACHE_MAX: usize = 1024;
/// Cached results a sweep keeps: low enough that sweeps stay rare.
const CACHE_SWEEP_TO: usize = 256;

/// The subscribers one subject reaches.
#[derive(Debug, Clone)]
pub struct Matches<T> {
    /// Plain subscribers: each gets the message.
    pub plain: Vec<T>,
    /// Queue groups, one per queue name: one member of each gets the message.
    pub groups: Vec<QueueGroup<T>>,
}

/// The members of one queue group that match a subject.
///
/// Members subscribed with different filters (`orders.*` and `orders.>`) but
/// the same queue name form one group, as in NATS.
#[derive(Debug, Clone)]
pub struct QueueGroup<T> {
    /// The queue name given on `SUB`.
    pub name: Bytes,
    /// Never empty.
    pub members: Vec<T>,
}

impl<T> Matches<T> {
    /// True when nobody is interested in the subject.
    pub fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.groups.is_empty()
    }
}

impl<T> Default for Matches<T> {
    fn default() -> Self {
        Self { plain: Vec::new(), groups: Vec::new() }
    }
}

impl<T: Clone> Matches<T> {
    /// Adds one subscriber, merging queue members into a group by name.
    fn push(&mut self, queue: Option<&Bytes>, item: T) {
        match queue {
            None => self.plain.push(item),
            Some(name) => match self.groups.iter_mut().find(|g| g.name == name) {
                Some(group) => group.members.push(item),
                None => self.groups.push(QueueGroup { name: name.clone(), members: vec![item] }),
            },
        }
    }

    fn add_node(&mut self, node: &Node<T>) {
        self.plain.extend_from_slice(&node.plain);
        for group in &node.groups {
            match self.groups.iter_mut().find(|g| g.name == group.name) {
                Some(mine) => mine.members.extend_from_slice(&group.members),
                None => self.groups.push(group.clone()),
            }
        }
    }
}

/// Subscriptions indexed by filter, matched by literal subject.
///
/// `T` is the broker's subscription handle; its `PartialEq` should be
/// identity, since [`Sublist::remove`] removes the first equal item. Safe to
/// share between threads: reads of cached subjects take one short read lock,
/// other matches a read lock on the trie, writes a write lock.
pub struct Sublist<T> {
    trie: RwLock<Trie<T>>,
    /// Subject -> result. Lock order: `trie`, then `cache`.
    cache: Option<RwLock<HashMap<Bytes, Arc<Matches<T>>>>>,
    generation: AtomicU64,
    /// Returned for every subject nobody wants, so that costs no allocation.
    empty: Arc<Matches<T>>,
}

struct Trie<T> {
    root: Level<T>,
    count: usize,
}

struct Level<T> {
    /// std's keyed SipHash on purpose: tokens come from clients, who must
    /// not be able to force collisions.
    literals: HashMap<Bytes, Node<T>>,
    star: Option<Box<Node<T>>>,
    gt: Option<Box<Node<T>>>,
}

struct Node<T> {
    next: Level<T>,
    plain: Vec<T>,
    groups: Vec<QueueGroup<T>>,
}

impl<T: Clone + PartialEq> Default for Sublist<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Clone + PartialEq> Sublist<T> {
    /// An empty sublist with the match cache on.
    pub fn new() -> Self {
        Self::with_cache(true)
    }

    /// An empty sublist; `enabled: false` walks the trie on every match,
    /// which can pay off when subscriptions churn far more than subjects repeat.
    pub fn with_cache(enabled: bool) -> Self {
        Self {
            trie: RwLock::new(Trie { root: Level::new(), count: 0 }),
            cache: enabled.then(|| RwLock::new(HashMap::new())),
            generation: AtomicU64::new(0),
            empty: Arc::new(Matches::default()),
        }
    }

    /// Adds `item` under `filter`, in queue group `queue` if given.
    ///
    /// The queue name is not checked here: validate it with
    /// [`is_valid_queue`](super::is_valid_queue) first. Adding an equal item
    /// twice stores it twice (it is then matched, and must be removed, twice).
    pub fn insert(&self, filter: &Filter, queue: Option<&Bytes>, item: T) {
        let mut trie = write(&self.trie);
        trie.count += 1;
        let node = trie.root.node_mut(filter.as_bytes());
        let (members, queue) = match queue {
            None => (&mut node.plain, None),
            Some(name) => {
                let group = node.group_mut(name);
                (&mut group.members, Some(group.name.clone()))
            }
        };
        // Cached results stay exact: add the new subscriber to each one the
        // filter matches, while the write lock keeps every reader out.
        if let Some(cache) = &self.cache {
            let mut cache = write(cache);
            let add = |result: &mut Arc<Matches<T>>| {
                Arc::make_mut(result).push(queue.as_ref(), item.clone());
            };
            if filter.is_literal() {
                if let Some(result) = cache.get_mut(filter.as_bytes()) {
                    add(result);
                }
            } else {
                for (subject, result) in cache.iter_mut() {
                    if super::matches(filter.as_bytes(), subject) {
                        add(result);
                    }
                }
            }
        }
        members.push(item);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Removes one item equal to `item` stored under `filter` and `queue`.
    ///
    /// Returns false, changing nothing, if there is none. Nodes left empty are
    /// pruned, so memory follows the live subscriptions, not their history.
    pub fn remove(&self, filter: &Filter, queue: Option<&Bytes>, item: &T) -> bool {
        let mut trie = write(&self.trie);
        if !trie.root.remove(filter.as_bytes(), queue, item) {
            return false;
        }
        trie.count -= 1;
        // Dropped rather than edited (as nats-server does): simpler, and the
        // next match of each dropped subject rebuilds it.
        if let Some(cache) = &self.cache {
            let mut cache = write(cache);
            if filter.is_literal() {
                cache.remove(filter.as_bytes());
            } else {
                cache.retain(|subject, _| !super::matches(filter.as_bytes(), subject));
            }
        }
        self.generation.fetch_add(1, Ordering::Release);
        true
    }

    /// Everything `subject` reaches; `subject` must be a literal (see
    /// [`Subject`](super::Subject)). A subject with an empty token matches
    /// nothing; a wildcard token in it is not treated specially.
    pub fn matches(&self, subject: &[u8]) -> Arc<Matches<T>> {
        if let Some(cache) = &self.cache
            && let Some(hit) = read(cache).get(subject)
        {
            return Arc::clone(hit);
        }
        if has_empty_token(subject) {
            return Arc::clone(&self.empty);
        }
        let trie = read(&self.trie);
        let mut found = Matches::default();
        trie.root.collect(subject, &mut found);
        let found = if found.is_empty() { Arc::clone(&self.empty) } else { Arc::new(found) };
        // Still under the trie's read lock, so no write can have happened
        // since the walk: the result cannot be stale when it is stored.
        if let Some(cache) = &self.cache {
            let mut cache = write(cache);
            cache.insert(Bytes::copy_from_slice(subject), Arc::clone(&found));
            if cache.len() > CACHE_MAX {
                let mut excess = cache.len() - CACHE_SWEEP_TO;
                cache.retain(|_, _| {
                    let keep = excess == 0;
                    excess = excess.saturating_sub(1);
                    keep
                });
            }
        }
        found
    }

    /// Changes on every successful insert or remove, after the change is
    /// visible to [`matches`](Self::matches). A caller caching results may
    /// keep them while this value stays the same.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The number of stored items.
    pub fn len(&self) -> usize {
        read(&self.trie).count
    }

    /// True when no item is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> fmt::Debug for Sublist<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sublist")
            .field("len", &read(&self.trie).count)
            .field("cached", &self.cache.as_ref().map(|c| read(c).len()))
            .field("generation", &self.generation.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<T> Level<T> {
    fn new() -> Self {
        Self { literals: HashMap::new(), star: None, gt: None }
    }

    fn is_empty(&self) -> bool {
        self.literals.is_empty() && self.star.is_none() && self.gt.is_none()
    }

    /// The node for `filter` below this level, created as needed.
    fn node_mut(&mut self, filter: &[u8]) -> &mut Node<T> {
        let mut level = self;
        let mut rest = filter;
        loop {
            let (token, tail) = split_token(rest);
            let node = match token {
                b"*" => level.star.get_or_insert_with(|| Box::new(Node::new())),
                b">" => level.gt.get_or_insert_with(|| Box::new(Node::new())),
                // Copied: the filter may point into a large read buffer.
                _ => level.literals.entry(Bytes::copy_from_slice(token)).or_insert_with(Node::new),
            };
            match tail {
                None => return node,
                Some(tail) => (level, rest) = (&mut node.next, tail),
            }
        }
    }
}

impl<T: PartialEq> Level<T> {
    /// Removes one `item` stored under `filter` and prunes the nodes this
    /// leaves empty. Recursion depth is the filter's token count.
    fn remove(&mut self, filter: &[u8], queue: Option<&Bytes>, item: &T) -> bool {
        let (token, tail) = split_token(filter);
        let node = match token {
            b"*" => self.star.as_deref_mut(),
            b">" => self.gt.as_deref_mut(),
            _ => self.literals.get_mut(token),
        };
        let Some(node) = node else {
            return false;
        };
        let removed = match tail {
            Some(tail) => node.next.remove(tail, queue, item),
            None => node.remove(queue, item),
        };
        if removed && node.is_empty() {
            match token {
                b"*" => self.star = None,
                b">" => self.gt = None,
                _ => {
                    self.literals.remove(token);
                }
            }
        }
        removed
    }
}

impl<T: Clone> Level<T> {
    /// Adds every node below this level that matches the literal `subject`.
    /// Iterates down literal nodes and recurses only into `*` branches.
    fn collect(&self, subject: &[u8], found: &mut Matches<T>) {
        let mut level = self;
        let mut rest = subject;
        loop {
            let (token, tail) = split_token(rest);
            if let Some(gt) = &level.gt {
                found.add_node(gt);
            }
            let literal = level.literals.get(token);
            let Some(tail) = tail else {
                if let Some(node) = literal {
                    found.add_node(node);
                }
                if let Some(star) = &level.star {
                    found.add_node(star);
                }
                return;
            };
            if let Some(star) = &level.star {
                star.next.collect(tail, found);
            }
            match literal {
                Some(node) => (level, rest) = (&node.next, tail),
                None => return,
            }
        }
    }
}

impl<T> Node<T> {
    fn new() -> Self {
        Self { next: Level::new(), plain: Vec::new(), groups: Vec::new() }
    }

    fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.groups.is_empty() && self.next.is_empty()
    }

    fn group_mut(&mut self, name: &Bytes) -> &mut QueueGroup<T> {
        let index = match self.groups.iter().position(|g| g.name == name) {
            Some(index) => index,
            None => {
                self.groups.push(QueueGroup {
                    // Copied: the name may point into a large read buffer.
                    name: Bytes::copy_from_slice(name),
                    members: Vec::new(),
                });
                self.groups.len() - 1
            }
        };
        &mut self.groups[index]
    }
}

impl<T: PartialEq> Node<T> {
    fn remove(&mut self, queue: Option<&Bytes>, item: &T) -> bool {
        let Some(name) = queue else {
            return remove_one(&mut self.plain, item);
        };
        let Some(index) = self.groups.iter().position(|g| g.name == name) else {
            return false;
        };
        let removed = remove_one(&mut self.groups[index].members, item);
        if self.groups[index].members.is_empty() {
            self.groups.swap_remove(index);
        }
        removed
    }
}

/// Removes the first item equal to `item`; order is not kept (it carries no
/// meaning for delivery).
fn remove_one<T: PartialEq>(items: &mut Vec<T>, item: &T) -> bool {
    match items.iter().position(|x| x == item) {
        Some(index) => {
            items.swap_remove(index);
            true
        }
        None => false,
    }
}

/// The first token and, if there is one, the rest after its dot.
fn split_token(subject: &[u8]) -> (&[u8], Option<&[u8]>) {
    match subject.iter().position(|&b| b == b'.') {
        Some(dot) => (&subject[..dot], Some(&subject[dot + 1..])),
        None => (subject, None),
    }
}

/// Such a subject can match nothing; checked so it is never cached either.
fn has_empty_token(subject: &[u8]) -> bool {
    subject.first().is_none_or(|&b| b == b'.')
        || subject.last() == Some(&b'.')
        || subject.windows(2).any(|w| w == b"..")
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
