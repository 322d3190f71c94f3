//! Capture files: classic libpcap (2.4, micro- or nanosecond) and pcapng, whatever the
//! extension says, read block by block through `pcap-parser`'s streaming readers.

use std::io::Read;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use pcap_parser::pcapng::Block;
use pcap_parser::{PcapBlockOwned, PcapError};

use super::frame::LinkType;

/// Why a capture file could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaptureError {
    /// The file starts with neither a pcap nor a pcapng header.
    #[error("not a pcap or pcapng file")]
    NotACapture,
    /// Reading the file failed.
    #[error("reading the capture failed")]
    Io,
    /// The file ends inside a block.
    #[error("the capture ends inside a block (truncated file?) after {blocks} blocks")]
    Truncated {
        /// Blocks read before the truncated one.
        blocks: u64,
    },
    /// A block is larger than the reader's buffer.
    #[error("a block after {blocks} blocks is larger than {limit} bytes")]
    BlockTooLarge {
        /// Blocks read before the large one.
        blocks: u64,
        /// The buffer size.
        limit: usize,
    },
    /// A block could not be parsed.
    #[error("block {blocks} is malformed: {detail}")]
    Malformed {
        /// Blocks read before the malformed one.
        blocks: u64,
        /// What the parser said.
        detail: String,
    },
    /// A packet names an interface that no Interface Description Block declared.
    #[error("packet {packets} names interface {interface}, which is not declared")]
    UnknownInterface {
        /// Packets read before this one.
        packets: u64,
        /// The interface index.
        interface: u32,
    },
}

/// One captured frame, as handed to the caller.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// Capture time.
    pub at: SystemTime,
    /// How to read the frame's first header; `None` for a link type this reader does not
    /// know (the LINKTYPE_ value is in `linktype`).
    pub link: Option<LinkType>,
    /// The LINKTYPE_ value of the frame's interface.
    pub linktype: i32,
    /// The captured bytes.
    pub data: &'a [u8],
}

/// Largest block accepted: a 256 KiB snapshot length plus block headers and options.
pub const MAX_BLOCK: usize = 512 * 1024;

#[derive(Debug, Clone, Copy)]
struct Interface {
    linktype: i32,
    /// Timestamp units per second.
    resolution: u64,
    offset: i64,
}

fn time_from(secs: i64, frac: u64, resolution: u64) -> SystemTime {
    let nanos = if resolution == 0 {
        0
    } else {
        u128::from(frac) * 1_000_000_000 / u128::from(resolution)
    };
    let base = if secs >= 0 {
        SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))
    } else {
        SystemTime::UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
    };
    base.and_then(|t| t.checked_add(Duration::from_nanos(u64::try_from(nanos).unwrap_or(0))))
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// pcapng's Section Header Block type, also its first four bytes in either byte order.
const SHB: u32 = 0x0A0D_0D0A;
/// pcapng's byte-order magic, as read little-endian.
const BYTE_ORDER_LE: u32 = 0x1A2B_3C4D;

/// What [`Guard`] found wrong with the block structure, shared with [`read_capture`].
type Refusal = Arc<OnceLock<String>>;

/// The reader `pcap-parser` reads through. It fills every buffer it is given unless the
/// input ends (`pcap-parser` reads the file header with one `read` call, which a pipe or
/// a chained reader may answer short), and it walks pcapng block headers as they pass:
/// a block whose length is under the 12 bytes every block has is never handed on (some
/// block parsers of `pcap-parser` 0.17 subtract 12 from it unchecked). The read fails
/// instead, and the refusal says why.
struct Guard<R> {
    inner: R,
    eof: bool,
    /// Bytes read from `inner` and not yet handed on.
    held: Vec<u8>,
    /// Bytes of the current block still to hand on unexamined.
    in_block: u64,
    /// `None` until the first bytes are seen; `Some(false)` for classic pcap.
    pcapng: Option<bool>,
    big_endian: bool,
    refusal: Refusal,
}

impl<R: Read> Guard<R> {
    fn new(inner: R, refusal: Refusal) -> Self {
        Self {
            inner,
            eof: false,
            held: Vec::new(),
            in_block: 0,
            pcapng: None,
            big_endian: false,
            refusal,
        }
    }

