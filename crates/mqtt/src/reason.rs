/// An MQTT 5.0 reason code (§2.4). One byte; the names follow the specification.
///
/// MQTT 3.1.1 has only CONNACK return codes and SUBACK's 0x80; the encoder maps these
/// codes onto them when writing a 3.1.1 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReasonCode(pub u8);

#[allow(missing_docs)]
impl ReasonCode {
    pub const SUCCESS: Self = Self(0x00);
    pub const NORMAL_DISCONNECTION: Self = Self(0x00);
    pub const GRANTED_QOS_0: Self = Self(0x00);
    pub const GRANTED_QOS_1: Self = Self(0x01);
    pub const GRANTED_QOS_2: Self = Self(0x02);
    pub const DISCONNECT_WITH_WILL: Self = Self(0x04);
    pub const NO_MATCHING_SUBSCRIBERS: Self = Self(0x10);
    pub const NO_SUBSCRIPTION_EXISTED: Self = Self(0x11);
    pub const CONTINUE_AUTHENTICATION: Self = Self(0x18);
    pub const REAUTHENTICATE: Self = Self(0x19);
    pub const UNSPECIFIED_ERROR: Self = Self(0x80);
    pub const MALFORMED_PACKET: Self = Self(0x81);
    pub const PROTOCOL_ERROR: Self = Self(0x82);
    pub const IMPLEMENTATION_SPECIFIC_ERROR: Self = Self(0x83);
    pub const UNSUPPORTED_PROTOCOL_VERSION: Self = Self(0x84);
    pub const CLIENT_IDENTIFIER_NOT_VALID: Self = Self(0x85);
    pub const BAD_USER_NAME_OR_PASSWORD: Self = Self(0x86);
    pub const NOT_AUTHORIZED: Self = Self(0x87);
    pub const SERVER_UNAVAILABLE: Self = Self(0x88);
    pub const SERVER_BUSY: Self = Self(0x89);
    pub const BANNED: Self = Self(0x8A);
    pub const SERVER_SHUTTING_DOWN: Self = Self(0x8B);
    pub const BAD_AUTHENTICATION_METHOD: Self = Self(0x8C);
    pub const KEEP_ALIVE_TIMEOUT: Self = Self(0x8D);
    pub const SESSION_TAKEN_OVER: Self = Self(0x8E);
    pub const TOPIC_FILTER_INVALID: Self = Self(0x8F);
    pub const TOPIC_NAME_INVALID: Self = Self(0x90);
    pub const PACKET_IDENTIFIER_IN_USE: Self = Self(0x91);
    pub const PACKET_IDENTIFIER_NOT_FOUND: Self = Self(0x92);
    pub const RECEIVE_MAXIMUM_EXCEEDED: Self = Self(0x93);
    pub const TOPIC_ALIAS_INVALID: Self = Self(0x94);
    pub const PACKET_TOO_LARGE: Self = Self(0x95);
    pub const MESSAGE_RATE_TOO_HIGH: Self = Self(0x96);
    pub const QUOTA_EXCEEDED: Self = Self(0x97);
    pub const ADMINISTRATIVE_ACTION: Self = Self(0x98);
    pub const PAYLOAD_FORMAT_INVALID: Self = Self(0x99);
    pub const RETAIN_NOT_SUPPORTED: Self = Self(0x9A);
    pub const QOS_NOT_SUPPORTED: Self = Self(0x9B);
    pub const USE_ANOTHER_SERVER: Self = Self(0x9C);
    pub const SERVER_MOVED: Self = Self(0x9D);
    pub const SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: Self = Self(0x9E);
    pub const CONNECTION_RATE_EXCEEDED: Self = Self(0x9F);
    pub const MAXIMUM_CONNECT_TIME: Self = Self(0xA0);
    pub const SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED: Self = Self(0xA1);
    pub const WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED: Self = Self(0xA2);

