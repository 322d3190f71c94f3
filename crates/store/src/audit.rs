//! The audit chain: records, their canonical encoding and hash, and the verifier.
//!
//! Pure: nothing here touches a database. A backend stores [`AuditRecord`]s and hands them
//! to [`verify_records`]; `gatehouse audit verify` hands the lines of an export to
//! [`verify_jsonl`]. The format is described in `docs/store.md`.

use std::collections::HashMap;
use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::hex;

/// Domain-separation tag that starts every hashed encoding.
pub const HASH_DOMAIN: &[u8] = b"gatehouse-audit-v1\n";

/// The `prev_hash` of the first record.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// What happened, as the caller describes it; the store adds `seq` and the hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// When (stored as whole unix seconds).
    pub at: OffsetDateTime,
    /// Who: `operator:alice`, `device:acme/pump-1`, `system`.
    pub actor: String,
    /// What: `enroll`, `renew`, `refuse_enrollment`, `revoke`, `verdict`, ...
    pub action: String,
    /// On what: a device ref, a certificate serial, a token id, ...
    pub subject: String,
    /// `ok`, `refused`, `failed`.
    pub outcome: String,
    /// Why, for people.
    pub reason: String,
    /// Anything else, as JSON.
    pub detail: serde_json::Value,
    /// The change this record explains, written to the change feed in the same
    /// transaction; not part of the record or its hash.
    pub change: Option<crate::Change>,
}

impl AuditEntry {
    /// An entry with outcome `ok`, no reason and detail `null`.
    pub fn new(
        at: OffsetDateTime,
        actor: impl Into<String>,
        action: impl Into<String>,
        subject: impl Into<String>,
    ) -> Self {
        Self {
            at,
            actor: actor.into(),
            action: action.into(),
            subject: subject.into(),
            outcome: "ok".to_owned(),
            reason: String::new(),
            detail: serde_json::Value::Null,
            change: None,
        }
    }

    /// Asks the running server to act on `change`: it is written to the change feed with
    /// this record.
    pub fn change(mut self, change: crate::Change) -> Self {
        self.change = Some(change);
        self
    }

    /// Sets the outcome.
    pub fn outcome(mut self, outcome: impl Into<String>) -> Self {
        self.outcome = outcome.into();
        self
    }

    /// Sets the reason.
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = reason.into();
        self
    }

    /// Sets the detail.
    pub fn detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
    }

    /// The record that follows `prev` (or starts the chain when `prev` is `None`).
    pub fn seal(&self, prev: Option<(u64, [u8; 32])>) -> AuditRecord {
        let (seq, prev_hash) = match prev {
            Some((seq, hash)) => (seq + 1, hash),
            None => (1, GENESIS_HASH),
        };
        let mut r = AuditRecord {
            seq,
            at: self.at.unix_timestamp(),
            actor: self.actor.clone(),
            action: self.action.clone(),
            subject: self.subject.clone(),
            outcome: self.outcome.clone(),
            reason: self.reason.clone(),
            detail: self.detail.to_string(),
            prev_hash: hex::encode(&prev_hash),
            hash: String::new(),
        };
        r.hash = hex::encode(&r.compute_hash());
        r
    }
}

/// A stored audit record, exactly as it is hashed and exported (one JSON line each).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// Position in the chain, from 1, no gaps.
    pub seq: u64,
    /// Unix seconds.
    pub at: i64,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// On what.
    pub subject: String,
    /// Outcome.
    pub outcome: String,
    /// Why.
    pub reason: String,
    /// JSON text, hashed byte for byte as stored.
    pub detail: String,
    /// Lowercase hex SHA-256 of the previous record (64 zeros for the first).
    pub prev_hash: String,
    /// Lowercase hex SHA-256 of this record's canonical encoding.
    pub hash: String,
}

// === impl AuditRecord ===

impl AuditRecord {
    /// The canonical encoding: [`HASH_DOMAIN`], `seq` (u64 BE), `at` (i64 BE), then
    /// actor, action, subject, outcome, reason, detail each as u32 BE byte length + UTF-8,
    /// then `prev_hash` as 32 raw bytes (or its text length-prefixed if it is not hex).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(128 + self.detail.len());
        b.extend_from_slice(HASH_DOMAIN);
        b.extend_from_slice(&self.seq.to_be_bytes());
        b.extend_from_slice(&self.at.to_be_bytes());
        for field in [
            &self.actor,
            &self.action,
            &self.subject,
            &self.outcome,
            &self.reason,
            &self.detail,
        ] {
            put_str(&mut b, field);
        }
        match hex::decode32(&self.prev_hash) {
            Some(h) => b.extend_from_slice(&h),
            None => put_str(&mut b, &self.prev_hash),
        }
        b
    }

    /// SHA-256 of the canonical encoding.
    pub fn compute_hash(&self) -> [u8; 32] {
        Sha256::digest(self.canonical_bytes()).into()
    }

    /// When, as a date.
    pub fn at_time(&self) -> Option<OffsetDateTime> {
        OffsetDateTime::from_unix_timestamp(self.at).ok()
    }

    fn hash_matches(&self) -> bool {
        hex::decode32(&self.hash) == Some(self.compute_hash())
    }
}

