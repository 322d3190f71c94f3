//! One direction of a TCP connection, put back in sequence order.
//!
//! Segments arrive as captured: in order, out of order, retransmitted, overlapping, or
//! never (lost before the capture point). The reassembler delivers each stream byte once,
//! in order. Bytes ahead of the next expected one wait in a buffer of bounded size; when
//! that buffer is full, or when the connection ends with a hole, the hole is declared a
//! [`Chunk::Gap`] and delivery resumes at the first waiting byte (a resync), so memory
//! stays bounded whatever the capture holds.

use std::collections::BTreeMap;

/// What comes out of the reassembler, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    /// The next bytes of the stream.
    Data(Vec<u8>),
    /// This many stream bytes were never captured; what follows comes after them.
    Gap(u64),
}

/// Counters of what the reassembler saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReassemblyStats {
    /// Bytes delivered in order.
    pub delivered: u64,
    /// Bytes dropped because they had been delivered already (retransmits, overlaps).
    pub duplicate: u64,
    /// Bytes declared missing.
    pub missing: u64,
    /// Number of gaps declared.
    pub gaps: u64,
}

/// Reassembles one direction of a TCP connection.
#[derive(Debug)]
pub struct Reassembler {
    /// Sequence number of the next byte to deliver, once known.
    next_seq: Option<u32>,
    /// Out-of-order bytes, keyed by their distance ahead of `next_seq`'s stream offset.
    /// Keys are stream offsets (bytes since the first delivered byte), so they stay valid
    /// as `next_seq` moves and wraps.
    pending: BTreeMap<u64, Vec<u8>>,
    pending_bytes: usize,
    /// Stream offset of `next_seq`.
    offset: u64,
    limit: usize,
    stats: ReassemblyStats,
}

/// Segments further ahead than this are not of this connection (or a sequence number was
/// corrupted): they are dropped rather than buffered.
const MAX_AHEAD: u32 = 1 << 30;

