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

/// One tenant's retained messages, by topic.
type Retained = HashMap<Arc<str>, Arc<Message>>;

/// Subscriptions and retained messages, one topic space per tenant: a filter of one
/// tenant never matches a topic of another, whatever its wildcards.
#[derive(Debug, Default)]
pub(crate) struct Router {
    trie: RwLock<HashMap<Box<str>, Node>>,
    retained: RwLock<HashMap<Box<str>, Retained>>,
    retained_count: std::sync::atomic::AtomicUsize,
    /// [`Message::size`] of every retained message together.
    retained_bytes: std::sync::atomic::AtomicUsize,
}

// === impl Router ===

impl Router {
    /// Adds or replaces a session's subscription (in the session's tenant). Returns
    /// whether it is new.
    pub fn subscribe(&self, filter: &TopicFilter, sub: SubRef) -> bool {
        let mut tenants = self.trie.write();
        let mut node = tenants
            .entry(sub.session.identity.tenant.as_str().into())
            .or_default();
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
    pub fn unsubscribe(&self, tenant: &str, filter: &TopicFilter, session_uid: u64) -> bool {
        let mut tenants = self.trie.write();
        let Some(root) = tenants.get_mut(tenant) else {
            return false;
        };
        let levels: Vec<&str> = filter.match_filter().split('/').collect();
        let removed = remove(root, &levels, filter.shared().map(|(g, _)| g), session_uid);
        if root.is_empty() {
            tenants.remove(tenant);
        }
        removed
    }

    /// Every subscription of the tenant whose filter matches `topic`: all plain
    /// subscriptions and one member of each shared group.
    pub fn targets(&self, tenant: &str, topic: &str, out: &mut Vec<SubRef>) {
        let tenants = self.trie.read();
        let Some(root) = tenants.get(tenant) else {
            return;
        };
        let levels: Vec<&str> = topic.split('/').collect();
        let dollar = topic.starts_with('$');
        walk(root, &levels, 0, dollar, out);
    }

    /// Stores (or, for an empty payload, clears) the retained message of a topic.
    /// Returns false when the store is full and the message was not kept.
    /// Refused (false) when it would take the store past `max` messages or `max_bytes`.
    pub fn retain(&self, msg: Arc<Message>, max: usize, max_bytes: usize) -> bool {
        let mut all = self.retained.write();
        let tenant = all.entry(msg.tenant.as_ref().into()).or_default();
        if msg.payload.is_empty() {
            if let Some(old) = tenant.remove(&msg.topic) {
                self.retained_count.fetch_sub(1, Ordering::Relaxed);
                self.retained_bytes.fetch_sub(old.size(), Ordering::Relaxed);
            }
            return true;
        }
        let replaced = tenant.get(&msg.topic).map(|m| m.size());
        if replaced.is_none() && self.retained_count.load(Ordering::Relaxed) >= max {
            return false;
        }
        // The store is changed only under the write lock, so this is exact.
        let bytes = self
            .retained_bytes
            .load(Ordering::Relaxed)
            .saturating_sub(replaced.unwrap_or(0));
        if bytes.saturating_add(msg.size()) > max_bytes {
            return false;
        }
        self.retained_bytes
            .store(bytes + msg.size(), Ordering::Relaxed);
        if tenant.insert(msg.topic.clone(), msg).is_none() {
            self.retained_count.fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    /// Bytes of the retained messages held.
    pub fn retained_bytes(&self) -> usize {
        self.retained_bytes.load(Ordering::Relaxed)
    }

    /// The tenant's retained messages whose topic matches the (unshared) filter.
    pub fn retained_matching(&self, tenant: &str, filter: &str, now: Instant) -> Vec<Arc<Message>> {
        self.retained
            .read()
            .get(tenant)
            .map(|t| {
                t.values()
                    .filter(|m| !m.expired(now) && gatehouse_mqtt::topic_matches(filter, &m.topic))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn retained_count(&self) -> usize {
        self.retained_count.load(Ordering::Relaxed)
    }

    pub fn retained_all(&self) -> Vec<Arc<Message>> {
        self.retained
            .read()
            .values()
            .flat_map(|t| t.values().cloned())
            .collect()
    }

    /// Drops expired retained messages.
    pub fn expire_retained(&self, now: Instant) {
        let mut all = self.retained.write();
        let mut left = 0;
        let mut freed = 0;
        for t in all.values_mut() {
            t.retain(|_, m| {
                let keep = !m.expired(now);
                if !keep {
                    freed += m.size();
                }
                keep
            });
            left += t.len();
        }
        all.retain(|_, t| !t.is_empty());
        self.retained_count.store(left, Ordering::Relaxed);
        self.retained_bytes.fetch_sub(freed, Ordering::Relaxed);
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
        session_in("t", uid)
    }

    fn session_in(tenant: &str, uid: u64) -> Arc<Session> {
        let id = Identity {
            tenant: tenant.parse().unwrap(),
            device: format!("d{uid}").parse().unwrap(),
            source: IdentitySource::CertificateSanUri,
        };
        Arc::new(Session::new(
            uid,
            format!("d{uid}").into(),
            Arc::new(id),
            ProtocolVersion::V5,
            Arc::new(crate::budget::MemoryBudget::new(
                usize::MAX / 2,
                prometheus_client::metrics::gauge::Gauge::default(),
            )),
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
        router.targets("t", topic, &mut out);
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
        assert!(r.unsubscribe("t", &f("#"), 3));
        assert!(!r.unsubscribe("t", &f("#"), 3));
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
        assert!(r.unsubscribe("t", &f, 1));
        assert!(r.unsubscribe("t", &f, 2));
        assert!(r.trie.read().is_empty(), "empty nodes are pruned");
    }

    #[test]
    fn tenants_have_separate_topic_spaces() {
        let r = Router::default();
        let (a, b) = (session_in("acme", 1), session_in("globex", 2));
        let f = TopicFilter::new("#").unwrap();
        r.subscribe(&f, sub(&a));
        r.subscribe(&f, sub(&b));
        let mut out = Vec::new();
        r.targets("acme", "devices/d1/t", &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].session.uid, 1);
        out.clear();
        r.targets("initech", "devices/d1/t", &mut out);
        assert!(out.is_empty());
    }

    fn retained(topic: &str, payload: usize, expires: Option<Instant>) -> Arc<Message> {
        Arc::new(Message {
            tenant: "t".into(),
            topic: topic.into(),
            payload: bytes::Bytes::from(vec![1u8; payload]),
            qos: gatehouse_mqtt::QoS::AtMostOnce,
            retain: true,
            properties: gatehouse_mqtt::Properties::default(),
            expires_at: expires,
            origin: 0,
        })
    }

    #[test]
    fn the_retained_store_is_bounded_in_bytes() {
        let r = Router::default();
        let one = retained("a/1", 1000, None).size();
        let max = 3 * one;
        for i in 0..3 {
            assert!(r.retain(retained(&format!("a/{i}"), 1000, None), 100, max));
        }
        assert_eq!(r.retained_bytes(), 3 * one);
        assert!(!r.retain(retained("a/3", 1000, None), 100, max), "a fourth");
        assert!(
            !r.retain(retained("a/0", 1001, None), 100, max),
            "a larger one"
        );
        assert!(
            r.retain(retained("a/0", 999, None), 100, max),
            "a smaller one"
        );
        assert!(r.retain(retained("a/1", 0, None), 100, max), "a clear");
        assert_eq!(r.retained_count(), 2);
        assert_eq!(r.retained_bytes(), 2 * one - 1);
        let now = Instant::now();
        assert!(r.retain(retained("a/9", 10, Some(now)), 100, max));
        r.expire_retained(now);
        assert_eq!(r.retained_bytes(), 2 * one - 1);
        assert_eq!(r.retained_count(), 2);
    }
}