/// How far from its stored seq a renumbered record's original seq is searched.
const RENUMBER_WINDOW: u64 = 4096;

/// Whether `r` is intact apart from its seq: its hash matches under another seq.
fn renumbered(r: &AuditRecord, pred: Option<&AuditRecord>) -> bool {
    let mut orig = r.clone();
    let near = pred.map_or(1, |p| p.seq.saturating_add(1));
    let lo = r.seq.saturating_sub(RENUMBER_WINDOW);
    let hi = r.seq.saturating_add(RENUMBER_WINDOW);
    std::iter::once(near).chain(lo..=hi).any(|s| {
        orig.seq = s;
        s != r.seq && orig.hash_matches()
    })
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    // Fields are bounded far below 4 GiB by the backends; saturate rather than wrap.
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    b.extend_from_slice(&len.to_be_bytes());
    b.extend_from_slice(s.as_bytes());
}

/// A chain that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// How many records.
    pub records: u64,
    /// The last record's seq (0 for an empty log).
    pub head_seq: u64,
    /// The last record's hash (the genesis hash for an empty log). Keep it somewhere else:
    /// records removed from the end are only found by comparing it.
    pub head_hash: String,
}

/// How the first bad record differs from an intact chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Tamper {
    /// Its content does not match its hash: a field was edited.
    Edited,
    /// Records before it are missing (a seq gap, or its predecessor's hash is nowhere).
    Deleted,
    /// It does not belong to the chain: no intact record links to it, or it links to a
    /// record further back than its predecessor.
    Inserted,
    /// It is intact but out of place: it links to a record that comes after it.
    Reordered,
}

impl std::fmt::Display for Tamper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Edited => "edited",
            Self::Deleted => "deleted before",
            Self::Inserted => "inserted",
            Self::Reordered => "reordered",
        })
    }
}

/// Why a chain did not verify.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The chain is broken at record `seq`.
    #[error("audit record {seq}: {kind}")]
    Tampered {
        /// The seq of the first bad record, as stored.
        seq: u64,
        /// What was done to it.
        kind: Tamper,
    },
    /// A line of an export is not an audit record.
    #[error("line {line} is not an audit record: {reason}")]
    Malformed {
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        reason: String,
    },
    /// Reading the export failed.
    #[error("reading the audit export failed")]
    Io(#[from] std::io::Error),
    /// Reading the log from the store failed.
    #[error(transparent)]
    Audit(#[from] crate::AuditError),
}

/// Verifies records in stored order (ascending seq) and names the first bad one.
pub fn verify_records(records: &[AuditRecord]) -> Result<VerifyReport, VerifyError> {
    // Stored hash → position, to tell a missing predecessor from a moved one.
    let mut position: HashMap<&str, usize> = HashMap::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        position.entry(r.hash.as_str()).or_insert(i);
    }
    let genesis = hex::encode(&GENESIS_HASH);
    let mut prev_hash = genesis.clone();
    for (i, r) in records.iter().enumerate() {
        let expected_seq = i as u64 + 1;
        let content_ok = r.hash_matches();
        let link_ok = r.prev_hash == prev_hash;
        if content_ok && link_ok && r.seq == expected_seq {
            prev_hash.clone_from(&r.hash);
            continue;
        }
        let fail = |kind| Err(VerifyError::Tampered { seq: r.seq, kind });
        // Where does this record say its predecessor is?
        let linked = if r.prev_hash == genesis {
            Some(None)
        } else {
            position.get(r.prev_hash.as_str()).map(|p| Some(*p))
        };
        if !content_ok && !renumbered(r, linked.flatten().map(|p| &records[p])) {
            return fail(Tamper::Edited);
        }
        let expected_prev = i.checked_sub(1);
        return match linked {
            None if content_ok && r.seq == expected_seq => fail(Tamper::Inserted),
            None => fail(Tamper::Deleted),
            Some(Some(p)) if p >= i => fail(Tamper::Reordered),
            Some(l) if l == expected_prev => {
                // Linked to the right predecessor, but the seq is off.
                if !content_ok {
                    fail(Tamper::Edited)
                } else if r.seq < expected_seq {
                    fail(Tamper::Inserted)
                } else {
                    fail(Tamper::Deleted)
                }
            }
            Some(l) => {
                // It skips over the records between: they were inserted. Name the first.
                let first = l.map_or(0, |p| p + 1);
                Err(VerifyError::Tampered {
                    seq: records[first].seq,
                    kind: Tamper::Inserted,
                })
            }
        };
    }
    Ok(VerifyReport {
        records: records.len() as u64,
        head_seq: records.last().map_or(0, |r| r.seq),
        head_hash: prev_hash,
    })
}

