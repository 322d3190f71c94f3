//! The rules and detectors: their names and the MITRE ATT&CK for ICS techniques they map
//! to.

/// A rule or detector, for documentation and the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleInfo {
    /// The name findings carry as their `kind`, and the configuration key.
    pub name: &'static str,
    /// The MITRE ATT&CK for ICS technique id.
    pub technique: &'static str,
    /// The technique's name.
    pub technique_name: &'static str,
    /// What fires it.
    pub description: &'static str,
}

/// Every rule, as an index into [`RULES`] and per-subject cooldown tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Rule {
    CredentialBruteForce,
    ConnectFlood,
    PublishFlood,
    SlowConnectionDos,
    MalformedPackets,
    TopicScanning,
    WildcardHarvesting,
    RetainedPoisoning,
    CommandInjection,
    ExfiltrationBroadSubscribe,
    Beaconing,
    ClonedIdentity,
    OutOfRangeReading,
    ReadingJump,
    StuckReading,
    CohortDeviation,
    Burst,
}

/// Number of rules.
pub(crate) const RULE_COUNT: usize = 17;

impl Rule {
    pub(crate) fn info(self) -> &'static RuleInfo {
        &RULES[self as usize]
    }
}

/// Every rule and detector; findings carry the `name` as their `kind`.
pub static RULES: [RuleInfo; RULE_COUNT] = [
    RuleInfo {
        name: "credential_brute_force",
        technique: "T0859",
        technique_name: "Valid Accounts",
        description: "many authentication failures from one source address, or naming one device, within the window (an attempt to obtain valid credentials)",
    },
    RuleInfo {
        name: "connect_flood",
        technique: "T0814",
        technique_name: "Denial of Service",
        description: "many connection attempts from one source address, or many sessions of one device, within the window",
    },
    RuleInfo {
        name: "publish_flood",
        technique: "T0814",
        technique_name: "Denial of Service",
        description: "a sustained 10 s publish rate far above the profile's rate (or an absolute ceiling without a profile)",
    },
    RuleInfo {
        name: "slow_connection_dos",
        technique: "T0814",
        technique_name: "Denial of Service",
        description: "many sessions from one source address asking for no or a huge keep-alive and sending nothing (SlowITe)",
    },
    RuleInfo {
        name: "malformed_packets",
        technique: "T0866",
        technique_name: "Exploitation of Remote Services",
        description: "a stream of protocol-error disconnects or malformed-packet refusals from one source address or device",
    },
    RuleInfo {
        name: "topic_scanning",
        technique: "T0846",
        technique_name: "Remote System Discovery",
        description: "many new topics outside the profile, or many publishes and subscriptions the gate refused, within the window",
    },
    RuleInfo {
        name: "wildcard_harvesting",
        technique: "T0861",
        technique_name: "Point & Tag Identification",
        description: "a subscription to '#', to '$SYS', or with a wildcard in its first levels, that the profile does not cover",
    },
    RuleInfo {
        name: "retained_poisoning",
        technique: "T0856",
        technique_name: "Spoof Reporting Message",
        description: "a retained publish to a topic outside the profile or belonging to another device",
    },
    RuleInfo {
        name: "command_injection",
        technique: "T0855",
        technique_name: "Unauthorized Command Message",
        description: "a device publishing to a command topic: another device's, or one the profile does not let it publish",
    },
    RuleInfo {
        name: "exfiltration_broad_subscribe",
        technique: "T0882",
        technique_name: "Theft of Operational Information",
        description: "a subscription outside the profile that reaches other devices' publications",
    },
    RuleInfo {
        name: "beaconing",
        technique: "T0869",
        technique_name: "Standard Application Layer Protocol",
        description: "sessions that publish nothing within the profile, or publishes to topics outside it, at a regular period (low variation)",
    },
    RuleInfo {
        name: "cloned_identity",
        technique: "T0859",
        technique_name: "Valid Accounts",
        description: "one device identity connecting from source addresses that keep alternating within the window",
    },
    RuleInfo {
        name: "out_of_range_reading",
        technique: "T0856",
        technique_name: "Spoof Reporting Message",
        description: "a JSON payload value outside the range the profile gives its field",
    },
    RuleInfo {
        name: "reading_jump",
        technique: "T0856",
        technique_name: "Spoof Reporting Message",
        description: "a JSON payload value that changed by more than the profile's max_step for its field since the device's previous reading of it (within max_gap)",
    },
    RuleInfo {
        name: "stuck_reading",
        technique: "T0832",
        technique_name: "Manipulation of View",
        description: "a JSON payload value the device repeated more times in a row than the profile's max_repeats for its field allows (a stuck sensor, or readings replayed)",
    },
    RuleInfo {
        name: "cohort_deviation",
        technique: "T0856",
        technique_name: "Spoof Reporting Message",
        description: "a robust z-score (median/MAD of the model's fleet) of the device's rate, payload size, mean value or a single reading above the threshold",
    },
    RuleInfo {
        name: "burst",
        technique: "T0814",
        technique_name: "Denial of Service",
        description: "the 1 s publish rate far above the device's own 60 s rate",
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_order_matches_the_table() {
        assert_eq!(
            Rule::CredentialBruteForce.info().name,
            "credential_brute_force"
        );
        assert_eq!(Rule::Burst.info().name, "burst");
        assert_eq!(Rule::CohortDeviation.info().name, "cohort_deviation");
        assert_eq!(Rule::OutOfRangeReading.info().name, "out_of_range_reading");
        let mut names: Vec<_> = RULES.iter().map(|r| r.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), RULE_COUNT);
    }
}
