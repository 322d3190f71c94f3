//! Drives the detection engine over a trace on the trace's own clock.

use std::time::{Duration, SystemTime};

use gatehouse_detect::{DetectConfig, Engine, ProfileView};
use gatehouse_types::Finding;

use crate::trace::{Trace, observed_at};

/// A finding, and the unit whose observation made the engine emit it (`None` when it
/// came out of a tick).
#[derive(Debug, Clone)]
pub struct Emitted {
    /// The finding.
    pub finding: Finding,
    /// The unit of the observation that tipped it.
    pub unit: Option<usize>,
}

/// When trace time jumps further than this between two observations, the engine is
/// ticked for this long and then jumps to the next observation: a trace spanning
/// months costs at most this many ticks per quiet period.
pub const MAX_IDLE_TICKS: u64 = 3600;

/// The engine runs this long (in trace time, ticked every second) after the last
/// observation, so that windows still open when the recording stops can conclude.
pub const DRAIN: Duration = Duration::from_secs(60);

fn whole_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The engine's last tick for `trace`: [`DRAIN`] after its last observation, in whole
/// seconds; `None` for a trace without observations.
pub fn replay_end(trace: &Trace) -> Option<SystemTime> {
    let last = trace.events.iter().map(|e| observed_at(&e.obs)).max()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(whole_secs(last + DRAIN)))
}

/// Runs one engine over `trace`: its observations in time order (ties in trace order),
/// and `tick` at every whole second of trace time from the first observation to
/// [`DRAIN`] after the last.
pub fn run(trace: &Trace, config: DetectConfig) -> Vec<Emitted> {
    run_with_profiles(trace, config, &[])
}

/// [`run`], with these model profiles known to the engine (their topics, rates and
/// payload field ranges), as a server knows the profiles operators uploaded.
pub fn run_with_profiles(
    trace: &Trace,
    config: DetectConfig,
    profiles: &[ProfileView],
) -> Vec<Emitted> {
    let mut engine = Engine::new(config);
    for profile in profiles {
        engine.set_profile(profile.clone());
    }
    for (device, model) in &trace.models {
        engine.set_model(device, Some(model));
    }
    let mut order: Vec<usize> = (0..trace.events.len()).collect();
    order.sort_by_key(|&i| observed_at(&trace.events[i].obs));

    let mut clock = Clock { next: None };
    let mut emitted = Vec::new();
    let mut out = Vec::new();
    let mut last = SystemTime::UNIX_EPOCH;
    for i in order {
        let event = &trace.events[i];
        let at = observed_at(&event.obs);
        last = last.max(at);
        clock.advance(&mut engine, whole_secs(at), &mut out);
        emitted.extend(out.drain(..).map(|finding| Emitted {
            finding,
            unit: None,
        }));
        engine.observe(&event.obs, &mut out);
        emitted.extend(out.drain(..).map(|finding| Emitted {
            finding,
            unit: Some(event.unit),
        }));
    }
    if !trace.events.is_empty() {
        clock.advance(&mut engine, whole_secs(last + DRAIN), &mut out);
        emitted.extend(out.drain(..).map(|finding| Emitted {
            finding,
            unit: None,
        }));
    }
    emitted
}

/// The next whole second of trace time to tick.
struct Clock {
    next: Option<u64>,
}

impl Clock {
    /// Ticks every whole second up to and including `until` (the first call only starts
    /// the clock after `until`).
    fn advance(&mut self, engine: &mut Engine, until: u64, out: &mut Vec<Finding>) {
        let Some(mut s) = self.next else {
            self.next = Some(until + 1);
            return;
        };
        if until.saturating_sub(s) > MAX_IDLE_TICKS {
            // Tick through the first hour of a quiet period, then jump.
            let stop = s + MAX_IDLE_TICKS;
            while s < stop {
                engine.tick(SystemTime::UNIX_EPOCH + Duration::from_secs(s), out);
                s += 1;
            }
            s = until;
        }
        while s <= until {
            engine.tick(SystemTime::UNIX_EPOCH + Duration::from_secs(s), out);
            s += 1;
        }
        self.next = Some(s);
    }
}
