//! Every rule fires on its attack and stays silent on benign traffic of the same model.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use gatehouse_detect::{DetectConfig, Engine, Grants};
use gatehouse_types::{DisconnectCause, Severity, TopicPattern};

const FLEET: usize = 12;
const END: f64 = 900.0;

/// The benign fleet plus whatever `add` puts in, run through a default engine.
fn scenario(extra: &[&str], add: impl FnOnce(&mut Trace)) -> Vec<gatehouse_types::Finding> {
    let mut trace = Trace::default();
    benign_fleet(&mut trace, FLEET, END, 7);
    add(&mut trace);
    let mut e = engine_for(DetectConfig::default(), FLEET, extra);
    run(&mut e, trace)
}

#[test]
fn a_benign_fleet_raises_no_finding_at_all() {
    let findings = scenario(&[], |_| {});
    assert!(findings.is_empty(), "{}", show(&findings));
}

// === credential_brute_force ===

#[test]
fn credential_brute_force_fires_on_a_password_spray() {
    let attacker = ip(9, 9);
    let f = scenario(&[], |t| {
        for i in 0..30 {
            t.push(auth_failure(
                100.0 + f64::from(i) * 1.5,
                attacker,
                "bad_password",
                None,
            ));
        }
    });
    let hits = of_kind(&f, "credential_brute_force");
    assert!(
        fired_for_addr(&f, "credential_brute_force", attacker),
        "{}",
        show(&f)
    );
    assert_eq!(hits[0].technique.as_deref(), Some("T0859"));
    assert!(hits[0].evidence.contains_key("failures"));
    assert!(hits[0].severity >= Severity::High);
}

#[test]
fn credential_brute_force_stays_silent_on_a_device_with_an_expired_certificate() {
    let f = scenario(&["late"], |t| {
        // Three refusals (expired certificate) a minute apart, then it is renewed.
        for i in 0..3 {
            t.push(auth_failure(
                100.0 + f64::from(i) * 60.0,
                ip(2, 1),
                "tls_cert_expired",
                Some("late"),
            ));
        }
        let mut rng = Rng::new(3);
        benign_device(t, "late", ip(2, 1), 300.0, END, &mut rng);
    });
    assert!(
        of_kind(&f, "credential_brute_force").is_empty(),
        "{}",
        show(&f)
    );
}

// === connect_flood ===

#[test]
fn connect_flood_fires_on_a_reconnect_storm() {
    let attacker = ip(9, 8);
    let f = scenario(&["storm"], |t| {
        for i in 0..60 {
            t.push(connect(200.0 + f64::from(i) * 0.1, "storm", attacker, 60));
            t.push(disconnect(
                200.05 + f64::from(i) * 0.1,
                "storm",
                DisconnectCause::ClientDisconnect,
            ));
        }
    });
    assert!(fired_for(&f, "connect_flood", "storm"), "{}", show(&f));
    assert!(
        fired_for_addr(&f, "connect_flood", attacker),
        "{}",
        show(&f)
    );
}

#[test]
fn connect_flood_stays_silent_when_a_natted_site_reconnects_after_a_restart() {
    let nat = ip(3, 1);
    let f = scenario(&[], |t| {
        // 30 devices behind one address all reconnect within two seconds.
        let mut rng = Rng::new(11);
        for i in 0..30 {
            let name = format!("n{i}");
            benign_device(t, &name, nat, 400.0 + rng.range(0.0, 2.0), 700.0, &mut rng);
        }
    });
    assert!(of_kind(&f, "connect_flood").is_empty(), "{}", show(&f));
}

// === publish_flood ===

#[test]
fn publish_flood_fires_on_a_sustained_flood() {
    let f = scenario(&["flooder"], |t| {
        t.push(connect(100.0, "flooder", ip(4, 1), 60));
        for i in 0..1500 {
            t.push(publish(
                100.0 + f64::from(i) * 0.02,
                "flooder",
                "devices/flooder/telemetry",
                r#"{"temp":21.0}"#,
            ));
        }
    });
    assert!(fired_for(&f, "publish_flood", "flooder"), "{}", show(&f));
    assert_eq!(
        of_kind(&f, "publish_flood")[0].technique.as_deref(),
        Some("T0814")
    );
}

#[test]
fn publish_flood_stays_silent_at_the_profile_rate() {
    let f = scenario(&["busy"], |t| {
        t.push(connect(10.0, "busy", ip(4, 2), 60));
        // Two a second, the profile's rate, for ten minutes.
        for i in 0..1200 {
            t.push(publish(
                10.0 + f64::from(i) * 0.5,
                "busy",
                "devices/busy/telemetry",
                r#"{"temp":21.0}"#,
            ));
        }
    });
    assert!(of_kind(&f, "publish_flood").is_empty(), "{}", show(&f));
}

/// `n` connections from `addr`, devices `{prefix}0`…, each publishing `per_conn` messages a
/// second for `secs` seconds from `start`.
fn flood_from_one_address(
    t: &mut Trace,
    prefix: &str,
    addr: std::net::IpAddr,
    n: usize,
    per_conn: f64,
    start: f64,
    secs: f64,
) {
    for c in 0..n {
        let name = format!("{prefix}{c}");
        let t0 = start + 0.01 * c as f64;
        t.push(connect(t0, &name, addr, 60));
        let count = (per_conn * secs) as usize;
        for i in 0..count {
            t.push(publish(
                t0 + 0.05 + i as f64 / per_conn,
                &name,
                &format!("devices/{name}/telemetry"),
                r#"{"temp":21.0}"#,
            ));
        }
    }
}

