use bytes::BytesMut;

use crate::{Packet, ProtocolVersion, ReasonCode};

/// Why bytes could not be decoded into a packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Placeholder until the decoder lands.
    #[error("malformed packet")]
    Malformed,
}

impl DecodeError {
    /// The reason code the spec asks the receiver to answer with.
    pub fn reason_code(&self) -> ReasonCode {
        ReasonCode::MALFORMED_PACKET
    }
}

/// Looks at the fixed header at the front of `buf`.
pub fn peek_frame(_buf: &[u8], _max_packet_size: u32) -> Result<Option<usize>, DecodeError> {
    Err(DecodeError::Malformed)
}

/// Decodes one packet from the front of `buf`.
pub fn decode(
    _buf: &mut BytesMut,
    _version: ProtocolVersion,
    _max_packet_size: u32,
) -> Result<Option<Packet>, DecodeError> {
    Err(DecodeError::Malformed)
}
