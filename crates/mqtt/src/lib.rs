//! Sans-I/O MQTT 3.1.1 and 5.0 codec: bytes in, packets out, and back.
//!
//! The design decision that shapes it: it never touches a socket or a runtime. The broker,
//! the load generator, the replay tool and the fuzzer all drive the same two functions,
//! [`decode`] and [`encode`], so hostile input is handled in exactly one place. Every
//! decoding failure carries the MQTT 5.0 reason code that the spec asks the receiver to
//! answer with ([`DecodeError::reason_code`]).
//!
//! The codec is strict in both directions. The decoder refuses everything the
//! specification calls a Malformed Packet or a Protocol Error that is visible in the
//! packet alone (reserved bits, duplicate or misplaced properties, U+0000 in strings,
//! non-minimal lengths, bytes after the last field); the encoder refuses to write what
//! the decoder would refuse. Checks that need session state (topic alias ranges, receive
//! maximum, packet direction) belong to the caller.
//!
//! Frames are split off the read buffer and frozen, so a PUBLISH payload is a zero-copy
//! slice of the bytes that came off the wire. Encoding measures the packet once, reserves
//! exactly that much and writes with no intermediate allocation; [`encoded_len`] gives the
//! same length without writing, to honour a peer's Maximum Packet Size.

mod decode;
mod encode;
mod packet;
mod property;
mod reason;
mod wire;

pub use decode::{
    DecodeError, DecodeLimits, connect_protocol_level, decode, decode_with, peek_frame,
};
pub use encode::{EncodeError, encode, encoded_len};
pub use gatehouse_types::matches as topic_matches;
pub use packet::*;
pub use reason::ReasonCode;
