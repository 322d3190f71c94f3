//! Link, network and transport headers: a captured frame in, a TCP segment out.
//!
//! Hand-written over the fixed header layouts, every read bounds-checked: a frame is
//! untrusted bytes, and the only outcomes are a segment, "not TCP over IP" (skipped and
//! counted) or a [`FrameError`] saying which header was short or inconsistent.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Link-layer header types this reader understands (the tcpdump.org LINKTYPE_ values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkType {
    /// 0, BSD loopback: a 4-byte address family in the capturing host's byte order.
    Null,
    /// 1, Ethernet II, with up to four 802.1Q / 802.1ad tags.
    Ethernet,
    /// 101, 228, 229: raw IPv4 or IPv6, no link header.
    RawIp,
    /// 113, Linux cooked capture v1 (16-byte header).
    LinuxSll,
    /// 276, Linux cooked capture v2 (20-byte header).
    LinuxSll2,
}

impl LinkType {
    /// The link type of a capture's LINKTYPE_ value, when it is one this reader handles.
    pub fn from_linktype(value: i32) -> Option<Self> {
        match value {
            0 => Some(Self::Null),
            1 => Some(Self::Ethernet),
            101 | 228 | 229 => Some(Self::RawIp),
            113 => Some(Self::LinuxSll),
            276 => Some(Self::LinuxSll2),
            _ => None,
        }
    }
}

/// TCP header flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    /// FIN: the sender has finished sending.
    pub const FIN: u8 = 0x01;
    /// SYN: synchronize sequence numbers.
    pub const SYN: u8 = 0x02;
    /// RST: reset the connection.
    pub const RST: u8 = 0x04;
    /// ACK: the acknowledgement field is significant.
    pub const ACK: u8 = 0x10;

    /// Whether every bit of `mask` is set.
    pub fn has(self, mask: u8) -> bool {
        self.0 & mask == mask
    }
}

/// One TCP segment taken out of a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpSegment<'a> {
    /// Sender.
    pub src: SocketAddr,
    /// Receiver.
    pub dst: SocketAddr,
    /// Sequence number of the first payload byte (of the SYN, when SYN is set).
    pub seq: u32,
    /// Flags.
    pub flags: TcpFlags,
    /// Payload, with any link-layer padding removed.
    pub payload: &'a [u8],
}

/// Why a frame could not be read down to its TCP payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A header runs past the end of the captured bytes.
    #[error("{layer} header needs {need} bytes, {have} captured")]
    Truncated {
        /// The header being read.
        layer: &'static str,
        /// Bytes the header needs.
        need: usize,
        /// Bytes there are.
        have: usize,
    },
    /// An IP header's version field does not match the link layer's protocol.
    #[error("IP version {0} where {1} was announced")]
    IpVersion(u8, u8),
    /// A header length field is smaller than the fixed header or larger than the packet.
    #[error("{layer} header length {len} is invalid")]
    HeaderLength {
        /// The header.
        layer: &'static str,
        /// The length it announced, in bytes.
        len: usize,
    },
    /// More VLAN tags or IPv6 extension headers than this reader follows.
    #[error("more than {0} nested headers")]
    TooDeep(usize),
}

/// What a frame turned out to hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// A TCP segment over IPv4 or IPv6.
    Tcp(TcpSegment<'a>),
    /// Not TCP over IP, or an IP fragment (which this reader does not reassemble).
    Skipped(Skip),
}

/// Why a well-formed frame was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Skip {
    /// The link layer carries something other than IPv4 or IPv6 (ARP, LLDP, ...).
    NotIp,
    /// IP carrying something other than TCP.
    NotTcp,
    /// An IPv4 fragment or an IPv6 Fragment header.
    Fragment,
}

const MAX_NESTING: usize = 8;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86DD;
const ETHERTYPE_VLAN: [u16; 3] = [0x8100, 0x88A8, 0x9100];

fn need<'a>(data: &'a [u8], len: usize, layer: &'static str) -> Result<&'a [u8], FrameError> {
    data.get(..len).ok_or(FrameError::Truncated {
        layer,
        need: len,
        have: data.len(),
    })
}

