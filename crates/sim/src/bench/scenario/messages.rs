//! The message scenarios: throughput (pairs), latency (paced pairs), fan-in and fan-out.
//! They differ only in who publishes to which topic and who subscribes to what; one runner
//! connects, runs, measures and tears them down.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use gatehouse_mqtt::QoS;
use hdrhistogram::Histogram;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::{BUSY_READ_CHUNK, Ctx, percent};
use crate::bench::broker::{Broker, MAX_QUEUED};
use crate::bench::flow::{
    Flow, Pace, PublishTemplate, Publisher, PublisherStats, Subscriber, SubscriberStats,
    latency_histogram,
};
use crate::bench::machine::CpuMeter;
use crate::bench::report::{Figure, Row};
use crate::client::ClientError;

/// Keep-alive of the clients that carry traffic.
const BUSY_KEEP_ALIVE: u16 = 60;

/// Longest wait for messages still in flight after publishing stops.
const DRAIN: Duration = Duration::from_secs(5);

/// A publisher: its identity, topic and flow.
#[derive(Debug, Clone)]
pub struct PubSpec {
    /// Identity number.
    pub identity: usize,
    /// Topic it publishes to.
    pub topic: String,
    /// Flow (stream) number.
    pub flow: u32,
}

/// A subscriber: its identity and filter.
#[derive(Debug, Clone)]
pub struct SubSpec {
    /// Identity number.
    pub identity: usize,
    /// Filter it subscribes to.
    pub filter: String,
}

/// Who publishes and who subscribes.
#[derive(Debug, Clone)]
pub struct Plan {
    /// QoS of publishes and subscriptions.
    pub qos: QoS,
    /// Publishers.
    pub publishers: Vec<PubSpec>,
    /// Subscribers.
    pub subscribers: Vec<SubSpec>,
    /// Per flow, how many subscribers receive each of its messages.
    pub fanout: Vec<u64>,
    /// How each publisher paces itself.
    pub pace: Pace,
    /// Record publish-to-deliver latency.
    pub latency: bool,
    /// Messages per publisher instead of the measured duration.
    pub messages: Option<u64>,
}

/// What a run measured.
#[derive(Debug)]
pub struct Outcome {
    /// Deliveries per second at the subscribers over the measured interval.
    pub delivered_per_sec: f64,
    /// Publishes per second over the measured interval.
    pub published_per_sec: f64,
    /// Deliveries expected and not seen once publishing stopped and the drain ended.
    pub lost: u64,
    /// Latencies (ns) during the measured interval.
    pub latency: Option<Histogram<u64>>,
    /// Broker CPU over the measured interval, percent of one core.
    pub broker_cpu: Option<f64>,
    /// Load generator CPU, percent of one core.
    pub generator_cpu: Option<f64>,
    /// Errors of individual clients.
    pub errors: Vec<String>,
}