#[test]
fn many_connections_flooding_together_are_one_flood() {
    // MQTTset's malariados: 10 connections from one address, 3,120 publishes in 4 s, 78 a
    // second each: every one under the per-device limit (200/s without a profile).
    let attacker = ip(9, 20);
    let mut trace = Trace::default();
    benign_fleet(&mut trace, FLEET, 200.0, 7);
    flood_from_one_address(&mut trace, "mal", attacker, 10, 78.0, 100.0, 4.0);
    // Without a profile (as in a capture) and with the model's.
    for with_profile in [false, true] {
        let trace2 = Trace {
            events: trace.events.clone(),
        };
        let extra: Vec<String> = (0..10).map(|c| format!("mal{c}")).collect();
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let mut e = engine_for(
            DetectConfig::default(),
            FLEET,
            if with_profile { &extra } else { &[] },
        );
        let f = run(&mut e, trace2);
        let per_device = extra
            .iter()
            .filter(|d| fired_for(&f, "publish_flood", d))
            .count();
        assert!(
            fired_for_addr(&f, "publish_flood", attacker),
            "profile {with_profile}: the address's flood was not seen ({per_device} per-device findings):\n{}",
            show(&f)
        );
        let by_address: Vec<_> = of_kind(&f, "publish_flood")
            .into_iter()
            .filter(|x| x.device.is_none())
            .collect();
        assert_eq!(by_address.len(), 1, "one flood, one finding: {}", show(&f));
        assert_eq!(by_address[0].peer, Some(attacker));
        // Nothing about the benign fleet.
        assert!(
            f.iter().all(|x| x.peer == Some(attacker)
                || x.device
                    .as_ref()
                    .is_some_and(|d| d.device.as_str().starts_with("mal"))),
            "{}",
            show(&f)
        );
    }
}

#[test]
fn many_devices_behind_one_address_at_their_own_rate_are_not_a_flood() {
    // A site behind one NAT address: 60 devices, each at its profile's rate (2/s), 120/s
    // together; and 10 devices of no model at 4/s each, under `min_rate`.
    let site = ip(8, 1);
    let mut trace = Trace::default();
    for c in 0..60 {
        let name = format!("s{c}");
        let t0 = 1.0 + 0.013 * f64::from(c);
        trace.push(connect(t0, &name, site, 60));
        for i in 0..400 {
            trace.push(publish(
                t0 + 0.1 + f64::from(i) * 0.5,
                &name,
                &format!("devices/{name}/telemetry"),
                r#"{"temp":21.0,"env":{"hum":45}}"#,
            ));
        }
    }
    flood_from_one_address(&mut trace, "slowpoke", site, 10, 4.0, 5.0, 150.0);
    let mut e = engine_for(DetectConfig::default(), 60, &[]);
    let f = run(&mut e, trace);
    assert!(of_kind(&f, "publish_flood").is_empty(), "{}", show(&f));
}

// === slow_connection_dos ===

#[test]
fn slow_connection_dos_fires_on_silent_sessions_with_huge_keep_alives() {
    let attacker = ip(9, 7);
    let f = scenario(&[], |t| {
        for i in 0..40 {
            t.push(connect(
                100.0 + f64::from(i) * 2.0,
                &format!("slow{i}"),
                attacker,
                65_535,
            ));
        }
    });
    assert!(
        fired_for_addr(&f, "slow_connection_dos", attacker),
        "{}",
        show(&f)
    );
}

#[test]
fn slow_connection_dos_stays_silent_on_sleepy_devices_that_publish() {
    let site = ip(3, 2);
    let f = scenario(&[], |t| {
        // 40 battery sensors behind one address: keep-alive one hour, publish on connect.
        for i in 0..40 {
            let name = format!("sleepy{i}");
            let t0 = 100.0 + f64::from(i) * 2.0;
            t.push(connect(t0, &name, site, 3600));
            t.push(publish(
                t0 + 0.2,
                &name,
                &format!("devices/{name}/telemetry"),
                r#"{"temp":20.5}"#,
            ));
        }
    });
    assert!(
        of_kind(&f, "slow_connection_dos").is_empty(),
        "{}",
        show(&f)
    );
}

// === malformed_packets ===

#[test]
fn malformed_packets_fires_on_a_fuzzing_stream() {
    let fuzzer = ip(9, 6);
    let f = scenario(&["fuzzed"], |t| {
        for i in 0..10 {
            t.push(auth_failure(
                100.0 + f64::from(i),
                fuzzer,
                "malformed_connect",
                None,
            ));
        }
        t.push(connect(200.0, "fuzzed", ip(4, 9), 60));
        for i in 0..8 {
            let t0 = 201.0 + f64::from(i) * 3.0;
            t.push(connect(t0, "fuzzed", ip(4, 9), 60));
            t.push(disconnect(
                t0 + 0.5,
                "fuzzed",
                DisconnectCause::ProtocolError,
            ));
        }
    });
    assert!(
        fired_for_addr(&f, "malformed_packets", fuzzer),
        "{}",
        show(&f)
    );
    assert!(fired_for(&f, "malformed_packets", "fuzzed"), "{}", show(&f));
}

#[test]
fn malformed_packets_stays_silent_on_one_protocol_error() {
    let f = scenario(&["glitchy"], |t| {
        let mut rng = Rng::new(5);
        benign_device(t, "glitchy", ip(4, 10), 1.0, END, &mut rng);
        t.push(disconnect(450.0, "glitchy", DisconnectCause::ProtocolError));
        t.push(auth_failure(
            451.0,
            ip(4, 10),
            "malformed_connect",
            Some("glitchy"),
        ));
    });
    assert!(of_kind(&f, "malformed_packets").is_empty(), "{}", show(&f));
}

