//! Feeds arbitrary bytes to the replay's capture reader (pcap/pcapng blocks, link, IP and
//! TCP headers, TCP reassembly, MQTT decoding of the client stream), and to the frame
//! parser alone under every link type it knows.
//!
//! Beyond "no panic": a capture that reads gives a trace that is consistent with itself
//! (every frame counted once, one unit per flow, every observation pointing at a unit and
//! counted by kind, units that end no earlier than they start), and a frame that parses
//! as TCP gives a payload that lies inside the frame, after its headers.

#![no_main]

use gatehouse_replay::capture::frame::{LinkType, Parsed, parse_frame};
use gatehouse_replay::{CaptureOptions, capture_trace};
use gatehouse_types::Observation;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut opts = CaptureOptions::new("fuzz");
    opts.reassembly_limit = 4096;
    opts.max_packet_size = 8192;
    if let Ok(trace) = capture_trace(data, &opts) {
        let x = &trace.extraction;
        assert!(x.tcp_segments + x.skipped_frames + x.bad_frames <= x.frames);
        assert_eq!(x.flows, trace.units.len() as u64);
        assert!(x.flows_with_syn <= x.flows);
        let mut counts = [0u64; 5];
        for e in &trace.events {
            assert!(e.unit < trace.units.len());
            match &e.obs {
                Observation::Connect(_) => counts[0] += 1,
                Observation::AuthFailure(_) => counts[1] += 1,
                Observation::Subscribe(_) => counts[2] += 1,
                Observation::Publish(p) => {
                    counts[3] += 1;
                    assert!(p.payload.len() <= opts.payload_bytes);
                    assert!(p.payload.len() as u64 <= u64::from(p.size));
                }
                Observation::Disconnect { .. } => counts[4] += 1,
                _ => {}
            }
        }
        let disconnects: u64 = x.disconnects.values().sum();
        assert_eq!(
            counts,
            [
                x.connects,
                x.auth_failures,
                x.subscribes,
                x.publishes,
                disconnects
            ]
        );
        for u in &trace.units {
            assert!(u.first <= u.last);
        }
    }
    for link in [
        LinkType::Null,
        LinkType::Ethernet,
        LinkType::RawIp,
        LinkType::LinuxSll,
        LinkType::LinuxSll2,
    ] {
        if let Ok(Parsed::Tcp(seg)) = parse_frame(link, data) {
            let start = seg.payload.as_ptr() as usize - data.as_ptr() as usize;
            assert!(start >= 40, "a TCP payload follows an IP and a TCP header");
            assert!(start + seg.payload.len() <= data.len());
        }
    }
});
