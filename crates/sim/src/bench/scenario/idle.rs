//! Idle connections: open N mutual-TLS connections (keep-alive 300 s by default), hold
//! them, and weigh the broker: resident memory before and after, per connection held.
//!
//! One task per connection, each holding only its TLS stream and two small buffers. Client
//! sockets are spread over several loopback source addresses, so the count is not capped by
//! one address's ephemeral ports. Opening stops early once connections keep failing (the
//! broker's or this process's open-file limit, typically), and what was held is reported.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gatehouse_mqtt::Packet;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::{Ctx, IDLE_READ_CHUNK};
use crate::bench::broker::Broker;
use crate::bench::machine::{self, nofile_limit_of};
use crate::bench::report::{Figure, Row};
use crate::client::Client;

/// Failed connection attempts after which no more are started.
const FAILURE_LIMIT: u64 = 100;

/// File descriptors kept free for everything but the connections (runtime, /proc reads).
const FD_RESERVE: u64 = 256;

/// Set once the load generator has been weighed: memory it freed after one broker's run is
/// reused for the next, so only its first idle run shows what connections cost it.
static GENERATOR_WEIGHED: AtomicBool = AtomicBool::new(false);

/// Time the broker is given to settle before it is weighed.
const SETTLE: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
struct Counters {
    held: AtomicU64,
    opened: AtomicU64,
    failed: AtomicU64,
    skipped: AtomicU64,
    dropped: AtomicU64,
}

impl Counters {
    fn settled(&self) -> u64 {
        self.opened.load(Ordering::Acquire)
            + self.failed.load(Ordering::Acquire)
            + self.skipped.load(Ordering::Acquire)
    }
}

/// The first connection error seen.
#[derive(Debug, Default)]
struct FirstError(Mutex<Option<String>>);

impl FirstError {
    fn set(&self, e: String) {
        if let Ok(mut slot) = self.0.lock() {
            slot.get_or_insert(e);
        }
    }

    fn take(&self) -> Option<String> {
        self.0.lock().ok().and_then(|mut s| s.take())
    }
}