// === topic_scanning ===

#[test]
fn topic_scanning_fires_on_a_device_probing_topics() {
    let f = scenario(&["prober"], |t| {
        t.push(connect(100.0, "prober", ip(4, 3), 60));
        for i in 0..20 {
            t.push(publish_full(
                100.0 + f64::from(i) * 0.5,
                "prober",
                &format!("plant/line{i}/plc"),
                "{}",
                false,
                false,
            ));
        }
    });
    assert!(fired_for(&f, "topic_scanning", "prober"), "{}", show(&f));
}

#[test]
fn topic_scanning_stays_silent_on_a_device_using_all_its_topics() {
    let f = scenario(&[], |_| {});
    assert!(of_kind(&f, "topic_scanning").is_empty(), "{}", show(&f));
}

// === wildcard_harvesting ===

#[test]
fn wildcard_harvesting_fires_on_hash_and_sys() {
    let f = scenario(&["harvester", "sysprobe"], |t| {
        t.push(connect(100.0, "harvester", ip(4, 4), 60));
        t.push(subscribe(100.5, "harvester", "#", true));
        t.push(connect(100.0, "sysprobe", ip(4, 5), 60));
        t.push(subscribe(100.5, "sysprobe", "$SYS/#", false));
    });
    assert!(
        fired_for(&f, "wildcard_harvesting", "harvester"),
        "{}",
        show(&f)
    );
    assert!(
        fired_for(&f, "wildcard_harvesting", "sysprobe"),
        "{}",
        show(&f)
    );
    let h = of_kind(&f, "wildcard_harvesting");
    assert!(
        h.iter().any(|x| x.severity == Severity::High),
        "{}",
        show(&f)
    );
}

#[test]
fn wildcard_harvesting_stays_silent_on_wildcards_the_profile_covers() {
    let f = scenario(&[], |t| {
        t.push(subscribe(300.0, "s1", "devices/s1/config/#", true));
        t.push(subscribe(300.0, "s2", "$share/g/devices/s2/config/+", true));
    });
    assert!(
        of_kind(&f, "wildcard_harvesting").is_empty(),
        "{}",
        show(&f)
    );
}

#[test]
fn wildcard_harvesting_holds_nothing_against_what_the_policy_grants_a_device_without_a_profile() {
    // No model, no profile: the gate's static policy granted `lab/#` to this device.
    let mut e = Engine::new(DetectConfig::default());
    e.set_gate_grants(true);
    let mut out = Vec::new();
    e.observe(&connect(10.0, "watcher", ip(4, 9), 30), &mut out);
    e.observe(&subscribe(10.5, "watcher", "lab/#", true), &mut out);
    e.observe(&subscribe(10.6, "watcher", "#", true), &mut out);
    assert!(
        of_kind(&out, "wildcard_harvesting").is_empty(),
        "{}",
        show(&out)
    );
    // Refused, the same filter is still probing.
    let mut out = Vec::new();
    e.observe(&subscribe(11.0, "watcher", "$SYS/#", false), &mut out);
    assert!(
        of_kind(&out, "wildcard_harvesting")
            .iter()
            .any(|x| x.severity == Severity::Medium),
        "{}",
        show(&out)
    );
}

#[test]
fn a_subscription_the_operators_policy_grants_is_never_wildcard_harvesting() {
    // The README's example: `[[policy.device]] id = "dashboard"` granted
    // `devices/+/telemetry/#`. The dashboard here is even a member of a model whose
    // profile does not cover the filter: the operator's grant still decides.
    let grants = Grants {
        subscribe: vec![TopicPattern::new("devices/{device}/#").unwrap()],
        devices: vec![(
            dev("dashboard"),
            vec![TopicPattern::new("devices/+/telemetry/#").unwrap()],
        )],
    };
    for with_profile in [true, false] {
        let mut e = if with_profile {
            engine_for(DetectConfig::default(), 0, &["dashboard", "other"])
        } else {
            Engine::new(DetectConfig::default())
        };
        e.set_grants(&grants);
        e.set_gate_grants(true);
        let mut out = Vec::new();
        e.observe(&connect(10.0, "dashboard", ip(4, 10), 30), &mut out);
        for (i, filter) in [
            "devices/+/telemetry/#",
            "devices/+/telemetry",
            "devices/s1/telemetry/x",
        ]
        .into_iter()
        .enumerate()
        {
            let t = 10.5 + 0.1 * i as f64;
            e.observe(&subscribe(t, "dashboard", filter, true), &mut out);
            e.observe(
                &subscribe(t, "dashboard", &format!("$share/ops/{filter}"), true),
                &mut out,
            );
        }
        assert!(
            of_kind(&out, "wildcard_harvesting").is_empty()
                && of_kind(&out, "exfiltration_broad_subscribe").is_empty(),
            "profile {with_profile}: {}",
            show(&out)
        );
        // Beyond the grant, the same device is probing; another device with the same
        // filter has no grant.
        e.observe(&subscribe(12.0, "dashboard", "#", false), &mut out);
        assert!(
            fired_for(&out, "wildcard_harvesting", "dashboard"),
            "{}",
            show(&out)
        );
        if with_profile {
            e.observe(&connect(13.0, "other", ip(4, 11), 30), &mut out);
            e.observe(
                &subscribe(13.5, "other", "devices/+/telemetry/#", true),
                &mut out,
            );
            assert!(
                fired_for(&out, "wildcard_harvesting", "other")
                    || fired_for(&out, "exfiltration_broad_subscribe", "other"),
                "{}",
                show(&out)
            );
        }
    }
}