fn be16(b: &[u8], at: usize) -> u16 {
    // Callers have checked the length with `need`.
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Reads a captured frame of link type `link` down to its TCP segment.
pub fn parse_frame(link: LinkType, data: &[u8]) -> Result<Parsed<'_>, FrameError> {
    let (ethertype, rest) = match link {
        LinkType::Ethernet => {
            let h = need(data, 14, "Ethernet")?;
            let mut ethertype = be16(h, 12);
            let mut rest = &data[14..];
            let mut tags = 0;
            while ETHERTYPE_VLAN.contains(&ethertype) {
                tags += 1;
                if tags > 4 {
                    return Err(FrameError::TooDeep(4));
                }
                let t = need(rest, 4, "802.1Q")?;
                ethertype = be16(t, 2);
                rest = &rest[4..];
            }
            (Some(ethertype), rest)
        }
        LinkType::LinuxSll => {
            let h = need(data, 16, "Linux cooked")?;
            (Some(be16(h, 14)), &data[16..])
        }
        LinkType::LinuxSll2 => {
            let h = need(data, 20, "Linux cooked v2")?;
            (Some(be16(h, 0)), &data[20..])
        }
        LinkType::Null => {
            let h = need(data, 4, "loopback")?;
            let le = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
            let be = be32(h, 0);
            let family = if le < 0x100 { le } else { be };
            let ethertype = match family {
                2 => ETHERTYPE_IPV4,
                24 | 28 | 30 => ETHERTYPE_IPV6,
                _ => return Ok(Parsed::Skipped(Skip::NotIp)),
            };
            (Some(ethertype), &data[4..])
        }
        LinkType::RawIp => (None, data),
    };
    let version = match ethertype {
        Some(ETHERTYPE_IPV4) => 4,
        Some(ETHERTYPE_IPV6) => 6,
        Some(_) => return Ok(Parsed::Skipped(Skip::NotIp)),
        None => need(rest, 1, "IP")?[0] >> 4,
    };
    match version {
        4 => parse_ipv4(rest),
        6 => parse_ipv6(rest),
        _ => Ok(Parsed::Skipped(Skip::NotIp)),
    }
}

fn parse_ipv4(data: &[u8]) -> Result<Parsed<'_>, FrameError> {
    let h = need(data, 20, "IPv4")?;
    let version = h[0] >> 4;
    if version != 4 {
        return Err(FrameError::IpVersion(version, 4));
    }
    let ihl = usize::from(h[0] & 0x0F) * 4;
    let total = usize::from(be16(h, 2));
    if ihl < 20 {
        return Err(FrameError::HeaderLength {
            layer: "IPv4",
            len: ihl,
        });
    }
    need(data, ihl, "IPv4 options")?;
    // A total length of 0 is TCP segmentation offload on the capturing host: the rest of
    // the captured bytes is the packet. Otherwise the total length trims link padding.
    let end = if total == 0 {
        data.len()
    } else if total < ihl {
        return Err(FrameError::HeaderLength {
            layer: "IPv4 total",
            len: total,
        });
    } else {
        total.min(data.len())
    };
    let flags_frag = be16(h, 6);
    let more_fragments = flags_frag & 0x2000 != 0;
    let offset = flags_frag & 0x1FFF;
    if more_fragments || offset != 0 {
        return Ok(Parsed::Skipped(Skip::Fragment));
    }
    if h[9] != 6 {
        return Ok(Parsed::Skipped(Skip::NotTcp));
    }
    let src = IpAddr::V4(Ipv4Addr::new(h[12], h[13], h[14], h[15]));
    let dst = IpAddr::V4(Ipv4Addr::new(h[16], h[17], h[18], h[19]));
    parse_tcp(src, dst, &data[ihl..end])
}

fn parse_ipv6(data: &[u8]) -> Result<Parsed<'_>, FrameError> {
    let h = need(data, 40, "IPv6")?;
    let version = h[0] >> 4;
    if version != 6 {
        return Err(FrameError::IpVersion(version, 6));
    }
    let payload_len = usize::from(be16(h, 4));
    let mut next = h[6];
    let addr = |at: usize| {
        let mut a = [0u8; 16];
        a.copy_from_slice(&h[at..at + 16]);
        IpAddr::V6(Ipv6Addr::from(a))
    };
    let (src, dst) = (addr(8), addr(24));
    let body = &data[40..];
    // Payload length 0 is a jumbogram or segmentation offload: take what was captured.
    let mut rest = if payload_len == 0 {
        body
    } else {
        &body[..payload_len.min(body.len())]
    };
    for _ in 0..MAX_NESTING {
        match next {
            6 => return parse_tcp(src, dst, rest),
            44 => return Ok(Parsed::Skipped(Skip::Fragment)),
            0 | 43 | 60 | 51 => {
                let e = need(rest, 2, "IPv6 extension")?;
                let len = if next == 51 {
                    (usize::from(e[1]) + 2) * 4
                } else {
                    (usize::from(e[1]) + 1) * 8
                };
                need(rest, len, "IPv6 extension")?;
                next = e[0];
                rest = &rest[len..];
            }
            _ => return Ok(Parsed::Skipped(Skip::NotTcp)),
        }
    }
    Err(FrameError::TooDeep(MAX_NESTING))
}