/// Runs the idle scenario against `broker` and returns its row.
pub async fn run(ctx: &Ctx, broker: &mut Broker) -> anyhow::Result<Row> {
    let requested = ctx.args.idle_connections as usize;
    let own_limit = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(u64::MAX, |(soft, _)| soft);
    let n =
        requested.min(usize::try_from(own_limit.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX));
    let keep_alive = ctx.args.keep_alive;
    let addr = broker.addr();

    tokio::time::sleep(Duration::from_millis(500)).await;
    let broker_before = broker.rss()?;
    let self_before = machine::self_rss_bytes()?;

    let counters = Arc::new(Counters::default());
    let first_error = Arc::new(FirstError::default());
    let permits = Arc::new(Semaphore::new(ctx.args.concurrency.max(1) as usize));
    let (stop_tx, stop) = watch::channel(false);
    let started = Instant::now();
    let mut set = JoinSet::new();
    for i in 0..n {
        let opts = ctx.options(addr, i, IDLE_READ_CHUNK, keep_alive);
        let counters = counters.clone();
        let first_error = first_error.clone();
        let permits = permits.clone();
        let mut stop = stop.clone();
        set.spawn(async move {
            let connected = {
                let Ok(_permit) = permits.acquire().await else {
                    return;
                };
                if counters.failed.load(Ordering::Acquire) >= FAILURE_LIMIT || *stop.borrow() {
                    counters.skipped.fetch_add(1, Ordering::AcqRel);
                    return;
                }
                Client::connect(&opts).await
            };
            let mut client = match connected {
                Ok((client, _)) => client,
                Err(e) => {
                    counters.failed.fetch_add(1, Ordering::AcqRel);
                    first_error.set(e.to_string());
                    return;
                }
            };
            counters.held.fetch_add(1, Ordering::AcqRel);
            counters.opened.fetch_add(1, Ordering::AcqRel);
            hold(&mut client, keep_alive, &mut stop, &counters).await;
            counters.held.fetch_sub(1, Ordering::AcqRel);
            if *stop.borrow() {
                client.disconnect().await;
            }
        });
    }

    // Opening is bounded: at worst every connection times out, C at a time.
    let open_deadline = Instant::now()
        + Duration::from_secs(30)
        + super::CONNECT_TIMEOUT * (n as u32).div_ceil(ctx.args.concurrency.max(1));
    let mut last_progress = (counters.settled(), Instant::now());
    while counters.settled() < n as u64 && Instant::now() < open_deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        broker.check_alive()?;
        let settled = counters.settled();
        if settled != last_progress.0 {
            last_progress = (settled, Instant::now());
        } else if last_progress.1.elapsed() > super::CONNECT_TIMEOUT * 2 {
            break;
        }
    }
    let open_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(SETTLE).await;

    let held_open = counters.held.load(Ordering::Acquire);
    let broker_after = broker.rss()?;
    let self_after = machine::self_rss_bytes()?;
    tokio::time::sleep(ctx.args.idle_hold).await;
    broker.check_alive()?;
    let held = counters.held.load(Ordering::Acquire);

    let _ = stop_tx.send(true);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while let Ok(Some(_)) = tokio::time::timeout_at(deadline, set.join_next()).await {}
    set.abort_all();

    let generator_first = !GENERATOR_WEIGHED.swap(true, Ordering::AcqRel);
    let per_conn = |before: u64, after: u64| {
        (held_open > 0).then(|| after.saturating_sub(before) as f64 / held_open as f64)
    };
    let mut notes = Vec::new();
    if n < requested {
        notes.push(format!(
            "attempted {n} of {requested}: this process may open {own_limit} files \
             (RLIMIT_NOFILE; its hard limit can only be raised by a privileged process)"
        ));
    }
    let failed = counters.failed.load(Ordering::Acquire);
    let skipped = counters.skipped.load(Ordering::Acquire);
    if let Some(e) = first_error.take() {
        notes.push(format!("first failure: {e}"));
    }
    if skipped > 0 {
        notes.push(format!(
            "{skipped} connections not attempted after {failed} failures"
        ));
    }
    if held < requested as u64 {
        let limits = format!(
            "open-file limits: broker {}, load generator {}",
            nofile_limit_of(broker.pid()).map_or("?".to_owned(), |l| l.to_string()),
            nofile_limit_of(std::process::id()).map_or("?".to_owned(), |l| l.to_string()),
        );
        notes.push(format!("held {held} of {requested}; {limits}"));
    }
    Ok(Row {
        broker: broker.kind(),
        variant: "-".to_owned(),
        figures: vec![
            Figure::higher("held", held as f64, 0),
            Figure::lower("broker B/conn", per_conn(broker_before, broker_after), 0),
            Figure::info(
                "broker RSS MiB",
                broker_after as f64 / (1u64 << 20) as f64,
                1,
            ),
            Figure::info(
                "generator B/conn",
                per_conn(self_before, self_after).filter(|_| generator_first),
                0,
            ),
            Figure::info("open conn/s", held_open as f64 / open_secs, 0),
            Figure::lower("failed", failed as f64, 0),
            Figure::lower(
                "dropped",
                counters.dropped.load(Ordering::Acquire) as f64,
                0,
            ),
        ],
        notes,
    })
}

/// Holds an idle connection: answers nothing, pings at three quarters of the keep-alive,
/// and returns when stopped or when the broker closes it.
async fn hold(
    client: &mut Client,
    keep_alive: u16,
    stop: &mut watch::Receiver<bool>,
    counters: &Counters,
) {
    let keep_alive = client.server_limits().keep_alive.unwrap_or(keep_alive);
    let interval = if keep_alive > 0 {
        Duration::from_secs(u64::from(keep_alive)) * 3 / 4
    } else {
        Duration::from_secs(24 * 3600)
    };
    let mut next_ping = tokio::time::Instant::now() + interval;
    loop {
        tokio::select! {
            biased;
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
            }
            packet = client.recv() => match packet {
                Ok(Packet::Disconnect(_)) | Err(_) => {
                    counters.dropped.fetch_add(1, Ordering::AcqRel);
                    return;
                }
                Ok(_) => {}
            },
            () = tokio::time::sleep_until(next_ping) => {
                if client.ping().await.is_err() {
                    counters.dropped.fetch_add(1, Ordering::AcqRel);
                    return;
                }
                next_ping += interval;
            }
        }
    }
}
