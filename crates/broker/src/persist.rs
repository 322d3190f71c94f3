//! Saving and loading persistent sessions and retained messages.
//!
//! The state is written whole, atomically (temporary file, fsync, rename), periodically
//! and at shutdown; a crash loses at most the changes since the last save. Sessions with
//! a zero expiry are not saved: they would end at the restart anyway.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gatehouse_mqtt::{Properties, ProtocolVersion, QoS, RetainHandling, SubscriptionOptions};
use gatehouse_types::{Identity, TopicFilter};
use serde::{Deserialize, Serialize};

use crate::broker::Inner;
use crate::router::SubRef;
use crate::session::{Delivery, Message, Session, Subscription};

const MAGIC: &[u8; 8] = b"GHBRKR01";

/// Why the state could not be saved or loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PersistError {
    /// Reading or writing the file failed.
    #[error("broker state file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a state file of this version, or is damaged.
    #[error("broker state file {path} is damaged or of another version: {why}")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedMessage {
    tenant: String,
    topic: String,
    payload: Vec<u8>,
    qos: u8,
    retain: bool,
    expiry_secs: Option<u64>,
    payload_format: Option<u8>,
    content_type: Option<String>,
    response_topic: Option<String>,
    correlation_data: Option<Vec<u8>>,
    user_properties: Vec<(String, String)>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedDelivery {
    msg: SavedMessage,
    qos: u8,
    retain: bool,
    sub_ids: Vec<u32>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedSubscription {
    filter: String,
    qos: u8,
    no_local: bool,
    retain_as_published: bool,
    retain_handling: u8,
    id: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedSession {
    client_id: String,
    identity: Identity,
    v5: bool,
    expiry_secs: u64,
    subscriptions: Vec<SavedSubscription>,
    queue: Vec<SavedDelivery>,
    incoming_qos2: Vec<u16>,
}

/// Everything saved.
#[derive(Debug, Serialize, Deserialize, Default)]
pub(crate) struct Snapshot {
    sessions: Vec<SavedSession>,
    retained: Vec<SavedMessage>,
}

fn save_msg(m: &Message, now: Instant) -> SavedMessage {
    let p = &m.properties;
    SavedMessage {
        tenant: m.tenant.to_string(),
        topic: m.topic.to_string(),
        payload: m.payload.to_vec(),
        qos: m.qos as u8,
        retain: m.retain,
        expiry_secs: m
            .expires_at
            .map(|t| t.saturating_duration_since(now).as_secs()),
        payload_format: p.payload_format_indicator,
        content_type: p.content_type.clone(),
        response_topic: p.response_topic.clone(),
        correlation_data: p.correlation_data.as_ref().map(|b| b.to_vec()),
        user_properties: p.user_properties.clone(),
    }
}

fn load_msg(m: SavedMessage, now: Instant) -> Message {
    Message {
        tenant: m.tenant.into(),
        topic: m.topic.into(),
        payload: Bytes::from(m.payload),
        qos: QoS::from_u8(m.qos).unwrap_or(QoS::AtMostOnce),
        retain: m.retain,
        properties: Properties {
            payload_format_indicator: m.payload_format,
            content_type: m.content_type,
            response_topic: m.response_topic,
            correlation_data: m.correlation_data.map(Bytes::from),
            user_properties: m.user_properties,
            ..Properties::default()
        },
        expires_at: m.expiry_secs.map(|s| now + Duration::from_secs(s)),
        origin: 0,
    }
}

/// Takes a consistent-enough copy of the state (each session under its own lock).
pub(crate) fn snapshot(inner: &Inner) -> Snapshot {
    let now = Instant::now();
    let mut snap = Snapshot::default();
    for s in inner.sessions_snapshot() {
        let st = s.state.lock();
        if st.expiry.is_zero() || st.ended {
            continue;
        }
        let left = match st.offline_since {
            Some(t) => st.expiry.saturating_sub(now.duration_since(t)),
            None => st.expiry,
        };
        let queue = st
            .queue
            .inflight()
            .iter()
            .map(|i| &i.delivery)
            .chain(st.queue.pending().iter())
            .filter(|d| d.qos != QoS::AtMostOnce)
            .map(|d| SavedDelivery {
                msg: save_msg(&d.msg, now),
                qos: d.qos as u8,
                retain: d.retain,
                sub_ids: d.sub_ids.clone(),
            })
            .collect();
        snap.sessions.push(SavedSession {
            client_id: s.client_id.to_string(),
            identity: (*s.identity).clone(),
            v5: st.protocol == ProtocolVersion::V5,
            expiry_secs: left.as_secs(),
            subscriptions: st
                .subscriptions
                .values()
                .map(|sub| SavedSubscription {
                    filter: sub.filter.as_str().to_owned(),
                    qos: sub.options.qos as u8,
                    no_local: sub.options.no_local,
                    retain_as_published: sub.options.retain_as_published,
                    retain_handling: sub.options.retain_handling as u8,
                    id: sub.id,
                })
                .collect(),
            queue,
            incoming_qos2: st.incoming_qos2.iter().copied().collect(),
        });
    }
    snap.retained = inner
        .router
        .retained_all()
        .iter()
        .filter(|m| !m.expired(now))
        .map(|m| save_msg(m, now))
        .collect();
    snap
}

/// Writes the snapshot atomically.
pub(crate) fn write(path: &Path, snap: &Snapshot) -> Result<(), PersistError> {
    let io = |source| PersistError::Io {
        path: path.display().to_string(),
        source,
    };
    let body = postcard::to_stdvec(snap).map_err(|e| PersistError::Corrupt {
        path: path.display().to_string(),
        why: e.to_string(),
    })?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(MAGIC).map_err(io)?;
        f.write_all(&body).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}

/// Loads saved state into a new broker. A missing file is an empty state.
pub(crate) fn load(inner: &Inner, path: &Path) -> Result<(), PersistError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(PersistError::Io {
                path: path.display().to_string(),
                source,
            });
        }
    };
    let corrupt = |why: String| PersistError::Corrupt {
        path: path.display().to_string(),
        why,
    };
    let body = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or_else(|| corrupt("missing header".into()))?;
    let snap: Snapshot = postcard::from_bytes(body).map_err(|e| corrupt(e.to_string()))?;
    let now = Instant::now();
    for m in snap.retained {
        inner.retain(Arc::new(load_msg(m, now)));
    }
    for saved in snap.sessions {
        let protocol = if saved.v5 {
            ProtocolVersion::V5
        } else {
            ProtocolVersion::V311
        };
        let session = Arc::new(Session::new(
            inner.new_uid(),
            saved.client_id.into(),
            Arc::new(saved.identity),
            protocol,
            inner.budget.clone(),
        ));
        let mut subs = Vec::new();
        {
            let mut st = session.state.lock();
            st.expiry = Duration::from_secs(saved.expiry_secs);
            st.offline_since = Some(now);
            st.incoming_qos2 = saved.incoming_qos2.into_iter().collect();
            for d in saved.queue {
                st.queue.restore(Delivery {
                    msg: Arc::new(load_msg(d.msg, now)),
                    qos: QoS::from_u8(d.qos).unwrap_or(QoS::AtLeastOnce),
                    retain: d.retain,
                    sub_ids: d.sub_ids,
                });
            }
            for sub in saved.subscriptions {
                let Ok(filter) = TopicFilter::new(sub.filter) else {
                    continue;
                };
                let options = SubscriptionOptions {
                    qos: QoS::from_u8(sub.qos).unwrap_or(QoS::AtMostOnce),
                    no_local: sub.no_local,
                    retain_as_published: sub.retain_as_published,
                    retain_handling: match sub.retain_handling {
                        1 => RetainHandling::SendIfNew,
                        2 => RetainHandling::DoNotSend,
                        _ => RetainHandling::SendAtSubscribe,
                    },
                };
                st.subscriptions.insert(
                    filter.as_str().to_owned(),
                    Subscription {
                        filter: filter.clone(),
                        options,
                        id: sub.id,
                    },
                );
                subs.push((filter, options, sub.id));
            }
        }
        for (filter, options, id) in subs {
            inner.router.subscribe(
                &filter,
                SubRef {
                    session: session.clone(),
                    options,
                    id,
                },
            );
        }
        inner.restore_session(session);
    }
    Ok(())
}