// === retained_poisoning ===

#[test]
fn retained_poisoning_fires_on_a_retained_message_on_another_devices_topic() {
    let f = scenario(&[], |t| {
        t.push(publish_full(
            300.0,
            "s3",
            "devices/s4/status",
            r#"{"fw":"9.9.9"}"#,
            true,
            true,
        ));
    });
    assert!(fired_for(&f, "retained_poisoning", "s3"), "{}", show(&f));
}

#[test]
fn retained_poisoning_stays_silent_on_retained_status_of_ones_own() {
    // Every benign device retains its own status each minute.
    let f = scenario(&[], |_| {});
    assert!(of_kind(&f, "retained_poisoning").is_empty(), "{}", show(&f));
}

// === command_injection ===

#[test]
fn command_injection_fires_on_a_device_commanding_another() {
    let f = scenario(&[], |t| {
        t.push(publish_full(
            300.0,
            "s5",
            "devices/s6/cmd",
            r#"{"valve":"open"}"#,
            false,
            true,
        ));
    });
    assert!(fired_for(&f, "command_injection", "s5"), "{}", show(&f));
    assert_eq!(
        of_kind(&f, "command_injection")[0].technique.as_deref(),
        Some("T0855")
    );
}

#[test]
fn command_injection_stays_silent_on_telemetry() {
    let f = scenario(&[], |_| {});
    assert!(of_kind(&f, "command_injection").is_empty(), "{}", show(&f));
}

// === exfiltration_broad_subscribe ===

#[test]
fn exfiltration_broad_subscribe_fires_on_subscribing_to_every_devices_telemetry() {
    let f = scenario(&[], |t| {
        t.push(subscribe(300.0, "s7", "devices/+/telemetry", true));
    });
    assert!(
        fired_for(&f, "exfiltration_broad_subscribe", "s7"),
        "{}",
        show(&f)
    );
}

#[test]
fn exfiltration_broad_subscribe_stays_silent_on_own_topics() {
    let f = scenario(&[], |t| {
        t.push(subscribe(300.0, "s7", "devices/s7/cmd", true));
        t.push(subscribe(300.0, "s7", "devices/s7/config/#", true));
    });
    assert!(
        of_kind(&f, "exfiltration_broad_subscribe").is_empty(),
        "{}",
        show(&f)
    );
}

// === beaconing ===

#[test]
fn beaconing_fires_on_periodic_empty_sessions() {
    let f = scenario(&["implant"], |t| {
        let mut rng = Rng::new(17);
        for i in 0..14 {
            let t0 = 30.0 + f64::from(i) * 60.0 + rng.range(-0.3, 0.3);
            t.push(connect(t0, "implant", ip(4, 6), 60));
            t.push(disconnect(
                t0 + 1.0,
                "implant",
                DisconnectCause::ClientDisconnect,
            ));
        }
    });
    assert!(fired_for(&f, "beaconing", "implant"), "{}", show(&f));
}

#[test]
fn beaconing_fires_on_periodic_publishes_to_an_odd_topic() {
    let f = scenario(&[], |t| {
        for i in 0..20 {
            t.push(publish(
                100.0 + f64::from(i) * 30.0,
                "s8",
                "c2/checkin",
                "{}",
            ));
        }
    });
    assert!(fired_for(&f, "beaconing", "s8"), "{}", show(&f));
}

#[test]
fn beaconing_stays_silent_on_a_device_that_wakes_every_five_minutes_to_report() {
    let f = scenario(&["waker"], |t| {
        for i in 0..3 {
            let t0 = 10.0 + f64::from(i) * 300.0;
            t.push(connect(t0, "waker", ip(4, 7), 600));
            t.push(publish(
                t0 + 0.3,
                "waker",
                "devices/waker/telemetry",
                r#"{"temp":19.2}"#,
            ));
            t.push(disconnect(
                t0 + 1.0,
                "waker",
                DisconnectCause::ClientDisconnect,
            ));
        }
    });
    assert!(of_kind(&f, "beaconing").is_empty(), "{}", show(&f));
}

// === cloned_identity ===

#[test]
fn cloned_identity_fires_when_two_addresses_take_the_session_in_turn() {
    let (a, b) = (ip(5, 1), ip(5, 2));
    let f = scenario(&["twin"], |t| {
        for i in 0..8 {
            let t0 = 100.0 + f64::from(i) * 15.0;
            let addr = if i % 2 == 0 { a } else { b };
            t.push(connect(t0, "twin", addr, 60));
            t.push(publish(
                t0 + 1.0,
                "twin",
                "devices/twin/telemetry",
                r#"{"temp":20.0}"#,
            ));
            t.push(disconnect(
                t0 + 14.0,
                "twin",
                DisconnectCause::SessionTakenOver,
            ));
        }
    });
    assert!(fired_for(&f, "cloned_identity", "twin"), "{}", show(&f));
}

#[test]
fn cloned_identity_stays_silent_when_a_device_moves_once() {
    let f = scenario(&["mover"], |t| {
        let mut rng = Rng::new(23);
        benign_device(t, "mover", ip(5, 3), 1.0, 400.0, &mut rng);
        // A new DHCP lease: the next session comes from elsewhere.
        benign_device(t, "mover", ip(5, 4), 405.0, END, &mut rng);
    });
    assert!(of_kind(&f, "cloned_identity").is_empty(), "{}", show(&f));
}

// === out_of_range_reading ===

