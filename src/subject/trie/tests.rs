use std::collections::BTreeMap;
use std::sync::Barrier;
use std::sync::atomic::AtomicBool;
use std::thread;

use proptest::prelude::*;

use super::*;

fn filter(s: &str) -> Filter {
    Filter::new(Bytes::copy_from_slice(s.as_bytes())).unwrap()
}

fn queue(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// A result in comparable form: sorted plain items, queue name -> sorted members.
type Canon = (Vec<u32>, BTreeMap<Vec<u8>, Vec<u32>>);

fn canon(m: &Matches<u32>) -> Canon {
    let mut plain = m.plain.clone();
    plain.sort_unstable();
    let mut groups = BTreeMap::new();
    for g in &m.groups {
        assert!(!g.members.is_empty(), "empty group {:?}", g.name);
        let mut members = g.members.clone();
        members.sort_unstable();
        assert!(groups.insert(g.name.to_vec(), members).is_none(), "group {:?} twice", g.name);
    }
    (plain, groups)
}

fn got(list: &Sublist<u32>, subject: &str) -> Canon {
    canon(&list.matches(subject.as_bytes()))
}

/// One live subscription, as the oracle sees it.
#[derive(Debug, Clone)]
struct Sub {
    filter: String,
    queue: Option<&'static str>,
    id: u32,
}

/// What `subject` should reach, by the naive matcher over the live set.
fn oracle(live: &[Sub], subject: &str) -> Canon {
    let mut want = Matches::default();
    for sub in live {
        if crate::subject::matches(sub.filter.as_bytes(), subject.as_bytes()) {
            want.push(sub.queue.map(queue).as_ref(), sub.id);
        }
    }
    canon(&want)
}

fn plain(ids: &[u32]) -> Canon {
    (ids.to_vec(), BTreeMap::new())
}

/// Every literal subject of 1..=max tokens over a, b, c.
fn all_subjects(max: usize) -> Vec<String> {
    let mut out: Vec<String> = vec![String::new()];
    let mut all = Vec::new();
    for _ in 0..max {
        out = out
            .iter()
            .flat_map(|p| ["a", "b", "c"].map(|t| if p.is_empty() { t.to_owned() } else { format!("{p}.{t}") }))
            .collect();
        all.extend(out.iter().cloned());
    }
    all
}

fn both() -> [Sublist<u32>; 2] {
    [Sublist::with_cache(true), Sublist::with_cache(false)]
}

#[test]
fn literal() {
    for list in both() {
        list.insert(&filter("foo.bar"), None, 1);
        assert_eq!(got(&list, "foo.bar"), plain(&[1]));
        assert!(list.matches(b"foo").is_empty());
        assert!(list.matches(b"foo.bar.baz").is_empty());
        assert!(list.matches(b"foo.baz").is_empty());
    }
}

#[test]
fn star_matches_one_token() {
    for list in both() {
        list.insert(&filter("foo.*"), None, 1);
        list.insert(&filter("*.bar"), None, 2);
        list.insert(&filter("*"), None, 3);
        assert_eq!(got(&list, "foo.bar"), plain(&[1, 2]));
        assert_eq!(got(&list, "foo.baz"), plain(&[1]));
        assert_eq!(got(&list, "foo"), plain(&[3]));
        assert_eq!(got(&list, "foo.bar.baz"), plain(&[]));
    }
}

#[test]
fn gt_matches_one_or_more_tokens() {
    for list in both() {
        list.insert(&filter("foo.>"), None, 1);
        list.insert(&filter(">"), None, 2);
        assert_eq!(got(&list, "foo"), plain(&[2]));
        assert_eq!(got(&list, "foo.bar"), plain(&[1, 2]));
        assert_eq!(got(&list, "foo.bar.baz"), plain(&[1, 2]));
        assert_eq!(got(&list, "bar.foo"), plain(&[2]));
    }
}

#[test]
fn mixed_wildcards() {
    for list in both() {
        let filters = ["a.b.c", "a.*.c", "a.>", "*.b.*", ">", "a.*", "*.*.c", "a.b.>", "a.b.c.>", "a*.b.c"];
        for (id, f) in (0..).zip(filters) {
            list.insert(&filter(f), None, id);
        }
        assert_eq!(got(&list, "a.b.c"), plain(&[0, 1, 2, 3, 4, 6, 7]));
        assert_eq!(got(&list, "a.x.c"), plain(&[1, 2, 4, 6]));
        assert_eq!(got(&list, "a.b"), plain(&[2, 4, 5]));
        assert_eq!(got(&list, "a*.b.c"), plain(&[3, 4, 6, 9]));
    }
}

#[test]
fn queue_groups_merge_by_name_across_nodes() {
    for list in both() {
        let (workers, audit) = (queue("workers"), queue("audit"));
        list.insert(&filter("orders.*"), Some(&workers), 1);
        list.insert(&filter("orders.>"), Some(&workers), 2);
        list.insert(&filter("orders.new"), Some(&workers), 3);
        list.insert(&filter("orders.new"), Some(&audit), 4);
        list.insert(&filter("orders.new"), None, 5);
        list.insert(&filter("orders.old"), Some(&workers), 6);
        let want = (vec![5], BTreeMap::from([(b"audit".to_vec(), vec![4]), (b"workers".to_vec(), vec![1, 2, 3])]));
        assert_eq!(got(&list, "orders.new"), want);
        assert_eq!(list.len(), 6);
    }
}

#[test]
fn remove_needs_same_filter_queue_and_item() {
    for list in both() {
        let q = queue("q");
        list.insert(&filter("a.*"), None, 1);
        list.insert(&filter("a.*"), Some(&q), 2);
        assert!(!list.remove(&filter("a.>"), None, &1));
        assert!(!list.remove(&filter("a.*"), Some(&q), &1));
        assert!(!list.remove(&filter("a.*"), None, &2));
        assert!(!list.remove(&filter("a.*"), Some(&queue("other")), &2));
        assert_eq!(list.len(), 2);
        assert!(list.remove(&filter("a.*"), None, &1));
        assert!(!list.remove(&filter("a.*"), None, &1));
        assert_eq!(got(&list, "a.b").0, Vec::<u32>::new());
        assert!(list.remove(&filter("a.*"), Some(&q), &2));
        assert!(list.is_empty());
        assert!(list.matches(b"a.b").is_empty());
    }
}

#[test]
fn duplicates_are_stored_and_removed_one_at_a_time() {
    for list in both() {
        list.insert(&filter("a"), None, 7);
        list.insert(&filter("a"), None, 7);
        assert_eq!(got(&list, "a"), plain(&[7, 7]));
        assert!(list.remove(&filter("a"), None, &7));
        assert_eq!(got(&list, "a"), plain(&[7]));
    }
}

fn cached(list: &Sublist<u32>, subject: &str) -> Option<Canon> {
    let cache = read(list.cache.as_ref().unwrap());
    cache.get(subject.as_bytes()).map(|m| canon(m))
}

#[test]
fn cache_follows_inserts_and_removes() {
    let list = Sublist::new();
    assert!(list.matches(b"a.b").is_empty());
    assert_eq!(cached(&list, "a.b"), Some(plain(&[])));

    list.insert(&filter("a.*"), None, 1);
    assert_eq!(cached(&list, "a.b"), Some(plain(&[1])), "updated in place");
    list.insert(&filter("a.b"), None, 2);
    list.insert(&filter("x.y"), None, 3);
    assert_eq!(got(&list, "a.b"), plain(&[1, 2]));

    assert!(list.remove(&filter("a.*"), None, &1));
    assert_eq!(cached(&list, "a.b"), None, "dropped");
    assert_eq!(got(&list, "a.b"), plain(&[2]));
    assert!(list.remove(&filter("a.b"), None, &2));
    assert_eq!(got(&list, "a.b"), plain(&[]));
    assert_eq!(got(&list, "x.y"), plain(&[3]));
}

#[test]
fn held_results_are_not_changed_by_later_inserts() {
    let list = Sublist::new();
    list.insert(&filter("a"), None, 1);
    let before = list.matches(b"a");
    list.insert(&filter(">"), None, 2);
    assert_eq!(canon(&before), plain(&[1]));
    assert_eq!(got(&list, "a"), plain(&[1, 2]));
}

#[test]
fn no_interest_shares_one_empty_result() {
    for list in both() {
        list.insert(&filter("a.b"), None, 1);
        let (x, y) = (list.matches(b"x"), list.matches(b"a.c"));
        assert!(Arc::ptr_eq(&x, &y));
        assert!(Arc::ptr_eq(&x, &list.empty));
    }
}

#[test]
fn subjects_with_empty_tokens_match_nothing_and_are_not_cached() {
    let list = Sublist::new();
    list.insert(&filter(">"), None, 1);
    for bad in ["", ".", "a..b", ".a", "a."] {
        assert!(list.matches(bad.as_bytes()).is_empty(), "{bad:?}");
        assert_eq!(cached(&list, bad), None);
    }
}

#[test]
fn cache_stays_bounded() {
    let list = Sublist::new();
    list.insert(&filter("s.*"), None, 1);
    for i in 0..5000 {
        assert_eq!(got(&list, &format!("s.{i}")), plain(&[1]));
        assert!(read(list.cache.as_ref().unwrap()).len() <= CACHE_MAX);
    }
}

#[test]
fn generation_changes_on_every_write() {
    let list = Sublist::new();
    let g0 = list.generation();
    list.insert(&filter("a"), None, 1);
    let g1 = list.generation();
    assert_ne!(g0, g1);
    assert!(!list.remove(&filter("a"), None, &2));
    assert_eq!(list.generation(), g1);
    list.matches(b"a");
    assert_eq!(list.generation(), g1);
    assert!(list.remove(&filter("a"), None, &1));
    assert_ne!(list.generation(), g1);
}

#[test]
fn removing_everything_prunes_every_node() {
    let list = Sublist::new();
    let q = queue("q");
    let filters = ["a.b.c", "a.b.d", "a.*.c", "a.>", ">", "*", "x.*.*.>"];
    for (id, f) in (0..).zip(filters) {
        list.insert(&filter(f), None, id);
        list.insert(&filter(f), Some(&q), id);
    }
    assert!(list.remove(&filter("a.b.c"), None, &0));
    assert!(list.remove(&filter("a.b.c"), Some(&q), &0));
    {
        let trie = read(&list.trie);
        let b = &trie.root.literals[&b"a"[..]].next.literals[&b"b"[..]];
        assert_eq!(b.next.literals.keys().collect::<Vec<_>>(), [&Bytes::from_static(b"d")]);
    }
    for (id, f) in (0..).zip(filters).skip(1) {
        assert!(list.remove(&filter(f), None, &id));
        assert!(list.remove(&filter(f), Some(&q), &id));
    }
    assert!(list.is_empty());
    assert!(read(&list.trie).root.is_empty());
}

/// Rounds of: readers match every subject over and over while the writer
/// removes (dropping cached entries, so readers re-walk the trie) and
/// inserts; then, all quiet, every answer must equal the oracle. Catches a
/// result walked before a write but cached after it.
#[test]
fn concurrent_matches_never_cache_a_stale_result() {
    const READERS: usize = 2;
    let list = Sublist::new();
    let subjects = all_subjects(3);
    let filters = ["a.*", "a.>", "*.b", ">", "a.b", "*.*.c", "b", "*"];
    let (start, end) = (Barrier::new(READERS + 1), Barrier::new(READERS + 1));
    let (writing, done) = (AtomicBool::new(false), AtomicBool::new(false));
    let mut live = vec![Sub { filter: "a".to_owned(), queue: None, id: 0 }];
    list.insert(&filter("a"), None, 0);
    // Checked after the scope: a panic inside it would strand the readers.
    let mut stale = None;
    thread::scope(|s| {
        for _ in 0..READERS {
            s.spawn(|| {
                loop {
                    start.wait();
                    if done.load(Ordering::Relaxed) {
                        return;
                    }
                    while writing.load(Ordering::Relaxed) {
                        for subject in &subjects {
                            list.matches(subject.as_bytes());
                        }
                    }
                    end.wait();
                }
            });
        }
        let mut id = 0;
        'rounds: for round in 0..200 {
            writing.store(true, Ordering::Relaxed);
            start.wait();
            for _ in 0..20 {
                id += 1;
                let old = live.swap_remove(0);
                list.remove(&filter(&old.filter), None, &old.id);
                let f = filters[id as usize % filters.len()];
                list.insert(&filter(f), None, id);
                live.push(Sub { filter: f.to_owned(), queue: None, id });
            }
            writing.store(false, Ordering::Relaxed);
            end.wait();
            for subject in &subjects {
                if got(&list, subject) != oracle(&live, subject) {
                    stale = Some((round, subject));
                    break 'rounds;
                }
            }
        }
        done.store(true, Ordering::Relaxed);
        start.wait();
    });
    assert_eq!(stale, None, "stale cached result (round, subject)");
    assert_eq!(list.len(), live.len());
}