/// Connects `plan`'s clients to `broker`, runs it, and measures it.
pub async fn run(ctx: &Ctx, broker: &mut Broker, plan: &Plan) -> anyhow::Result<Outcome> {
    let args = &ctx.args;
    let addr = broker.addr();
    let payload = args.payload as usize;

    let mut subscribers = ctx
        .connect_many(
            addr,
            plan.subscribers.iter().map(|s| s.identity),
            BUSY_READ_CHUNK,
            BUSY_KEEP_ALIVE,
        )
        .await
        .context("connecting subscribers")?;
    for (client, spec) in subscribers.iter_mut().zip(&plan.subscribers) {
        client
            .subscribe(&spec.filter, plan.qos)
            .await
            .with_context(|| format!("subscribing to {}", spec.filter))?;
    }
    let publishers = ctx
        .connect_many(
            addr,
            plan.publishers.iter().map(|p| p.identity),
            4 * 1024,
            BUSY_KEEP_ALIVE,
        )
        .await
        .context("connecting publishers")?;

    let flows: Arc<[Arc<Flow>]> = plan
        .fanout
        .iter()
        .map(|f| Arc::new(Flow::new(*f)))
        .collect();
    let (stop_pub_tx, stop_pub) = watch::channel(false);
    let (stop_sub_tx, stop_sub) = watch::channel(false);
    let record = plan.latency.then(|| Arc::new(AtomicBool::new(false)));

    let mut sub_set: JoinSet<Result<SubscriberStats, ClientError>> = JoinSet::new();
    for client in subscribers {
        sub_set.spawn(
            Subscriber {
                client,
                flows: flows.clone(),
                record: record.clone(),
                stop: stop_sub.clone(),
            }
            .run(),
        );
    }
    let mut pub_set: JoinSet<Result<PublisherStats, ClientError>> = JoinSet::new();
    for (client, spec) in publishers.into_iter().zip(&plan.publishers) {
        let template = PublishTemplate::new(&spec.topic, plan.qos, payload, ctx.version)?;
        let flow = flows
            .get(spec.flow as usize)
            .context("publisher names a flow that does not exist")?
            .clone();
        pub_set.spawn(
            Publisher {
                client,
                template,
                qos: plan.qos,
                stream: spec.flow,
                flow,
                pace: plan.pace,
                max_messages: plan.messages,
                stop: stop_pub.clone(),
            }
            .run(),
        );
    }

    let delivered = |flows: &[Arc<Flow>]| flows.iter().map(|f| f.delivered()).sum::<u64>();
    let sent = |flows: &[Arc<Flow>]| flows.iter().map(|f| f.sent()).sum::<u64>();
    let expected = |flows: &[Arc<Flow>]| flows.iter().map(|f| f.expected()).sum::<u64>();

    let mut errors = Vec::new();
    let mut pub_stats = Vec::new();
    let (d0, s0, t0, broker_cpu, gen_cpu);
    let (d1, s1, t1);
    if plan.messages.is_some() {
        // Count mode: from the first publish until everything is delivered or drained.
        d0 = 0;
        s0 = 0;
        t0 = Instant::now();
        broker_cpu = CpuMeter::start(Some(broker.pid()));
        gen_cpu = CpuMeter::start(None);
        if let Some(r) = &record {
            r.store(true, Ordering::Relaxed);
        }
        join_publishers(&mut pub_set, &mut pub_stats, &mut errors, None).await;
        drain(&flows, &delivered, &expected).await;
        d1 = delivered(&flows);
        s1 = sent(&flows);
        t1 = Instant::now();
    } else {
        tokio::time::sleep(args.warmup).await;
        broker.check_alive()?;
        d0 = delivered(&flows);
        s0 = sent(&flows);
        t0 = Instant::now();
        broker_cpu = CpuMeter::start(Some(broker.pid()));
        gen_cpu = CpuMeter::start(None);
        if let Some(r) = &record {
            r.store(true, Ordering::Relaxed);
        }
        tokio::time::sleep(args.duration).await;
        d1 = delivered(&flows);
        s1 = sent(&flows);
        t1 = Instant::now();
    }
    if let Some(r) = &record {
        r.store(false, Ordering::Relaxed);
    }
    let broker_cpu = broker_cpu.percent();
    let generator_cpu = gen_cpu.percent();

    let _ = stop_pub_tx.send(true);
    join_publishers(
        &mut pub_set,
        &mut pub_stats,
        &mut errors,
        Some(Duration::from_secs(10)),
    )
    .await;
    drain(&flows, &delivered, &expected).await;
    let lost = expected(&flows).saturating_sub(delivered(&flows));
    let given_up: u64 = pub_stats.iter().map(|s| s.given_up).sum();
    if given_up > 0 {
        errors.push(format!(
            "publishers stalled and gave up waiting for {given_up} deliveries"
        ));
    }
    let _ = stop_sub_tx.send(true);

    let mut latency = plan.latency.then(latency_histogram);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Ok(Some(joined)) = tokio::time::timeout_at(deadline, sub_set.join_next()).await {
        match joined {
            Ok(Ok(stats)) => {
                if let (Some(all), Some(h)) = (latency.as_mut(), stats.latency) {
                    all.add(h).context("merging latency histograms")?;
                }
                if stats.foreign > 0 {
                    errors.push(format!("{} unrecognised messages", stats.foreign));
                }
            }
            Ok(Err(e)) => errors.push(format!("subscriber: {e}")),
            Err(e) => errors.push(format!("subscriber task: {e}")),
        }
    }
    sub_set.abort_all();
    broker.check_alive()?;

    let secs = (t1 - t0).as_secs_f64();
    if secs <= 0.0 {
        bail!("measured interval is empty");
    }
    errors.sort();
    errors.dedup();
    Ok(Outcome {
        delivered_per_sec: (d1 - d0) as f64 / secs,
        published_per_sec: (s1 - s0) as f64 / secs,
        lost,
        latency,
        broker_cpu,
        generator_cpu,
        errors,
    })
}

async fn join_publishers(
    set: &mut JoinSet<Result<PublisherStats, ClientError>>,
    stats: &mut Vec<PublisherStats>,
    errors: &mut Vec<String>,
    timeout: Option<Duration>,
) {
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    loop {
        let next = match deadline {
            Some(d) => match tokio::time::timeout_at(d, set.join_next()).await {
                Ok(next) => next,
                Err(_) => {
                    errors.push("publishers did not stop in time".to_owned());
                    set.abort_all();
                    return;
                }
            },
            None => set.join_next().await,
        };
        match next {
            None => return,
            Some(Ok(Ok(s))) => stats.push(s),
            Some(Ok(Err(e))) => errors.push(format!("publisher: {e}")),
            Some(Err(e)) => errors.push(format!("publisher task: {e}")),
        }
    }
}

/// Waits until every expected delivery arrived, or nothing moved for a second, or
/// [`DRAIN`] passed.
async fn drain(
    flows: &[Arc<Flow>],
    delivered: &dyn Fn(&[Arc<Flow>]) -> u64,
    expected: &dyn Fn(&[Arc<Flow>]) -> u64,
) {
    let deadline = Instant::now() + DRAIN;
    let mut last = delivered(flows);
    let mut last_move = Instant::now();
    while Instant::now() < deadline && delivered(flows) < expected(flows) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = delivered(flows);
        if now != last {
            last = now;
            last_move = Instant::now();
        } else if last_move.elapsed() > Duration::from_secs(1) {
            return;
        }
    }
}