/// Writes records as JSON lines, one record per line, in order.
pub fn write_jsonl<'a>(
    out: &mut dyn Write,
    records: impl IntoIterator<Item = &'a AuditRecord>,
) -> std::io::Result<u64> {
    let mut n = 0;
    for r in records {
        serde_json::to_writer(&mut *out, r)?;
        out.write_all(b"\n")?;
        n += 1;
    }
    out.flush()?;
    Ok(n)
}

/// Reads an export written by [`write_jsonl`] (blank lines are skipped).
pub fn read_jsonl(input: impl BufRead) -> Result<Vec<AuditRecord>, VerifyError> {
    let mut records = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let r = serde_json::from_str(&line).map_err(|e| VerifyError::Malformed {
            line: i as u64 + 1,
            reason: e.to_string(),
        })?;
        records.push(r);
    }
    Ok(records)
}

/// Verifies an exported audit file: the `gatehouse audit verify FILE` check.
pub fn verify_jsonl(input: impl BufRead) -> Result<VerifyReport, VerifyError> {
    verify_records(&read_jsonl(input)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: usize) -> Vec<AuditRecord> {
        let mut out: Vec<AuditRecord> = Vec::new();
        for i in 0..n {
            let e = AuditEntry::new(
                OffsetDateTime::UNIX_EPOCH,
                "system",
                "test",
                format!("s{i}"),
            );
            let prev = out
                .last()
                .map(|r| (r.seq, hex::decode32(&r.hash).unwrap_or_default()));
            out.push(e.seal(prev));
        }
        out
    }

    fn kind(r: Result<VerifyReport, VerifyError>) -> (u64, Tamper) {
        match r {
            Err(VerifyError::Tampered { seq, kind }) => (seq, kind),
            other => panic!("expected tamper, got {other:?}"),
        }
    }

    #[test]
    fn intact_chain_verifies() {
        let c = chain(5);
        let rep = verify_records(&c).expect("verifies");
        assert_eq!(rep.records, 5);
        assert_eq!(rep.head_seq, 5);
        assert_eq!(rep.head_hash, c[4].hash);
        assert_eq!(verify_records(&[]).expect("empty").head_seq, 0);
    }

    #[test]
    fn edited_field_is_edited() {
        let mut c = chain(5);
        c[2].reason = "nothing to see".into();
        assert_eq!(kind(verify_records(&c)), (3, Tamper::Edited));
    }

    #[test]
    fn deleted_without_renumbering_is_deleted() {
        let mut c = chain(5);
        c.remove(2);
        assert_eq!(kind(verify_records(&c)), (4, Tamper::Deleted));
    }

    #[test]
    fn deleted_first_record_is_deleted() {
        let mut c = chain(3);
        c.remove(0);
        assert_eq!(kind(verify_records(&c)), (2, Tamper::Deleted));
    }

    #[test]
    fn deleted_and_renumbered_is_deleted() {
        let mut c = chain(5);
        c.remove(2);
        for r in &mut c[2..] {
            r.seq -= 1;
        }
        assert_eq!(kind(verify_records(&c)), (3, Tamper::Deleted));
    }

    #[test]
    fn swapped_records_are_reordered() {
        let mut c = chain(5);
        c.swap(1, 2);
        c[1].seq = 2;
        c[2].seq = 3;
        assert_eq!(kind(verify_records(&c)), (2, Tamper::Reordered));
    }

    #[test]
    fn forged_record_in_the_middle_is_inserted() {
        let mut c = chain(5);
        let prev = (c[1].seq, hex::decode32(&c[1].hash).unwrap_or_default());
        let forged = AuditEntry::new(OffsetDateTime::UNIX_EPOCH, "operator:mallory", "x", "y")
            .seal(Some(prev));
        c.insert(2, forged);
        for r in &mut c[3..] {
            r.seq += 1;
        }
        assert_eq!(kind(verify_records(&c)), (3, Tamper::Inserted));
    }

    #[test]
    fn appended_record_with_a_bogus_link_is_inserted() {
        let mut c = chain(3);
        let mut forged =
            AuditEntry::new(OffsetDateTime::UNIX_EPOCH, "x", "y", "z").seal(Some((3, [7; 32])));
        forged.seq = 4;
        c.push(forged);
        assert_eq!(kind(verify_records(&c)), (4, Tamper::Inserted));
    }

    #[test]
    fn jsonl_round_trips_and_verifies() {
        let c = chain(4);
        let mut buf = Vec::new();
        assert_eq!(write_jsonl(&mut buf, &c).expect("write"), 4);
        assert_eq!(read_jsonl(&buf[..]).expect("read"), c);
        assert!(verify_jsonl(&buf[..]).is_ok());
        assert!(matches!(
            verify_jsonl(&b"{not json\n"[..]),
            Err(VerifyError::Malformed { line: 1, .. })
        ));
    }
}