    /// Reads until `held` has `n` bytes or the input ends.
    fn fill(&mut self, n: usize) -> std::io::Result<()> {
        let mut chunk = [0u8; 8192];
        while self.held.len() < n && !self.eof {
            match self.inner.read(&mut chunk) {
                Ok(0) => self.eof = true,
                Ok(k) => self.held.extend_from_slice(&chunk[..k]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn u32_at(&self, at: usize, big_endian: bool) -> u32 {
        let b = [
            self.held[at],
            self.held[at + 1],
            self.held[at + 2],
            self.held[at + 3],
        ];
        if big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    }

    /// How many held bytes may be handed on now (0 at the end of the input).
    fn releasable(&mut self) -> std::io::Result<usize> {
        self.fill(12)?;
        if self.pcapng.is_none() {
            let ng = self.held.len() >= 4 && self.u32_at(0, false) == SHB;
            self.pcapng = Some(ng);
        }
        if self.pcapng == Some(false) {
            return Ok(self.held.len());
        }
        if self.in_block == 0 {
            if self.held.len() < 8 {
                // A header cut short by the end of the file: too short to be misread.
                return Ok(self.held.len());
            }
            if self.u32_at(0, false) == SHB {
                if self.held.len() < 12 {
                    return Ok(self.held.len());
                }
                self.big_endian = self.u32_at(8, false) != BYTE_ORDER_LE;
            }
            let len = self.u32_at(4, self.big_endian);
            if len < 12 {
                let _ = self.refusal.set(format!(
                    "a pcapng block declares a length of {len} bytes, under 12"
                ));
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "pcapng block shorter than its header",
                ));
            }
            self.in_block = u64::from(len);
        }
        let n = usize::try_from(self.in_block).unwrap_or(usize::MAX);
        Ok(n.min(self.held.len()))
    }
}

impl<R: Read> Read for Guard<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut n = 0;
        while n < buf.len() {
            let avail = self.releasable()?;
            if avail == 0 {
                break;
            }
            let k = avail.min(buf.len() - n);
            buf[n..n + k].copy_from_slice(&self.held[..k]);
            self.held.drain(..k);
            if self.pcapng == Some(true) {
                self.in_block = self.in_block.saturating_sub(k as u64);
            }
            n += k;
        }
        Ok(n)
    }
}

