//! Connection storm: N new mutual-TLS connections, C at a time, each a full TCP connect,
//! TLS handshake (no resumption), CONNECT and CONNACK, then a clean DISCONNECT.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use hdrhistogram::Histogram;
use tokio::task::JoinSet;

use super::{Ctx, IDLE_READ_CHUNK, percent};
use crate::bench::broker::Broker;
use crate::bench::flow::latency_histogram;
use crate::bench::machine::CpuMeter;
use crate::bench::report::{Figure, Row};
use crate::client::Client;

/// Keep-alive announced by storm connections (they live for milliseconds).
const STORM_KEEP_ALIVE: u16 = 60;

struct Worker {
    setup: Histogram<u64>,
    ok: u64,
    failed: u64,
    first_error: Option<String>,
}

/// Runs the storm against `broker` and returns its row.
pub async fn run(ctx: &Ctx, broker: &mut Broker) -> anyhow::Result<Row> {
    let n = ctx.args.storm_connections as usize;
    let concurrency = (ctx.args.concurrency as usize).min(n).max(1);
    let addr = broker.addr();
    let next = Arc::new(AtomicUsize::new(0));
    let broker_cpu = CpuMeter::start(Some(broker.pid()));
    let gen_cpu = CpuMeter::start(None);
    let started = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..concurrency {
        let ctx = ctx.clone();
        let next = next.clone();
        set.spawn(async move {
            let mut w = Worker {
                setup: latency_histogram(),
                ok: 0,
                failed: 0,
                first_error: None,
            };
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let opts = ctx.options(addr, i, IDLE_READ_CHUNK, STORM_KEEP_ALIVE);
                let t = Instant::now();
                match Client::connect(&opts).await {
                    Ok((client, _)) => {
                        let ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
                        w.setup.saturating_record(ns.max(1));
                        w.ok += 1;
                        client.disconnect().await;
                    }
                    Err(e) => {
                        w.failed += 1;
                        w.first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            w
        });
    }
    let mut setup = latency_histogram();
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut notes = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(w) => {
                setup.add(&w.setup)?;
                ok += w.ok;
                failed += w.failed;
                if let Some(e) = w.first_error {
                    notes.push(e);
                }
            }
            Err(e) => notes.push(format!("storm worker: {e}")),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    broker.check_alive()?;
    notes.sort();
    notes.dedup();
    notes.truncate(3);
    let q = |quantile: f64| {
        (!setup.is_empty()).then(|| setup.value_at_quantile(quantile) as f64 / 1_000_000.0)
    };
    Ok(Row {
        broker: broker.kind(),
        variant: "-".to_owned(),
        figures: vec![
            Figure::higher("conn/s", ok as f64 / elapsed, 0),
            Figure::lower("p50 setup ms", q(0.50), 2),
            Figure::lower("p99 setup ms", q(0.99), 2),
            Figure::info("connections", ok as f64, 0),
            Figure::lower("failed", failed as f64, 0),
            Figure::info("broker CPU %", percent(broker_cpu.percent()), 1),
            Figure::info("generator CPU %", percent(gen_cpu.percent()), 1),
        ],
        notes,
    })
}