#[derive(Debug, Clone)]
enum Op {
    Insert(String, Option<&'static str>),
    /// Remove the live subscription at this index (modulo the live count).
    Remove(usize),
    Match(String),
}

fn filter_strategy() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(&["a", "b", "c", "*", ">"][..]), 1..=4).prop_map(|mut tokens| {
        if let Some(gt) = tokens.iter().position(|t| *t == ">") {
            tokens.truncate(gt + 1);
        }
        tokens.join(".")
    })
}

fn subject_strategy() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(&["a", "b", "c"][..]), 1..=5).prop_map(|t| t.join("."))
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (filter_strategy(), prop::sample::select(&[None, Some("q1"), Some("q2")][..]))
            .prop_map(|(f, q)| Op::Insert(f, q)),
        2 => any::<usize>().prop_map(Op::Remove),
        3 => subject_strategy().prop_map(Op::Match),
    ]
}

proptest! {
    #[test]
    fn trie_agrees_with_naive_matcher(ops in prop::collection::vec(op_strategy(), 1..80)) {
        let lists = both();
        let mut live: Vec<Sub> = Vec::new();
        let mut next_id = 0;
        for op in ops {
            match op {
                Op::Insert(f, q) => {
                    for list in &lists {
                        list.insert(&filter(&f), q.map(queue).as_ref(), next_id);
                    }
                    live.push(Sub { filter: f, queue: q, id: next_id });
                    next_id += 1;
                }
                Op::Remove(_) if live.is_empty() => {
                    for list in &lists {
                        prop_assert!(!list.remove(&filter("a"), None, &0));
                    }
                }
                Op::Remove(i) => {
                    let sub = live.swap_remove(i % live.len());
                    for list in &lists {
                        prop_assert!(list.remove(&filter(&sub.filter), sub.queue.map(queue).as_ref(), &sub.id));
                    }
                }
                Op::Match(s) => {
                    let want = oracle(&live, &s);
                    for list in &lists {
                        prop_assert_eq!(got(list, &s), want.clone(), "{}", s);
                    }
                }
            }
            for list in &lists {
                prop_assert_eq!(list.len(), live.len());
            }
        }
        for s in all_subjects(4) {
            let want = oracle(&live, &s);
            for list in &lists {
                prop_assert_eq!(got(list, &s), want.clone(), "{}", s);
            }
        }
    }
}

proptest! {
    /// The fast path of `Filter::matches` answers as the token-by-token matcher does.
    #[test]
    fn filter_matches_agrees_with_the_naive_matcher(f in filter_strategy(), s in subject_strategy()) {
        prop_assert_eq!(filter(&f).matches(s.as_bytes()), crate::subject::matches(f.as_bytes(), s.as_bytes()));
    }
}