    /// The code's name in the MQTT 5.0 specification (§2.4), lower case: `0x87` → "not
    /// authorized". 0x00 is "success" (a DISCONNECT calls it normal disconnection, a
    /// SUBACK granted QoS 0). `None` for a byte the specification does not define.
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0x00 => "success",
            0x01 => "granted QoS 1",
            0x02 => "granted QoS 2",
            0x04 => "disconnect with will message",
            0x10 => "no matching subscribers",
            0x11 => "no subscription existed",
            0x18 => "continue authentication",
            0x19 => "re-authenticate",
            0x80 => "unspecified error",
            0x81 => "malformed packet",
            0x82 => "protocol error",
            0x83 => "implementation specific error",
            0x84 => "unsupported protocol version",
            0x85 => "client identifier not valid",
            0x86 => "bad user name or password",
            0x87 => "not authorized",
            0x88 => "server unavailable",
            0x89 => "server busy",
            0x8A => "banned",
            0x8B => "server shutting down",
            0x8C => "bad authentication method",
            0x8D => "keep alive timeout",
            0x8E => "session taken over",
            0x8F => "topic filter invalid",
            0x90 => "topic name invalid",
            0x91 => "packet identifier in use",
            0x92 => "packet identifier not found",
            0x93 => "receive maximum exceeded",
            0x94 => "topic alias invalid",
            0x95 => "packet too large",
            0x96 => "message rate too high",
            0x97 => "quota exceeded",
            0x98 => "administrative action",
            0x99 => "payload format invalid",
            0x9A => "retain not supported",
            0x9B => "QoS not supported",
            0x9C => "use another server",
            0x9D => "server moved",
            0x9E => "shared subscriptions not supported",
            0x9F => "connection rate exceeded",
            0xA0 => "maximum connect time",
            0xA1 => "subscription identifiers not supported",
            0xA2 => "wildcard subscriptions not supported",
            _ => return None,
        })
    }

    /// The code in hex with its name, for people: `0x87 (not authorized)`. (`Display`
    /// stays the bare `0x87`, which metric labels use.)
    pub fn explained(self) -> String {
        match self.name() {
            Some(name) => format!("0x{:02X} ({name})", self.0),
            None => format!("0x{:02X} (not an MQTT 5 reason code)", self.0),
        }
    }

    /// Whether the code reports a failure (0x80 and above).
    pub fn is_error(self) -> bool {
        self.0 >= 0x80
    }

    /// The MQTT 3.1.1 CONNACK return code (3.1.1 §3.2.2.3) that stands for this reason:
    /// 0x00 → 0 (accepted), 0x84 → 1 (unacceptable protocol version), 0x85 → 2
    /// (identifier rejected), 0x88 and 0x89 → 3 (server unavailable), 0x86 → 4 (bad user
    /// name or password), any other failure → 5 (not authorized). `None` for a non-zero
    /// success code, which a CONNACK cannot carry.
    pub fn to_v311_connack(self) -> Option<u8> {
        match self.0 {
            0x00 => Some(0),
            0x84 => Some(1),
            0x85 => Some(2),
            0x88 | 0x89 => Some(3),
            0x86 => Some(4),
            c if c >= 0x80 => Some(5),
            _ => None,
        }
    }

    /// The reason code for an MQTT 3.1.1 CONNACK return code; `None` above 5.
    pub fn from_v311_connack(code: u8) -> Option<Self> {
        match code {
            0 => Some(Self::SUCCESS),
            1 => Some(Self::UNSUPPORTED_PROTOCOL_VERSION),
            2 => Some(Self::CLIENT_IDENTIFIER_NOT_VALID),
            3 => Some(Self::SERVER_UNAVAILABLE),
            4 => Some(Self::BAD_USER_NAME_OR_PASSWORD),
            5 => Some(Self::NOT_AUTHORIZED),
            _ => None,
        }
    }

    /// The MQTT 3.1.1 SUBACK return code (3.1.1 §3.9.3) for this reason: granted QoS 0,
    /// 1 or 2 as is, any failure as 0x80. `None` for other success codes.
    pub fn to_v311_suback(self) -> Option<u8> {
        match self.0 {
            0..=2 => Some(self.0),
            c if c >= 0x80 => Some(0x80),
            _ => None,
        }
    }

    /// Whether an MQTT 5.0 packet of type `packet_type` may carry this reason code: the
    /// tables of §3.2.2.2 (CONNACK), §3.4.2.1 (PUBACK), §3.5.2.1 (PUBREC), §3.6.2.1
    /// (PUBREL), §3.7.2.1 (PUBCOMP), §3.9.3 (SUBACK), §3.11.3 (UNSUBACK), §3.14.2.1
    /// (DISCONNECT) and §3.15.2.1 (AUTH). `false` for packet types without a reason code.
    pub fn is_valid_for(self, packet_type: u8) -> bool {
        let allowed: &[u8] = match packet_type {
            2 => &[
                0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90,
                0x95, 0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
            ],
            4 | 5 => &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99],
            6 | 7 => &[0x00, 0x92],
            9 => &[
                0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
            ],
            11 => &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91],
            14 => &[
                0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93,
                0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1,
                0xA2,
            ],
            15 => &[0x00, 0x18, 0x19],
            _ => &[],
        };
        allowed.contains(&self.0)
    }
}

impl std::fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "0x{:02X}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_codes_are_explained_with_their_names_in_the_specification() {
        assert_eq!(
            ReasonCode::NOT_AUTHORIZED.explained(),
            "0x87 (not authorized)"
        );
        assert_eq!(ReasonCode::BANNED.explained(), "0x8A (banned)");
        assert_eq!(
            ReasonCode::CONNECTION_RATE_EXCEEDED.explained(),
            "0x9F (connection rate exceeded)"
        );
        assert_eq!(ReasonCode::SUCCESS.name(), Some("success"));
        assert_eq!(
            ReasonCode(0x03).explained(),
            "0x03 (not an MQTT 5 reason code)"
        );
        // Every code the crate names has a name; Display stays bare (metric labels).
        for code in (0..=0xFFu8).map(ReasonCode) {
            if code.is_valid_for(14) || code.is_valid_for(2) || code.is_valid_for(9) {
                assert!(code.name().is_some(), "{code} has no name");
            }
        }
        assert_eq!(ReasonCode::NOT_AUTHORIZED.to_string(), "0x87");
    }
}
