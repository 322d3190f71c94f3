//! Sans-I/O MQTT 3.1.1 and 5.0 codec: bytes in, packets out, and back.
//!
//! The design decision that shapes it: it never touches a socket or a runtime. The broker,
//! the load generator, the replay tool and the fuzzer all drive the same two functions,
//! [`decode`] and [`encode`], so hostile input is handled in exactly one place. Every
//! decoding failure carries the MQTT 5.0 reason code that the spec asks the receiver to
//! answer with ([`DecodeError::reason_code`]).

mod decode;
mod encode;
mod packet;
mod reason;

pub use decode::{DecodeError, decode, peek_frame};
pub use encode::{EncodeError, encode, encoded_len};
pub use gatehouse_types::matches as topic_matches;
pub use packet::*;
pub use reason::ReasonCode;