fn parse_tcp(src: IpAddr, dst: IpAddr, data: &[u8]) -> Result<Parsed<'_>, FrameError> {
    let h = need(data, 20, "TCP")?;
    let offset = usize::from(h[12] >> 4) * 4;
    if offset < 20 {
        return Err(FrameError::HeaderLength {
            layer: "TCP",
            len: offset,
        });
    }
    need(data, offset, "TCP options")?;
    Ok(Parsed::Tcp(TcpSegment {
        src: SocketAddr::new(src, be16(h, 0)),
        dst: SocketAddr::new(dst, be16(h, 2)),
        seq: be32(h, 4),
        flags: TcpFlags(h[13]),
        payload: &data[offset..],
    }))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An IPv4 + TCP packet carrying `payload`, built field by field.
    pub(crate) fn ipv4_tcp(
        src: [u8; 4],
        dst: [u8; 4],
        ports: (u16, u16),
        seq: u32,
        flags: u8,
        payload: &[u8],
    ) -> Vec<u8> {
        let total = 20 + 20 + payload.len();
        let mut p = vec![0x45, 0];
        p.extend_from_slice(&u16::try_from(total).unwrap_or(u16::MAX).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(&ports.0.to_be_bytes());
        p.extend_from_slice(&ports.1.to_be_bytes());
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&0u32.to_be_bytes());
        p.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        p.extend_from_slice(payload);
        p
    }

    fn ethernet(ip: &[u8], pad_to: usize) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        f.extend_from_slice(ip);
        if f.len() < pad_to {
            f.resize(pad_to, 0);
        }
        f
    }

    #[test]
    fn ethernet_padding_is_not_payload() {
        let ip = ipv4_tcp(
            [10, 0, 0, 1],
            [10, 0, 0, 2],
            (40000, 1883),
            7,
            0x18,
            b"\xc0\x00",
        );
        let frame = ethernet(&ip, 60);
        let Parsed::Tcp(seg) = parse_frame(LinkType::Ethernet, &frame).unwrap() else {
            panic!("not TCP");
        };
        assert_eq!(seg.payload, b"\xc0\x00");
        assert_eq!(seg.src, "10.0.0.1:40000".parse().unwrap());
        assert_eq!(seg.dst, "10.0.0.2:1883".parse().unwrap());
        assert_eq!(seg.seq, 7);
        assert!(seg.flags.has(TcpFlags::ACK));
    }

    #[test]
    fn linux_cooked_and_vlan_headers_are_followed() {
        let ip = ipv4_tcp([1, 2, 3, 4], [5, 6, 7, 8], (1, 2), 0, 0x02, b"");
        let mut sll = vec![0u8; 14];
        sll.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        sll.extend_from_slice(&ip);
        assert!(matches!(
            parse_frame(LinkType::LinuxSll, &sll),
            Ok(Parsed::Tcp(TcpSegment { seq: 0, .. }))
        ));
        let mut vlan = vec![0u8; 12];
        vlan.extend_from_slice(&0x8100u16.to_be_bytes());
        vlan.extend_from_slice(&[0, 5]);
        vlan.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        vlan.extend_from_slice(&ip);
        assert!(matches!(
            parse_frame(LinkType::Ethernet, &vlan),
            Ok(Parsed::Tcp(_))
        ));
    }

    #[test]
    fn non_tcp_and_fragments_are_skipped() {
        let mut ip = ipv4_tcp([1, 2, 3, 4], [5, 6, 7, 8], (1, 2), 0, 0, b"x");
        ip[9] = 17;
        assert_eq!(
            parse_frame(LinkType::RawIp, &ip),
            Ok(Parsed::Skipped(Skip::NotTcp))
        );
        ip[9] = 6;
        ip[6] = 0x20; // more fragments
        assert_eq!(
            parse_frame(LinkType::RawIp, &ip),
            Ok(Parsed::Skipped(Skip::Fragment))
        );
        let mut arp = vec![0u8; 12];
        arp.extend_from_slice(&0x0806u16.to_be_bytes());
        arp.extend_from_slice(&[0; 28]);
        assert_eq!(
            parse_frame(LinkType::Ethernet, &arp),
            Ok(Parsed::Skipped(Skip::NotIp))
        );
    }

    #[test]
    fn short_and_inconsistent_headers_are_errors() {
        assert!(matches!(
            parse_frame(LinkType::Ethernet, &[0; 13]),
            Err(FrameError::Truncated {
                layer: "Ethernet",
                ..
            })
        ));
        let mut ip = ipv4_tcp([1, 2, 3, 4], [5, 6, 7, 8], (1, 2), 0, 0, b"");
        ip[0] = 0x44; // IHL 16 bytes
        assert!(matches!(
            parse_frame(LinkType::RawIp, &ip),
            Err(FrameError::HeaderLength { layer: "IPv4", .. })
        ));
        let mut ip = ipv4_tcp([1, 2, 3, 4], [5, 6, 7, 8], (1, 2), 0, 0, b"");
        ip[32] = 0xF0; // TCP data offset 60 bytes, only 20 there
        assert!(matches!(
            parse_frame(LinkType::RawIp, &ip),
            Err(FrameError::Truncated {
                layer: "TCP options",
                ..
            })
        ));
    }

    #[test]
    fn ipv6_extension_headers_are_skipped() {
        let mut p = vec![0x60, 0, 0, 0];
        let tcp_len = 20 + 3;
        p.extend_from_slice(&u16::try_from(8 + tcp_len).unwrap().to_be_bytes());
        p.extend_from_slice(&[0, 64]); // next header: hop-by-hop
        p.extend_from_slice(&[0u8; 15]);
        p.push(1);
        p.extend_from_slice(&[0u8; 15]);
        p.push(2);
        p.extend_from_slice(&[6, 0, 0, 0, 0, 0, 0, 0]); // hop-by-hop, next TCP
        p.extend_from_slice(&1883u16.to_be_bytes());
        p.extend_from_slice(&5000u16.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 9, 0, 0, 0, 0, 0x50, 0x18, 0, 0, 0, 0, 0, 0]);
        p.extend_from_slice(b"abc");
        let Parsed::Tcp(seg) = parse_frame(LinkType::RawIp, &p).unwrap() else {
            panic!("not TCP");
        };
        assert_eq!(seg.payload, b"abc");
        assert_eq!(seg.src, "[::1]:1883".parse().unwrap());
        assert_eq!(seg.seq, 9);
    }

    proptest! {
        #[test]
        fn arbitrary_frames_never_panic(
            data in proptest::collection::vec(any::<u8>(), 0..200),
            link in 0usize..5,
        ) {
            let link = [LinkType::Null, LinkType::Ethernet, LinkType::RawIp,
                LinkType::LinuxSll, LinkType::LinuxSll2][link];
            let _ = parse_frame(link, &data);
        }

        #[test]
        fn built_segments_read_back(
            src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(),
            ports in any::<(u16, u16)>(), seq in any::<u32>(), flags in any::<u8>(),
            payload in proptest::collection::vec(any::<u8>(), 0..100),
            pad in 0usize..80,
        ) {
            let ip = ipv4_tcp(src, dst, ports, seq, flags, &payload);
            let frame = ethernet(&ip, ip.len() + 14 + pad);
            let parsed = parse_frame(LinkType::Ethernet, &frame);
            let Ok(Parsed::Tcp(seg)) = parsed else {
                return Err(TestCaseError::fail(format!("{parsed:?}")));
            };
            prop_assert_eq!(seg.payload, &payload[..]);
            prop_assert_eq!(seg.seq, seq);
            prop_assert_eq!(seg.flags, TcpFlags(flags));
            prop_assert_eq!(seg.src, SocketAddr::new(IpAddr::from(src), ports.0));
            prop_assert_eq!(seg.dst, SocketAddr::new(IpAddr::from(dst), ports.1));
        }
    }
}