#[test]
fn out_of_range_reading_fires_on_an_impossible_temperature() {
    let f = scenario(&[], |t| {
        t.push(publish(
            300.0,
            "s9",
            "devices/s9/telemetry",
            r#"{"temp":150.0,"env":{"hum":45}}"#,
        ));
        t.push(publish(
            301.0,
            "s10",
            "devices/s10/telemetry",
            r#"{"temp":20.0,"env":{"hum":-5}}"#,
        ));
    });
    assert!(fired_for(&f, "out_of_range_reading", "s9"), "{}", show(&f));
    assert!(fired_for(&f, "out_of_range_reading", "s10"), "{}", show(&f));
    let hit = of_kind(&f, "out_of_range_reading")
        .into_iter()
        .find(|x| x.device.as_ref().is_some_and(|d| d.device.as_str() == "s9"))
        .unwrap();
    assert_eq!(hit.evidence.get("field").map(String::as_str), Some("temp"));
    assert_eq!(hit.evidence.get("value").map(String::as_str), Some("150"));
}

#[test]
fn out_of_range_reading_stays_silent_at_the_range_bounds() {
    let f = scenario(&["edge"], |t| {
        t.push(publish(
            300.0,
            "edge",
            "devices/edge/telemetry",
            r#"{"temp":85,"env":{"hum":100}}"#,
        ));
        t.push(publish(
            301.0,
            "edge",
            "devices/edge/telemetry",
            r#"{"temp":-40,"env":{"hum":0}}"#,
        ));
    });
    assert!(
        of_kind(&f, "out_of_range_reading").is_empty(),
        "{}",
        show(&f)
    );
}

// === reading_jump ===

/// The test profile with `max_step` on `temp`: the benign fleet's readings move by at
/// most 3 degrees from one to the next.
fn engine_with_steps(extra: &[&str]) -> Engine {
    let mut e = engine_for(DetectConfig::default(), 10, extra);
    let mut p = profile();
    for f in p.fields.iter_mut().filter(|f| f.name == "temp") {
        f.max_step = Some(4.0);
        f.max_repeats = Some(10);
    }
    e.set_profile(p);
    e
}