/// The variant name of a QoS row.
pub fn variant(qos: QoS) -> String {
    format!("qos{}", qos as u8)
}

/// Pairs: publisher `i` to `bench/pair/i`, subscriber `i` of it.
pub fn pairs_plan(pairs: u32, qos: QoS, pace: Pace, latency: bool, messages: Option<u64>) -> Plan {
    let n = pairs as usize;
    Plan {
        qos,
        subscribers: (0..n)
            .map(|i| SubSpec {
                identity: i,
                filter: format!("bench/pair/{i}"),
            })
            .collect(),
        publishers: (0..n)
            .map(|i| PubSpec {
                identity: n + i,
                topic: format!("bench/pair/{i}"),
                flow: i as u32,
            })
            .collect(),
        fanout: vec![1; n],
        pace,
        latency,
        messages,
    }
}

/// The window of each fan-in publisher: `window`, but no more than the subscriber's share of
/// a session queue ([`MAX_QUEUED`]), so that all publishers together do not overflow the
/// one subscriber's session and make either broker drop messages by design.
pub fn fanin_window(publishers: u32, window: u32) -> u32 {
    (MAX_QUEUED / publishers.max(1)).clamp(1, window.max(1))
}

/// Fan-in: `publishers` each on `bench/fanin/i`, one subscriber of `bench/fanin/+`.
pub fn fanin_plan(publishers: u32, qos: QoS, window: u32, messages: Option<u64>) -> Plan {
    let n = publishers as usize;
    let window = fanin_window(publishers, window);
    Plan {
        qos,
        subscribers: vec![SubSpec {
            identity: 0,
            filter: "bench/fanin/+".to_owned(),
        }],
        publishers: (0..n)
            .map(|i| PubSpec {
                identity: 1 + i,
                topic: format!("bench/fanin/{i}"),
                flow: i as u32,
            })
            .collect(),
        fanout: vec![1; n],
        pace: Pace::Window(window),
        latency: false,
        messages,
    }
}

/// Fan-out: one publisher on `bench/fanout`, `subscribers` of it.
pub fn fanout_plan(subscribers: u32, qos: QoS, window: u32, messages: Option<u64>) -> Plan {
    let n = subscribers as usize;
    Plan {
        qos,
        subscribers: (0..n)
            .map(|i| SubSpec {
                identity: i,
                filter: "bench/fanout".to_owned(),
            })
            .collect(),
        publishers: vec![PubSpec {
            identity: n,
            topic: "bench/fanout".to_owned(),
            flow: 0,
        }],
        fanout: vec![n as u64],
        pace: Pace::Window(window),
        latency: false,
        messages,
    }
}

/// Throughput figures of a run.
pub fn throughput_row(outcome: &Outcome, payload: u32) -> Vec<Figure> {
    vec![
        Figure::higher("delivered msg/s", outcome.delivered_per_sec, 0),
        Figure::higher(
            "delivered MiB/s",
            outcome.delivered_per_sec * f64::from(payload) / (1u64 << 20) as f64,
            2,
        ),
        Figure::info("published msg/s", outcome.published_per_sec, 0),
        Figure::lower("lost", outcome.lost as f64, 0),
        Figure::info("broker CPU %", percent(outcome.broker_cpu), 1),
        Figure::info("generator CPU %", percent(outcome.generator_cpu), 1),
    ]
}

/// Latency figures of a run, in microseconds.
pub fn latency_row(outcome: &Outcome) -> Vec<Figure> {
    let q = |quantile: f64| {
        outcome
            .latency
            .as_ref()
            .filter(|h| !h.is_empty())
            .map(|h| h.value_at_quantile(quantile) as f64 / 1_000.0)
    };
    let max = outcome
        .latency
        .as_ref()
        .filter(|h| !h.is_empty())
        .map(|h| h.max() as f64 / 1_000.0);
    vec![
        Figure::lower("p50 µs", q(0.50), 1),
        Figure::lower("p99 µs", q(0.99), 1),
        Figure::lower("p99.9 µs", q(0.999), 1),
        Figure::info("max µs", max, 1),
        Figure::info("delivered msg/s", outcome.delivered_per_sec, 0),
        Figure::lower("lost", outcome.lost as f64, 0),
        Figure::info("broker CPU %", percent(outcome.broker_cpu), 1),
    ]
}

/// A row from a run, with its errors as notes.
pub fn row(broker: &Broker, variant: String, figures: Vec<Figure>, outcome: &Outcome) -> Row {
    Row {
        broker: broker.kind(),
        variant,
        figures,
        notes: outcome.errors.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fanin_windows_fit_one_session_queue() {
        assert_eq!(fanin_window(100, 64), 10);
        assert_eq!(fanin_window(4, 64), 64);
        assert_eq!(fanin_window(5000, 64), 1);
        assert!(fanin_window(100, 64) * 100 <= MAX_QUEUED);
    }
}
