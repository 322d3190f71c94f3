use bytes::BytesMut;

use crate::{Packet, ProtocolVersion};

/// Why a packet could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// Placeholder until the encoder lands.
    #[error("packet too large")]
    TooLarge,
}

/// Appends the encoding of `packet` for `version` to `out`.
pub fn encode(
    _packet: &Packet,
    _version: ProtocolVersion,
    _out: &mut BytesMut,
) -> Result<(), EncodeError> {
    Err(EncodeError::TooLarge)
}

/// Length in bytes of the encoding of `packet` for `version`.
pub fn encoded_len(_packet: &Packet, _version: ProtocolVersion) -> usize {
    0
}