#[test]
fn reading_jump_fires_on_a_leap_and_never_on_the_fleet() {
    let mut trace = Trace::default();
    benign_fleet(&mut trace, 10, END, 41);
    // Inside the range both times, but 19 degrees apart a second apart.
    let leap = |t: f64, temp: f64| {
        publish(
            t,
            "leap",
            "devices/leap/telemetry",
            &format!(r#"{{"temp":{temp},"env":{{"hum":45}}}}"#),
        )
    };
    trace.push(connect(299.0, "leap", ip(7, 1), 60));
    trace.push(leap(300.0, 21.0));
    trace.push(leap(301.0, 40.0));
    let f = run(&mut engine_with_steps(&["leap"]), trace);
    assert!(fired_for(&f, "reading_jump", "leap"), "{}", show(&f));
    let hit = of_kind(&f, "reading_jump")[0];
    assert_eq!(hit.evidence.get("previous").map(String::as_str), Some("21"));
    assert_eq!(hit.evidence.get("change").map(String::as_str), Some("19"));
    assert_eq!(
        of_kind(&f, "reading_jump").len(),
        1,
        "the fleet's readings never moved by more than max_step: {}",
        show(&f)
    );
    assert!(
        of_kind(&f, "out_of_range_reading").is_empty(),
        "{}",
        show(&f)
    );
}

#[test]
fn reading_jump_compares_only_readings_close_in_time() {
    let mut trace = Trace::default();
    let reading = |t: f64, temp: f64| {
        publish(
            t,
            "away",
            "devices/away/telemetry",
            &format!(r#"{{"temp":{temp},"env":{{"hum":45}}}}"#),
        )
    };
    trace.push(connect(10.0, "away", ip(7, 2), 60));
    trace.push(reading(11.0, 21.0));
    // Back after longer than reading_jump.max_gap (300 s): somewhere else, not a leap.
    trace.push(connect(400.0, "away", ip(7, 2), 60));
    trace.push(reading(401.0, 60.0));
    let quiet = run(&mut engine_with_steps(&["away"]), trace);
    assert!(
        of_kind(&quiet, "reading_jump").is_empty(),
        "{}",
        show(&quiet)
    );

    let mut trace = Trace::default();
    trace.push(connect(10.0, "away", ip(7, 2), 60));
    trace.push(reading(11.0, 21.0));
    trace.push(reading(250.0, 60.0));
    let f = run(&mut engine_with_steps(&["away"]), trace);
    assert!(fired_for(&f, "reading_jump", "away"), "{}", show(&f));
}

// === stuck_reading ===

#[test]
fn stuck_reading_fires_on_a_sensor_that_repeats_itself_and_never_on_the_fleet() {
    let mut trace = Trace::default();
    benign_fleet(&mut trace, 10, END, 43);
    let reading = |t: f64, device: &str, temp: f64| {
        publish(
            t,
            device,
            &format!("devices/{device}/telemetry"),
            &format!(r#"{{"temp":{temp},"env":{{"hum":45}}}}"#),
        )
    };
    // Ten repeats are allowed (eleven equal readings); the twelfth is one too many.
    trace.push(connect(99.0, "frozen", ip(7, 3), 60));
    for i in 0..12 {
        trace.push(reading(100.0 + f64::from(i), "frozen", 21.5));
    }
    trace.push(connect(99.0, "steady", ip(7, 4), 60));
    for i in 0..11 {
        trace.push(reading(100.0 + f64::from(i), "steady", 21.5));
    }
    trace.push(reading(111.0, "steady", 21.6));
    let f = run(&mut engine_with_steps(&["frozen", "steady"]), trace);
    assert!(fired_for(&f, "stuck_reading", "frozen"), "{}", show(&f));
    let hits = of_kind(&f, "stuck_reading");
    assert_eq!(hits.len(), 1, "only the frozen sensor: {}", show(&f));
    assert_eq!(
        hits[0].evidence.get("repeats").map(String::as_str),
        Some("11")
    );
}

// === cohort_deviation ===

#[test]
fn cohort_deviation_fires_on_a_device_reporting_far_from_its_fleet() {
    let f = scenario(&["liar"], |t| {
        let mut rng = Rng::new(29);
        let mut tt = 10.0;
        t.push(connect(tt, "liar", ip(6, 1), 60));
        while tt < END {
            tt += rng.range(0.9, 1.1);
            // In range, but 50 degrees from every other sensor of the model.
            t.push(publish(
                tt,
                "liar",
                "devices/liar/telemetry",
                r#"{"temp":72.0,"env":{"hum":45}}"#,
            ));
        }
    });
    assert!(fired_for(&f, "cohort_deviation", "liar"), "{}", show(&f));
    assert!(
        of_kind(&f, "out_of_range_reading").is_empty(),
        "{}",
        show(&f)
    );
    // Inside the profile's range: recorded for the analyst, held against no one.
    assert!(
        of_kind(&f, "cohort_deviation")
            .iter()
            .all(|x| x.severity <= Severity::Low),
        "{}",
        show(&f)
    );
}

#[test]
fn cohort_deviation_judges_a_new_device_from_its_first_message() {
    let mut trace = Trace::default();
    benign_fleet(&mut trace, FLEET, 300.0, 7);
    let mut e = engine_for(DetectConfig::default(), FLEET, &["newcomer"]);
    let f = run(&mut e, trace);
    assert!(f.is_empty(), "{}", show(&f));
    assert!(e.baseline(MODEL).and_then(|b| b.metrics[3]).is_some());
    let mut out = Vec::new();
    e.observe(&connect(310.0, "newcomer", ip(6, 2), 60), &mut out);
    // No learning period of its own: its first readings are judged against the cohort,
    // and the third deviating one in a row (`cohort_deviation.readings`) is a finding.
    for (i, t) in [310.5, 311.5, 312.5].into_iter().enumerate() {
        assert!(
            !fired_for(&out, "cohort_deviation", "newcomer"),
            "one odd reading is noise, not a finding: {}",
            show(&out)
        );
        e.observe(
            &publish(
                t,
                "newcomer",
                "devices/newcomer/telemetry",
                &format!(r#"{{"temp":{}.0,"env":{{"hum":45}}}}"#, 80 - i),
            ),
            &mut out,
        );
    }
    assert!(
        fired_for(&out, "cohort_deviation", "newcomer"),
        "{}",
        show(&out)
    );
}

#[test]
fn cohort_deviation_stays_silent_on_honest_variation() {
    let f = scenario(&[], |_| {});
    assert!(of_kind(&f, "cohort_deviation").is_empty(), "{}", show(&f));
}

// === burst ===

#[test]
fn burst_fires_on_a_sudden_spike() {
    let f = scenario(&[], |t| {
        for i in 0..60 {
            t.push(publish(
                500.0 + f64::from(i) * 0.02,
                "s11",
                "devices/s11/telemetry",
                r#"{"temp":21}"#,
            ));
        }
    });
    assert!(fired_for(&f, "burst", "s11"), "{}", show(&f));
}

#[test]
fn burst_stays_silent_on_a_backlog_after_reconnect() {
    let f = scenario(&[], |t| {
        // Five buffered readings sent at once after a reconnect.
        for i in 0..5 {
            t.push(publish(
                500.0 + f64::from(i) * 0.01,
                "s11",
                "devices/s11/telemetry",
                r#"{"temp":21}"#,
            ));
        }
    });
    assert!(of_kind(&f, "burst").is_empty(), "{}", show(&f));
}

/// A device of no model that logs a reading every 2 s and, every 15 minutes, a batch of
/// `batch` readings within one second (TON_IoT's telemetry looks like this); then, at
/// `spike_at`, `spike` readings within one second.
fn batching_device(t: &mut Trace, name: &str, batch: u32, spike_at: f64, spike: u32) {
    t.push(connect(0.0, name, ip(7, 1), 60));
    let mut tt = 1.0;
    while tt < 7200.0 {
        t.push(publish(tt, name, "log/readings", r#"{"v":1}"#));
        if (tt as u64) % 900 == 91 {
            for i in 0..batch {
                t.push(publish(
                    tt + 0.1 + f64::from(i) * 0.8 / f64::from(batch),
                    name,
                    "log/readings",
                    r#"{"v":1}"#,
                ));
            }
        }
        tt += 2.0;
    }
    for i in 0..spike {
        t.push(publish(
            spike_at + f64::from(i) / f64::from(spike),
            name,
            "log/readings",
            r#"{"v":1}"#,
        ));
    }
}

#[test]
fn burst_is_judged_against_the_devices_own_cadence() {
    // Its batches of 50 are its cadence, from the first one on (before `burst.learn` a
    // device without a profile has no known cadence to burst from).
    let mut t = Trace::default();
    batching_device(&mut t, "logger", 50, 7300.0, 0);
    let f = run(&mut Engine::new(DetectConfig::default()), t);
    assert!(of_kind(&f, "burst").is_empty(), "{}", show(&f));
    // Ten times its usual peak is a burst.
    let mut t = Trace::default();
    batching_device(&mut t, "logger", 50, 7300.0, 600);
    let f = run(&mut Engine::new(DetectConfig::default()), t);
    assert!(fired_for(&f, "burst", "logger"), "{}", show(&f));
}

// === the engine ===

#[test]
fn repeated_findings_are_deduplicated_within_the_cooldown_but_escalate() {
    let mut e = Engine::new(DetectConfig::default());
    let mut out = Vec::new();
    let attacker = ip(9, 1);
    // 30 failures in a minute: fires once (High), not 20 times.
    for i in 0..30 {
        e.observe(
            &auth_failure(f64::from(i) * 2.0, attacker, "bad_password", None),
            &mut out,
        );
    }
    let first = of_kind(&out, "credential_brute_force").len();
    assert_eq!(first, 1, "{}", show(&out));
    // 100+ within the window: more severe, fires again within the cooldown.
    for i in 0..200 {
        e.observe(
            &auth_failure(60.0 + f64::from(i) * 0.1, attacker, "bad_password", None),
            &mut out,
        );
    }
    let hits = of_kind(&out, "credential_brute_force");
    assert_eq!(hits.len(), 2, "{}", show(&out));
    assert_eq!(hits[1].severity, Severity::Critical);
    // After the cooldown it fires again, and escalates again.
    for i in 0..200 {
        e.observe(
            &auth_failure(400.0 + f64::from(i) * 0.1, attacker, "bad_password", None),
            &mut out,
        );
    }
    let severities: Vec<_> = of_kind(&out, "credential_brute_force")
        .iter()
        .map(|f| f.severity)
        .collect();
    assert_eq!(
        severities,
        [
            Severity::High,
            Severity::Critical,
            Severity::High,
            Severity::Critical
        ],
        "{}",
        show(&out)
    );
}

#[test]
fn disabled_rules_stay_silent() {
    let mut cfg = DetectConfig::default();
    cfg.credential_brute_force.enabled = false;
    let mut e = Engine::new(cfg);
    let mut out = Vec::new();
    for i in 0..50 {
        e.observe(
            &auth_failure(f64::from(i), ip(9, 2), "bad_password", None),
            &mut out,
        );
    }
    assert!(of_kind(&out, "credential_brute_force").is_empty());
}

#[test]
fn replaying_a_trace_gives_the_same_findings() {
    let build = || {
        let mut trace = Trace::default();
        benign_fleet(&mut trace, 6, 300.0, 3);
        for i in 0..30 {
            trace.push(auth_failure(
                50.0 + f64::from(i),
                ip(9, 3),
                "bad_password",
                None,
            ));
        }
        trace.push(subscribe(120.0, "s1", "#", true));
        trace.push(publish(
            130.0,
            "s2",
            "devices/s2/telemetry",
            r#"{"temp":200}"#,
        ));
        trace
    };
    let a = run(&mut engine_for(DetectConfig::default(), 6, &[]), build());
    let b = run(&mut engine_for(DetectConfig::default(), 6, &[]), build());
    assert!(!a.is_empty());
    assert_eq!(a, b);
}

#[test]
fn rules_list_every_kind_with_a_technique() {
    let rules = Engine::rules();
    assert_eq!(rules.len(), 17);
    for r in rules {
        assert!(r.technique.starts_with("T0"), "{r:?}");
        assert!(!r.description.is_empty());
    }
}

#[test]
fn a_device_evicted_from_the_state_table_keeps_its_model() {
    let cfg = DetectConfig {
        max_devices: 16,
        ..DetectConfig::default()
    };
    let mut e = engine_for(cfg, 0, &["kept"]);
    let mut out = Vec::new();
    // Many other devices push `kept` out of the state table.
    for i in 0..200 {
        e.observe(
            &connect(f64::from(i), &format!("other{i}"), ip(7, 1), 60),
            &mut out,
        );
    }
    assert!(e.device_count() <= 16);
    assert!(e.features(&dev("kept")).is_none(), "not evicted");
    // Back, it is still judged against its model's profile.
    e.observe(
        &publish(300.0, "kept", "devices/kept/telemetry", r#"{"temp":500}"#),
        &mut out,
    );
    assert!(
        fired_for(&out, "out_of_range_reading", "kept"),
        "{}",
        show(&out)
    );
}

#[test]
fn an_invalid_configuration_is_refused() {
    let cfg = DetectConfig {
        cooldown: std::time::Duration::ZERO,
        ..DetectConfig::default()
    };
    assert!(Engine::try_new(cfg).is_err());
    assert!(Engine::try_new(DetectConfig::default()).is_ok());
}

/// A device of the model reporting every `period` seconds (with 5 % jitter).
fn periodic(t: &mut Trace, name: &str, addr: std::net::IpAddr, period: f64, rng: &mut Rng) {
    let mut tt = rng.range(0.0, period);
    t.push(connect(tt, name, addr, 60));
    while tt < END {
        tt += period * rng.range(0.95, 1.05);
        let temp = 21.0 + rng.range(-1.5, 1.5);
        t.push(publish(
            tt,
            name,
            &format!("devices/{name}/telemetry"),
            &format!(r#"{{"temp":{temp:.2},"env":{{"hum":45}}}}"#),
        ));
    }
}

#[test]
fn cohort_deviation_stays_silent_when_devices_report_at_different_allowed_intervals() {
    let f = scenario(&["slow1", "slow2", "fast1"], |t| {
        let mut rng = Rng::new(31);
        // Two set to report every 10 s, one every half second (the profile's rate).
        periodic(t, "slow1", ip(8, 1), 10.0, &mut rng);
        periodic(t, "slow2", ip(8, 2), 10.0, &mut rng);
        periodic(t, "fast1", ip(8, 3), 0.5, &mut rng);
    });
    assert!(of_kind(&f, "cohort_deviation").is_empty(), "{}", show(&f));
}

#[test]
fn cohort_deviation_fires_on_a_device_publishing_far_faster_than_its_cohort() {
    let f = scenario(&["chatty"], |t| {
        let mut rng = Rng::new(37);
        // Eight a second: under the flood threshold (5 × 2/s), far above the fleet's 1/s.
        periodic(t, "chatty", ip(8, 4), 0.125, &mut rng);
    });
    assert!(fired_for(&f, "cohort_deviation", "chatty"), "{}", show(&f));
    assert!(of_kind(&f, "publish_flood").is_empty(), "{}", show(&f));
}

#[test]
fn the_engine_can_move_to_its_own_thread() {
    fn send<T: Send>() {}
    send::<Engine>();
}

#[test]
fn credential_brute_force_stays_silent_on_health_checks_and_a_blocked_device_retrying() {
    let lb = ip(3, 9);
    let f = scenario(&["blocked"], |t| {
        // A load balancer's TCP check every 2 s: the handshake never completes.
        for i in 0..400 {
            t.push(auth_failure(
                f64::from(i) * 2.0,
                lb,
                "eof_during_handshake",
                None,
            ));
        }
        // A device the trust stage blocked, retrying every 3 s with a valid certificate.
        for i in 0..250 {
            t.push(auth_failure(
                10.0 + f64::from(i) * 3.0,
                ip(3, 10),
                "gate_denied",
                Some("blocked"),
            ));
        }
    });
    assert!(
        of_kind(&f, "credential_brute_force").is_empty(),
        "{}",
        show(&f)
    );
}

#[test]
fn malformed_packets_fires_on_plain_bytes_at_the_tls_port() {
    let scanner = ip(9, 5);
    let f = scenario(&[], |t| {
        for i in 0..8 {
            t.push(auth_failure(100.0 + f64::from(i), scanner, "not_tls", None));
        }
    });
    assert!(
        fired_for_addr(&f, "malformed_packets", scanner),
        "{}",
        show(&f)
    );
    assert!(
        of_kind(&f, "credential_brute_force").is_empty(),
        "{}",
        show(&f)
    );
}

#[test]
fn cloned_identity_fires_when_a_second_holder_is_refused_a_takeover() {
    let (a, b) = (ip(5, 5), ip(5, 6));
    let f = scenario(&["held"], |t| {
        t.push(connect(100.0, "held", a, 60));
        for i in 0..3 {
            t.push(auth_failure(
                110.0 + f64::from(i) * 5.0,
                b,
                "takeover_rate_exceeded",
                Some("held"),
            ));
        }
    });
    assert!(fired_for(&f, "cloned_identity", "held"), "{}", show(&f));
}

#[test]
fn features_follow_what_the_device_does() {
    let mut e = engine_for(DetectConfig::default(), 0, &["f1"]);
    let mut out = Vec::new();
    e.observe(&connect(0.0, "f1", ip(6, 9), 120), &mut out);
    for i in 0..120 {
        e.observe(
            &publish(
                1.0 + f64::from(i),
                "f1",
                "devices/f1/telemetry",
                r#"{"temp":20.0,"env":{"hum":50}}"#,
            ),
            &mut out,
        );
    }
    e.observe(&publish(121.5, "f1", "odd/topic", "x"), &mut out);
    e.observe(&subscribe(122.0, "f1", "#", false), &mut out);
    e.observe(
        &disconnect(123.0, "f1", DisconnectCause::KeepAliveTimeout),
        &mut out,
    );
    let f = e.features(&dev("f1")).unwrap();
    assert_eq!(f.publishes, 121);
    assert_eq!(f.connects, 1);
    assert_eq!(f.keep_alive, 120);
    assert_eq!(f.out_of_profile, 1);
    assert_eq!(f.hash_subscriptions, 1);
    assert_eq!(f.refused, 1);
    assert_eq!(f.keep_alive_timeouts, 1);
    assert_eq!(f.distinct_topics, 2);
    assert_eq!(f.peer, Some(ip(6, 9)));
    let t = f.rates.at;
    let r60 = f.rates.msgs_at(gatehouse_detect::W60, t);
    assert!((0.8..1.2).contains(&r60), "{r60}");
    // 120 payloads of 30 bytes, then one of 1 byte weighted 0.05.
    assert!(
        (f64::from(f.size.mean) - 28.55).abs() < 0.01,
        "{:?}",
        f.size
    );
    assert!((f64::from(f.fields[0].mean) - 20.0).abs() < 1e-3);
    assert!((f64::from(f.fields[1].mean) - 50.0).abs() < 1e-3);
    assert!(f.is_finite());
    e.forget(&dev("f1"));
    assert!(e.features(&dev("f1")).is_none());
}

#[test]
fn connect_flood_stays_silent_when_a_large_site_behind_one_address_comes_back() {
    let nat = ip(3, 3);
    let f = scenario(&[], |t| {
        // 200 devices behind one address, all back within three seconds of a restart.
        let mut rng = Rng::new(43);
        for i in 0..200 {
            let name = format!("site{i}");
            let t0 = 400.0 + rng.range(0.0, 3.0);
            t.push(connect(t0, &name, nat, 60));
            t.push(publish(
                t0 + 0.2,
                &name,
                &format!("devices/{name}/telemetry"),
                r#"{"temp":21}"#,
            ));
        }
    });
    assert!(of_kind(&f, "connect_flood").is_empty(), "{}", show(&f));
}