impl Reassembler {
    /// A reassembler that holds at most `limit` out-of-order bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            next_seq: None,
            pending: BTreeMap::new(),
            pending_bytes: 0,
            offset: 0,
            limit,
            stats: ReassemblyStats::default(),
        }
    }

    /// What it has seen so far.
    pub fn stats(&self) -> ReassemblyStats {
        self.stats
    }

    /// Out-of-order bytes held now.
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// A SYN with sequence number `seq`: the stream starts at `seq + 1`. Ignored once the
    /// stream position is known (a retransmitted SYN).
    pub fn syn(&mut self, seq: u32) {
        if self.next_seq.is_none() {
            self.next_seq = Some(seq.wrapping_add(1));
        }
    }

    /// A segment whose first payload byte has sequence number `seq`. Whatever becomes
    /// deliverable is appended to `out`.
    pub fn segment(&mut self, seq: u32, data: &[u8], out: &mut Vec<Chunk>) {
        if data.is_empty() {
            return;
        }
        // Without a SYN the stream starts at the first byte seen.
        let next = *self.next_seq.get_or_insert(seq);
        let ahead = seq.wrapping_sub(next);
        let mut data = data;
        if ahead == 0 || ahead > u32::MAX - MAX_AHEAD {
            // At or behind the next expected byte: drop what was delivered already.
            let behind = next.wrapping_sub(seq) as usize;
            if behind >= data.len() {
                self.stats.duplicate += data.len() as u64;
                return;
            }
            self.stats.duplicate += behind as u64;
            data = &data[behind..];
            self.deliver(data, out);
            self.drain(out);
        } else if ahead < MAX_AHEAD {
            self.hold(self.offset + u64::from(ahead), data, out);
        } else {
            self.stats.duplicate += data.len() as u64;
        }
    }

    /// The connection ended: everything still waiting is delivered, each hole before it
    /// declared a gap.
    pub fn finish(&mut self, out: &mut Vec<Chunk>) {
        while !self.pending.is_empty() {
            self.skip_to_first_pending(out);
            self.drain(out);
        }
    }

    fn deliver(&mut self, data: &[u8], out: &mut Vec<Chunk>) {
        let n = data.len();
        self.stats.delivered += n as u64;
        self.offset += n as u64;
        self.next_seq = self
            .next_seq
            .map(|s| s.wrapping_add(u32::try_from(n).unwrap_or(u32::MAX)));
        match out.last_mut() {
            Some(Chunk::Data(v)) => v.extend_from_slice(data),
            _ => out.push(Chunk::Data(data.to_vec())),
        }
    }

    /// Delivers waiting segments that now start at or before the stream position.
    fn drain(&mut self, out: &mut Vec<Chunk>) {
        while let Some(entry) = self.pending.first_entry() {
            let start = *entry.key();
            if start > self.offset {
                break;
            }
            let data = entry.remove();
            self.pending_bytes -= data.len();
            let behind = usize::try_from(self.offset - start).unwrap_or(usize::MAX);
            if behind >= data.len() {
                self.stats.duplicate += data.len() as u64;
                continue;
            }
            self.stats.duplicate += behind as u64;
            self.deliver(&data[behind..], out);
        }
    }

    fn hold(&mut self, start: u64, data: &[u8], out: &mut Vec<Chunk>) {
        // A segment larger than the whole buffer: deliver what waits before it, declare
        // the hole before it, and deliver it.
        if data.len() > self.limit {
            while self
                .pending
                .first_key_value()
                .is_some_and(|(&k, _)| k < start)
            {
                self.skip_to_first_pending(out);
                self.drain(out);
            }
            if start > self.offset {
                self.gap(start - self.offset, out);
            }
            let behind = usize::try_from(self.offset - start).unwrap_or(usize::MAX);
            if behind >= data.len() {
                self.stats.duplicate += data.len() as u64;
                return;
            }
            self.stats.duplicate += behind as u64;
            self.deliver(&data[behind..], out);
            self.drain(out);
            return;
        }
        // Keep the longer of two segments starting at the same byte.
        if let Some(existing) = self.pending.get(&start) {
            if existing.len() >= data.len() {
                self.stats.duplicate += data.len() as u64;
                return;
            }
            self.stats.duplicate += existing.len() as u64;
            self.pending_bytes -= existing.len();
        }
        self.pending_bytes += data.len();
        self.pending.insert(start, data.to_vec());
        while self.pending_bytes > self.limit {
            self.skip_to_first_pending(out);
            self.drain(out);
        }
    }

    fn skip_to_first_pending(&mut self, out: &mut Vec<Chunk>) {
        if let Some((&start, _)) = self.pending.first_key_value()
            && start > self.offset
        {
            self.gap(start - self.offset, out);
        }
    }

    fn gap(&mut self, len: u64, out: &mut Vec<Chunk>) {
        if len == 0 {
            return;
        }
        self.stats.gaps += 1;
        self.stats.missing += len;
        self.offset += len;
        // Sequence numbers are modulo 2^32: the low 32 bits of the skip move them.
        self.next_seq = self.next_seq.map(|s| s.wrapping_add(len as u32));
        out.push(Chunk::Gap(len));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn data_of(chunks: &[Chunk]) -> Vec<u8> {
        let mut v = Vec::new();
        for c in chunks {
            if let Chunk::Data(d) = c {
                v.extend_from_slice(d);
            }
        }
        v
    }

    #[test]
    fn in_order_out_of_order_and_retransmitted_segments() {
        let mut r = Reassembler::new(1024);
        let mut out = Vec::new();
        r.syn(99);
        r.segment(100, b"abc", &mut out);
        r.segment(106, b"ghi", &mut out); // ahead
        r.segment(100, b"abc", &mut out); // retransmit
        r.segment(102, b"cdef", &mut out); // overlaps, fills the hole
        r.finish(&mut out);
        assert_eq!(data_of(&out), b"abcdefghi");
        assert_eq!(r.stats().gaps, 0);
        assert_eq!(r.stats().delivered, 9);
        assert_eq!(r.stats().duplicate, 4);
    }

    #[test]
    fn a_hole_is_a_gap_when_the_buffer_fills_or_the_stream_ends() {
        let mut r = Reassembler::new(4);
        let mut out = Vec::new();
        r.segment(0, b"ab", &mut out);
        r.segment(5, b"fg", &mut out);
        assert_eq!(out, vec![Chunk::Data(b"ab".to_vec())]);
        r.segment(7, b"hij", &mut out); // 5 bytes waiting > 4: resync
        assert_eq!(
            out,
            vec![
                Chunk::Data(b"ab".to_vec()),
                Chunk::Gap(3),
                Chunk::Data(b"fghij".to_vec())
            ]
        );
        let mut out = Vec::new();
        r.segment(20, b"z", &mut out);
        r.finish(&mut out);
        assert_eq!(out, vec![Chunk::Gap(10), Chunk::Data(b"z".to_vec())]);
        assert_eq!(r.stats().missing, 13);
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut r = Reassembler::new(64);
        let mut out = Vec::new();
        r.syn(u32::MAX - 2);
        r.segment(u32::MAX - 1, b"ab", &mut out);
        r.segment(2, b"ef", &mut out);
        r.segment(0, b"cd", &mut out);
        assert_eq!(data_of(&out), b"abcdef");
    }

    #[test]
    fn a_segment_larger_than_the_buffer_still_arrives() {
        let mut r = Reassembler::new(2);
        let mut out = Vec::new();
        r.segment(0, b"a", &mut out);
        r.segment(3, b"defgh", &mut out);
        assert_eq!(
            out,
            vec![
                Chunk::Data(b"a".to_vec()),
                Chunk::Gap(2),
                Chunk::Data(b"defgh".to_vec())
            ]
        );
        assert!(r.pending_bytes() <= 2);
    }

    /// Cuts `stream` into segments at `cuts`, then sends them in the order `order` gives,
    /// with the segments listed in `dups` sent twice.
    fn segments(stream: &[u8], cuts: &[usize]) -> Vec<(usize, usize)> {
        let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        bounds.push(0);
        bounds.push(stream.len());
        bounds.sort_unstable();
        bounds.dedup();
        bounds.windows(2).map(|w| (w[0], w[1])).collect()
    }

    proptest! {
        #[test]
        fn any_order_of_overlapping_segments_gives_the_stream_back(
            stream in proptest::collection::vec(any::<u8>(), 1..400),
            cuts in proptest::collection::vec(any::<usize>(), 0..20),
            shuffle in proptest::collection::vec(any::<u16>(), 0..40),
            isn in any::<u32>(),
            extend in proptest::collection::vec(0usize..8, 0..40),
        ) {
            let segs = segments(&stream, &cuts);
            let mut order: Vec<usize> = (0..segs.len()).collect();
            for (i, s) in shuffle.iter().enumerate() {
                let n = order.len();
                order.swap(i % n, usize::from(*s) % n);
            }
            // Every segment once in shuffled order, some stretched to overlap the next,
            // then a few retransmits.
            // Room for every segment, overlaps and retransmits included: no gap.
            let mut r = Reassembler::new(4 * stream.len() + 1024);
            let mut out = Vec::new();
            r.syn(isn);
            for (k, &i) in order.iter().chain(order.iter().take(3)).enumerate() {
                let (a, b) = segs[i];
                let b = (b + extend.get(k).copied().unwrap_or(0)).min(stream.len());
                let seq = isn.wrapping_add(1).wrapping_add(a as u32);
                r.segment(seq, &stream[a..b], &mut out);
            }
            r.finish(&mut out);
            prop_assert_eq!(data_of(&out), stream.clone());
            prop_assert_eq!(r.stats().gaps, 0);
            prop_assert_eq!(r.pending_bytes(), 0);
        }

        #[test]
        fn lost_segments_become_gaps_of_their_exact_length(
            stream in proptest::collection::vec(any::<u8>(), 1..400),
            cuts in proptest::collection::vec(any::<usize>(), 0..20),
            lost in proptest::collection::vec(any::<bool>(), 0..21),
            limit in 1usize..64,
        ) {
            let segs = segments(&stream, &cuts);
            let mut r = Reassembler::new(limit);
            let mut out = Vec::new();
            r.syn(0);
            let mut expected = Vec::new();
            for (i, &(a, b)) in segs.iter().enumerate() {
                if lost.get(i).copied().unwrap_or(false) {
                    continue;
                }
                r.segment(1 + a as u32, &stream[a..b], &mut out);
                expected.extend_from_slice(&stream[a..b]);
            }
            r.finish(&mut out);
            // Data is delivered exactly once and in order; data plus gaps cover the stream
            // up to the last byte received.
            prop_assert_eq!(data_of(&out), expected.clone());
            let covered: u64 = out.iter().map(|c| match c {
                Chunk::Data(d) => d.len() as u64,
                Chunk::Gap(n) => *n,
            }).sum();
            let last = segs.iter().enumerate()
                .filter(|(i, _)| !lost.get(*i).copied().unwrap_or(false))
                .map(|(_, s)| s.1).max().unwrap_or(0);
            prop_assert_eq!(covered, last as u64);
            prop_assert!(r.pending_bytes() <= limit);
        }

        #[test]
        fn arbitrary_segments_never_panic_and_stay_bounded(
            segs in proptest::collection::vec(
                (any::<u32>(), proptest::collection::vec(any::<u8>(), 0..64)), 0..50),
            limit in 0usize..128,
        ) {
            let mut r = Reassembler::new(limit);
            let mut out = Vec::new();
            for (seq, data) in &segs {
                r.segment(*seq, data, &mut out);
                prop_assert!(r.pending_bytes() <= limit);
            }
            r.finish(&mut out);
            prop_assert_eq!(r.pending_bytes(), 0);
        }
    }
}
