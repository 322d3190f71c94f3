//! The MQTT 5.0 property table (§2.2.2.2): every identifier, and which packets may carry
//! it. The decoder refuses a property outside its row, and so does the encoder, so that
//! what one writes the other reads.

/// Where a property block sits: in a packet of one type, or in the will of a CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Connect,
    ConnAck,
    Publish,
    PubAck,
    PubRec,
    PubRel,
    PubComp,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
    Will,
}

// === impl Kind ===

impl Kind {
    /// This kind's bit in the masks of [`allowed_in`].
    pub(crate) const fn bit(self) -> u16 {
        1 << self as u16
    }

    /// The name used in error messages.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Self::Connect => "CONNECT",
            Self::ConnAck => "CONNACK",
            Self::Publish => "PUBLISH",
            Self::PubAck => "PUBACK",
            Self::PubRec => "PUBREC",
            Self::PubRel => "PUBREL",
            Self::PubComp => "PUBCOMP",
            Self::Subscribe => "SUBSCRIBE",
            Self::SubAck => "SUBACK",
            Self::Unsubscribe => "UNSUBSCRIBE",
            Self::UnsubAck => "UNSUBACK",
            Self::Disconnect => "DISCONNECT",
            Self::Auth => "AUTH",
            Self::Will => "will properties",
        }
    }
}

/// Property identifiers (§2.2.2.2).
pub(crate) mod id {
    pub(crate) const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub(crate) const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub(crate) const CONTENT_TYPE: u8 = 0x03;
    pub(crate) const RESPONSE_TOPIC: u8 = 0x08;
    pub(crate) const CORRELATION_DATA: u8 = 0x09;
    pub(crate) const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub(crate) const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub(crate) const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub(crate) const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub(crate) const AUTHENTICATION_METHOD: u8 = 0x15;
    pub(crate) const AUTHENTICATION_DATA: u8 = 0x16;
    pub(crate) const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub(crate) const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub(crate) const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub(crate) const RESPONSE_INFORMATION: u8 = 0x1A;
    pub(crate) const SERVER_REFERENCE: u8 = 0x1C;
    pub(crate) const REASON_STRING: u8 = 0x1F;
    pub(crate) const RECEIVE_MAXIMUM: u8 = 0x21;
    pub(crate) const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub(crate) const TOPIC_ALIAS: u8 = 0x23;
    pub(crate) const MAXIMUM_QOS: u8 = 0x24;
    pub(crate) const RETAIN_AVAILABLE: u8 = 0x25;
    pub(crate) const USER_PROPERTY: u8 = 0x26;
    pub(crate) const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub(crate) const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub(crate) const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub(crate) const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

const fn mask(kinds: &[Kind]) -> u16 {
    let mut m = 0;
    let mut i = 0;
    while i < kinds.len() {
        m |= kinds[i].bit();
        i += 1;
    }
    m
}

use Kind::*;

const MESSAGE: u16 = mask(&[Publish, Will]);
const CONNECTION: u16 = mask(&[Connect, ConnAck]);
const AUTHENTICATION: u16 = mask(&[Connect, ConnAck, Auth]);
const REASON_STRING_IN: u16 = mask(&[
    ConnAck, PubAck, PubRec, PubRel, PubComp, SubAck, UnsubAck, Disconnect, Auth,
]);
const EVERYWHERE: u16 = mask(&[
    Connect,
    ConnAck,
    Publish,
    PubAck,
    PubRec,
    PubRel,
    PubComp,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
    Will,
]);

/// The kinds that may carry property `id`, as a mask of [`Kind::bit`]; 0 for an
/// identifier the specification does not define. This is the table of §2.2.2.2.
pub(crate) const fn allowed_in(id: u8) -> u16 {
    match id {
        id::PAYLOAD_FORMAT_INDICATOR
        | id::MESSAGE_EXPIRY_INTERVAL
        | id::CONTENT_TYPE
        | id::RESPONSE_TOPIC
        | id::CORRELATION_DATA => MESSAGE,
        id::SUBSCRIPTION_IDENTIFIER => mask(&[Publish, Subscribe]),
        id::SESSION_EXPIRY_INTERVAL => mask(&[Connect, ConnAck, Disconnect]),
        id::ASSIGNED_CLIENT_IDENTIFIER | id::SERVER_KEEP_ALIVE | id::RESPONSE_INFORMATION => {
            ConnAck.bit()
        }
        id::AUTHENTICATION_METHOD | id::AUTHENTICATION_DATA => AUTHENTICATION,
        id::REQUEST_PROBLEM_INFORMATION | id::REQUEST_RESPONSE_INFORMATION => Connect.bit(),
        id::WILL_DELAY_INTERVAL => Will.bit(),
        id::SERVER_REFERENCE => mask(&[ConnAck, Disconnect]),
        id::REASON_STRING => REASON_STRING_IN,
        id::RECEIVE_MAXIMUM | id::TOPIC_ALIAS_MAXIMUM | id::MAXIMUM_PACKET_SIZE => CONNECTION,
        id::TOPIC_ALIAS => Publish.bit(),
        id::MAXIMUM_QOS
        | id::RETAIN_AVAILABLE
        | id::WILDCARD_SUBSCRIPTION_AVAILABLE
        | id::SUBSCRIPTION_IDENTIFIER_AVAILABLE
        | id::SHARED_SUBSCRIPTION_AVAILABLE => ConnAck.bit(),
        id::USER_PROPERTY => EVERYWHERE,
        _ => 0,
    }
}

/// Whether property `id` may appear more than once in a block of `kind`: User Property
/// anywhere, Subscription Identifier in PUBLISH only (§3.3.2.3.8, §3.8.2.1.2).
pub(crate) fn repeatable(id: u8, kind: Kind) -> bool {
    id == id::USER_PROPERTY || (id == id::SUBSCRIPTION_IDENTIFIER && kind == Kind::Publish)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_defines_27_properties() {
        let defined = (0..=u8::MAX).filter(|i| allowed_in(*i) != 0).count();
        assert_eq!(defined, 27);
    }

    #[test]
    fn rows_of_the_table() {
        assert_ne!(allowed_in(id::TOPIC_ALIAS) & Publish.bit(), 0);
        assert_eq!(allowed_in(id::TOPIC_ALIAS) & Will.bit(), 0);
        assert_eq!(allowed_in(id::WILL_DELAY_INTERVAL), Will.bit());
        assert_eq!(allowed_in(id::REASON_STRING) & Connect.bit(), 0);
        assert_eq!(allowed_in(id::REASON_STRING) & Publish.bit(), 0);
        assert_eq!(
            allowed_in(id::SUBSCRIPTION_IDENTIFIER) & Unsubscribe.bit(),
            0
        );
        assert_ne!(allowed_in(id::USER_PROPERTY) & Unsubscribe.bit(), 0);
        assert!(repeatable(id::SUBSCRIPTION_IDENTIFIER, Publish));
        assert!(!repeatable(id::SUBSCRIPTION_IDENTIFIER, Subscribe));
    }
}
