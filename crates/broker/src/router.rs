//! The router: which sessions a topic reaches, and the retained messages.
//!
//! Subscriptions live in a trie of topic levels (`+` and `#` are children like any other
//! level). Routing takes a read lock, collects targets, and releases the lock before any
//! delivery is queued.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use gatehouse_mqtt::SubscriptionOptions;
use gatehouse_types::TopicFilter;
use parking_lot::RwLock;

use crate::session::{Message, Session};

#[derive(Debug, Clone)]
pub(crate) struct SubRef {
    pub session: Arc<Session>,
    pub options: SubscriptionOptions,
    pub id: Option<u32>,
}

#[derive(Debug)]
struct SharedGroup {
    name: Box<str>,
    members: Vec<SubRef>,
    next: AtomicUsize,
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    subs: Vec<SubRef>,
    shared: Vec<SharedGroup>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subs.is_empty() && self.shared.is_empty()
    }

    fn collect(&self, out: &mut Vec<SubRef>) {
        out.extend(self.subs.iter().cloned());
        for g in &self.shared {
            if let Some(s) = pick(g) {
                out.push(s);
            }
        }
    }
}

/// Round robin over the group's members, preferring one with a live connection.
fn pick(g: &SharedGroup) -> Option<SubRef> {
    let n = g.members.len();
    if n == 0 {
        return None;
    }
    let start = g.next.fetch_add(1, Ordering::Relaxed);
    (0..n)
        .map(|k| &g.members[(start + k) % n])
        .find(|m| m.session.is_online())
        .or_else(|| g.members.get(start % n))
        .cloned()
}

/// Subscriptions and retained messages.
#[derive(Debug, Default)]
pub(crate) struct Router {
    trie: RwLock<Node>,
    retained: RwLock<HashMap<Arc<str>, Arc<Message>>>,
}

// === impl Router ===

impl Router {
    /// Adds or replaces a session's subscription. Returns whether it is new.
    pub fn subscribe(&self, filter: &TopicFilter, sub: SubRef) -> bool {
        let mut root = self.trie.write();
        let mut node = &mut *root;
        for level in filter.match_filter().split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        let uid = sub.session.uid;
        let list = match filter.shared() {
            Some((group, _)) => {
                let pos = node.shared.iter().position(|g| &*g.name == group);
                let idx = match pos {
                    Some(i) => i,
                    None => {
                        node.shared.push(SharedGroup {
                            name: group.into(),
                            members: Vec::new(),
                            next: AtomicUsize::new(0),
                        });
                        node.shared.len() - 1
                    }
                };
                &mut node.shared[idx].members
            }
            None => &mut node.subs,
        };
        match list.iter_mut().find(|s| s.session.uid == uid) {
            Some(existing) => {
                *existing = sub;
                false
            }
            None => {
                list.push(sub);
                true
            }
        }
    }

    /// Removes a session's subscription. Returns whether it existed.
    pub fn unsubscribe(&self, filter: &TopicFilter, session_uid: u64) -> bool {
        let mut root = self.trie.write();
        let levels: Vec<&str> = filter.match_filter().split('/').collect();
        remove(
            &mut root,
            &levels,
            filter.shared().map(|(g, _)| g),
            session_uid,
        )
    }

    /// Every subscription whose filter matches `topic`: all plain subscriptions and one
    /// member of each shared group.
    pub fn targets(&self, topic: &str, out: &mut Vec<SubRef>) {
        let root = self.trie.read();
        let levels: Vec<&str> = topic.split('/').collect();
        let dollar = topic.starts_with('$');
        walk(&root, &levels, 0, dollar, out);
    }

    /// Stores (or, for an empty payload, clears) the retained message of a topic.
    /// Returns false when the store is full and the message was not kept.
    pub fn retain(&self, msg: Arc<Message>, max: usize) -> bool {
        let mut r = self.retained.write();
        if msg.payload.is_empty() {
            r.remove(&msg.topic);
            return true;
        }
        if r.len() >= max && !r.contains_key(&msg.topic) {
            return false;
        }
        r.insert(msg.topic.clone(), msg);
        true
    }

    /// Retained messages whose topic matches the (unshared) filter.
    pub fn retained_matching(&self, filter: &str, now: Instant) -> Vec<Arc<Message>> {
        self.retained
            .read()
            .values()
            .filter(|m| !m.expired(now) && gatehouse_mqtt::topic_matches(filter, &m.topic))
            .cloned()
            .collect()
    }

    pub fn retained_count(&self) -> usize {
        self.retained.read().len()
    }