/// Reads every frame of a pcap or pcapng capture from `input`, in file order, handing
/// each to `on_frame`. Returns the number of frames read.
pub fn read_capture<R, F>(input: R, mut on_frame: F) -> Result<u64, CaptureError>
where
    R: Read + Send,
    F: FnMut(Frame<'_>),
{
    let refusal = Refusal::default();
    let refused = |refusal: &Refusal, blocks: u64| {
        refusal.get().map(|detail| CaptureError::Malformed {
            blocks,
            detail: detail.clone(),
        })
    };
    let mut reader = match pcap_parser::create_reader(MAX_BLOCK, Guard::new(input, refusal.clone()))
    {
        Ok(r) => r,
        Err(PcapError::ReadError) => return Err(refused(&refusal, 0).unwrap_or(CaptureError::Io)),
        Err(PcapError::Eof) | Err(PcapError::Incomplete(_)) | Err(PcapError::UnexpectedEof) => {
            return Err(CaptureError::NotACapture);
        }
        Err(_) => return Err(CaptureError::NotACapture),
    };
    let mut interfaces: Vec<Interface> = Vec::new();
    let mut legacy: Option<Interface> = None;
    let mut blocks = 0u64;
    let mut packets = 0u64;
    let mut stalled = false;
    loop {
        let consumed = match reader.next() {
            Ok((consumed, block)) => {
                blocks += 1;
                stalled = false;
                match block {
                    PcapBlockOwned::LegacyHeader(h) => {
                        legacy = Some(Interface {
                            linktype: h.network.0,
                            resolution: if h.is_nanosecond_precision() {
                                1_000_000_000
                            } else {
                                1_000_000
                            },
                            offset: i64::from(h.thiszone),
                        });
                    }
                    PcapBlockOwned::Legacy(b) => {
                        let Some(iface) = legacy else {
                            return Err(CaptureError::UnknownInterface {
                                packets,
                                interface: 0,
                            });
                        };
                        packets += 1;
                        let secs = i64::from(b.ts_sec) + iface.offset;
                        on_frame(Frame {
                            at: time_from(secs, u64::from(b.ts_usec), iface.resolution),
                            link: LinkType::from_linktype(iface.linktype),
                            linktype: iface.linktype,
                            data: b.data,
                        });
                    }
                    PcapBlockOwned::NG(Block::SectionHeader(_)) => interfaces.clear(),
                    PcapBlockOwned::NG(Block::InterfaceDescription(idb)) => {
                        interfaces.push(Interface {
                            linktype: idb.linktype.0,
                            // An invalid resolution (beyond 2^63 or 10^19 units) reads as
                            // microseconds, the format's default.
                            resolution: idb.ts_resolution().unwrap_or(1_000_000),
                            offset: idb.ts_offset(),
                        });
                    }
                    PcapBlockOwned::NG(Block::EnhancedPacket(epb)) => {
                        let Some(iface) = interfaces.get(epb.if_id as usize).copied() else {
                            return Err(CaptureError::UnknownInterface {
                                packets,
                                interface: epb.if_id,
                            });
                        };
                        packets += 1;
                        let ts = (u64::from(epb.ts_high) << 32) | u64::from(epb.ts_low);
                        let res = iface.resolution.max(1);
                        let secs = i64::try_from(ts / res)
                            .unwrap_or(i64::MAX)
                            .saturating_add(iface.offset);
                        let caplen = (epb.caplen as usize).min(epb.data.len());
                        on_frame(Frame {
                            at: time_from(secs, ts % res, res),
                            link: LinkType::from_linktype(iface.linktype),
                            linktype: iface.linktype,
                            data: &epb.data[..caplen],
                        });
                    }
                    PcapBlockOwned::NG(Block::SimplePacket(spb)) => {
                        let Some(iface) = interfaces.first().copied() else {
                            return Err(CaptureError::UnknownInterface {
                                packets,
                                interface: 0,
                            });
                        };
                        packets += 1;
                        let len = (spb.origlen as usize).min(spb.data.len());
                        // A simple packet block has no timestamp.
                        on_frame(Frame {
                            at: SystemTime::UNIX_EPOCH,
                            link: LinkType::from_linktype(iface.linktype),
                            linktype: iface.linktype,
                            data: &spb.data[..len],
                        });
                    }
                    PcapBlockOwned::NG(_) => {}
                }
                consumed
            }
            Err(PcapError::Eof) => break,
            Err(PcapError::Incomplete(_)) => {
                // No progress after a refill means the file ends inside a block.
                if stalled {
                    return Err(CaptureError::Truncated { blocks });
                }
                stalled = true;
                if reader.refill().is_err() {
                    return Err(refused(&refusal, blocks).unwrap_or(CaptureError::Io));
                }
                continue;
            }
            Err(PcapError::UnexpectedEof) => return Err(CaptureError::Truncated { blocks }),
            Err(PcapError::BufferTooSmall) => {
                return Err(CaptureError::BlockTooLarge {
                    blocks,
                    limit: MAX_BLOCK,
                });
            }
            Err(PcapError::ReadError) => {
                return Err(refused(&refusal, blocks).unwrap_or(CaptureError::Io));
            }
            Err(e) => {
                return Err(CaptureError::Malformed {
                    blocks,
                    detail: format!("{e:?}").chars().take(120).collect(),
                });
            }
        };
        reader.consume(consumed);
    }
    Ok(packets)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A classic pcap file, microsecond timestamps, little-endian, raw IPv4 link type.
    pub(crate) fn pcap_file(linktype: u32, frames: &[(u32, u32, &[u8])]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        f.extend_from_slice(&2u16.to_le_bytes());
        f.extend_from_slice(&4u16.to_le_bytes());
        f.extend_from_slice(&0i32.to_le_bytes());
        f.extend_from_slice(&0u32.to_le_bytes());
        f.extend_from_slice(&65535u32.to_le_bytes());
        f.extend_from_slice(&linktype.to_le_bytes());
        for (sec, usec, data) in frames {
            f.extend_from_slice(&sec.to_le_bytes());
            f.extend_from_slice(&usec.to_le_bytes());
            let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
            f.extend_from_slice(&len.to_le_bytes());
            f.extend_from_slice(&len.to_le_bytes());
            f.extend_from_slice(data);
        }
        f
    }

    #[test]
    fn classic_pcap_frames_and_times() {
        let file = pcap_file(101, &[(10, 500_000, b"abc"), (11, 0, b"")]);
        let mut seen = Vec::new();
        let n = read_capture(&file[..], |f| {
            seen.push((f.at, f.link, f.data.to_vec()));
        })
        .unwrap();
        assert_eq!(n, 2);
        assert_eq!(
            seen[0].0,
            SystemTime::UNIX_EPOCH + Duration::from_millis(10_500)
        );
        assert_eq!(seen[0].1, Some(LinkType::RawIp));
        assert_eq!(seen[0].2, b"abc");
    }

    /// A pcapng section header, little-endian, then an interface (Ethernet).
    fn pcapng_head() -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&SHB.to_le_bytes());
        f.extend_from_slice(&28u32.to_le_bytes());
        f.extend_from_slice(&BYTE_ORDER_LE.to_le_bytes());
        f.extend_from_slice(&1u16.to_le_bytes());
        f.extend_from_slice(&0u16.to_le_bytes());
        f.extend_from_slice(&(-1i64).to_le_bytes());
        f.extend_from_slice(&28u32.to_le_bytes());
        f.extend_from_slice(&1u32.to_le_bytes());
        f.extend_from_slice(&20u32.to_le_bytes());
        f.extend_from_slice(&1u16.to_le_bytes());
        f.extend_from_slice(&0u16.to_le_bytes());
        f.extend_from_slice(&65535u32.to_le_bytes());
        f.extend_from_slice(&20u32.to_le_bytes());
        f
    }

    #[test]
    fn a_pcapng_block_shorter_than_its_header_is_refused_not_parsed() {
        // Found by the `capture` fuzz target: a Process Information Block (type 0x80000001)
        // declaring 8 bytes made `pcap-parser` subtract 12 from 8.
        for len in [0u32, 4, 8, 11] {
            let mut f = pcapng_head();
            f.extend_from_slice(&0x8000_0001u32.to_le_bytes());
            f.extend_from_slice(&len.to_le_bytes());
            f.extend_from_slice(&[0u8; 16]);
            let r = read_capture(&f[..], |_| {});
            assert!(
                matches!(&r, Err(CaptureError::Malformed { detail, .. }) if detail.contains(&len.to_string())),
                "{len}: {r:?}"
            );
        }
        // A well-formed pcapng with no packets reads.
        assert_eq!(read_capture(&pcapng_head()[..], |_| {}).ok(), Some(0));
        // The same in a big-endian section: the length is read in the section's order.
        let mut be = Vec::new();
        be.extend_from_slice(&SHB.to_be_bytes());
        be.extend_from_slice(&28u32.to_be_bytes());
        be.extend_from_slice(&BYTE_ORDER_LE.to_be_bytes());
        be.extend_from_slice(&[0, 1, 0, 0]);
        be.extend_from_slice(&(-1i64).to_be_bytes());
        be.extend_from_slice(&28u32.to_be_bytes());
        assert_eq!(read_capture(&be[..], |_| {}).ok(), Some(0));
        be.extend_from_slice(&0x8000_0001u32.to_be_bytes());
        be.extend_from_slice(&8u32.to_be_bytes());
        be.extend_from_slice(&[0u8; 16]);
        assert!(matches!(
            read_capture(&be[..], |_| {}),
            Err(CaptureError::Malformed { .. })
        ));
    }

    #[test]
    fn garbage_and_truncation_are_errors() {
        assert!(matches!(
            read_capture(&b"hello world, not a capture at all"[..], |_| {}),
            Err(CaptureError::NotACapture)
        ));
        assert!(matches!(
            read_capture(&b""[..], |_| {}),
            Err(CaptureError::NotACapture)
        ));
        let file = pcap_file(1, &[(1, 0, b"0123456789")]);
        let cut = &file[..file.len() - 3];
        assert!(matches!(
            read_capture(cut, |_| {}),
            Err(CaptureError::Truncated { .. })
        ));
    }
}