    pub fn retained_all(&self) -> Vec<Arc<Message>> {
        self.retained.read().values().cloned().collect()
    }

    /// Drops expired retained messages.
    pub fn expire_retained(&self, now: Instant) {
        self.retained.write().retain(|_, m| !m.expired(now));
    }
}

fn walk(node: &Node, levels: &[&str], i: usize, dollar: bool, out: &mut Vec<SubRef>) {
    let wild_ok = !(i == 0 && dollar);
    if wild_ok && let Some(hash) = node.children.get("#") {
        hash.collect(out);
    }
    let Some(level) = levels.get(i) else {
        node.collect(out);
        return;
    };
    if let Some(child) = node.children.get(*level) {
        walk(child, levels, i + 1, dollar, out);
    }
    if wild_ok && let Some(plus) = node.children.get("+") {
        walk(plus, levels, i + 1, dollar, out);
    }
}

fn remove(node: &mut Node, levels: &[&str], group: Option<&str>, uid: u64) -> bool {
    let Some((first, rest)) = levels.split_first() else {
        return match group {
            Some(g) => {
                let Some(gi) = node.shared.iter().position(|x| &*x.name == g) else {
                    return false;
                };
                let members = &mut node.shared[gi].members;
                let before = members.len();
                members.retain(|s| s.session.uid != uid);
                let removed = members.len() != before;
                if members.is_empty() {
                    node.shared.remove(gi);
                }
                removed
            }
            None => {
                let before = node.subs.len();
                node.subs.retain(|s| s.session.uid != uid);
                node.subs.len() != before
            }
        };
    };
    let Some(child) = node.children.get_mut(*first) else {
        return false;
    };
    let removed = remove(child, rest, group, uid);
    if child.is_empty() {
        node.children.remove(*first);
    }
    removed
}

#[cfg(test)]
mod tests {
    use gatehouse_mqtt::ProtocolVersion;
    use gatehouse_types::{Identity, IdentitySource};

    use super::*;

    fn session(uid: u64) -> Arc<Session> {
        let id = Identity {
            tenant: "t".parse().unwrap(),
            device: format!("d{uid}").parse().unwrap(),
            source: IdentitySource::CertificateSanUri,
        };
        Arc::new(Session::new(
            uid,
            format!("d{uid}").into(),
            Arc::new(id),
            ProtocolVersion::V5,
        ))
    }

    fn sub(s: &Arc<Session>) -> SubRef {
        SubRef {
            session: s.clone(),
            options: SubscriptionOptions::default(),
            id: None,
        }
    }

    fn uids(router: &Router, topic: &str) -> Vec<u64> {
        let mut out = Vec::new();
        router.targets(topic, &mut out);
        let mut v: Vec<u64> = out.iter().map(|s| s.session.uid).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn wildcards_route_as_the_spec_says() {
        let r = Router::default();
        let (a, b, c, d) = (session(1), session(2), session(3), session(4));
        let f = |s: &str| TopicFilter::new(s).unwrap();
        assert!(r.subscribe(&f("sport/#"), sub(&a)));
        assert!(r.subscribe(&f("sport/+/player"), sub(&b)));
        assert!(r.subscribe(&f("#"), sub(&c)));
        assert!(r.subscribe(&f("$SYS/#"), sub(&d)));
        assert!(!r.subscribe(&f("#"), sub(&c)), "resubscribe replaces");
        assert_eq!(uids(&r, "sport"), vec![1, 3]);
        assert_eq!(uids(&r, "sport/tennis/player"), vec![1, 2, 3]);
        assert_eq!(uids(&r, "$SYS/load"), vec![4]);
        assert!(r.unsubscribe(&f("#"), 3));
        assert!(!r.unsubscribe(&f("#"), 3));
        assert_eq!(uids(&r, "sport"), vec![1]);
    }

    #[test]
    fn shared_groups_deliver_to_one_member() {
        let r = Router::default();
        let (a, b) = (session(1), session(2));
        let f = TopicFilter::new("$share/g/x/+").unwrap();
        r.subscribe(&f, sub(&a));
        r.subscribe(&f, sub(&b));
        let mut seen = Vec::new();
        for _ in 0..4 {
            let got = uids(&r, "x/1");
            assert_eq!(got.len(), 1);
            seen.push(got[0]);
        }
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen, vec![1, 2], "round robin reaches both");
        assert!(r.unsubscribe(&f, 1));
        assert!(r.unsubscribe(&f, 2));
        assert!(r.trie.read().is_empty(), "empty nodes are pruned");
    }
}
