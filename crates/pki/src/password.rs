//! Password checks under one budget.
//!
//! An Argon2id check is made to be expensive: 19 MiB of memory and tens of milliseconds of
//! CPU each. Operators' logins and legacy devices' MQTT passwords both pay it, and both can
//! be asked for by anyone who reaches a listener, from as many addresses as they have. So
//! every check in the process goes through one [`PasswordChecks`]:
//!
//! - a global rate (checks per second, with a one-second burst) and a bound on the checks
//!   admitted at once (running plus waiting) are tested *before* any work, and what is over
//!   them is shed at once ([`Shed`]), for the caller to answer 429 or 503;
//! - the checks run with memory from a fixed pool of blocks, one per concurrent check,
//!   allocated once and reused, so the memory they take is bounded by
//!   `concurrent × 19 MiB` and does not grow with the load nor stay behind after it;
//! - admission is non-blocking and meant for async code; the check itself blocks, and is
//!   run on a blocking thread by the caller.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use argon2::password_hash::{Output, PasswordHash, PasswordHasher, SaltString, rand_core::OsRng};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use parking_lot::{Condvar, Mutex};

/// How many password checks may run and wait at once, and how often.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordBudget {
    /// Checks running at once; each holds one memory slot of [`SLOT_BLOCKS`] KiB.
    pub concurrent: usize,
    /// Checks admitted beyond those running, waiting for a slot; past this, [`Shed::Busy`].
    pub queue: usize,
    /// Checks started per second across the process (a one-second burst); past this,
    /// [`Shed::Rate`].
    pub per_second: u32,
}

impl Default for PasswordBudget {
    /// Two checks at once (38 MiB), eight waiting, twenty a second.
    fn default() -> Self {
        Self {
            concurrent: 2,
            queue: 8,
            per_second: 20,
        }
    }
}

/// Memory of one slot, in 1 KiB Argon2 blocks: the cost of the hashes Gatehouse makes
/// (Argon2's default, 19 MiB). A stored hash that asks for more is refused.
pub const SLOT_BLOCKS: usize = Params::DEFAULT_M_COST as usize;

/// Why a check was not admitted; nothing was hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Shed {
    /// The process-wide rate of password checks is spent for now.
    #[error("too many password checks across the server; try again in a second")]
    Rate,
    /// As many checks as the budget allows are running or waiting.
    #[error("the server is busy checking passwords; try again shortly")]
    Busy,
}

/// Why a stored hash cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HashError {
    /// It is not a PHC string of an Argon2 hash with a salt and an output.
    #[error("not an Argon2 PHC string: {0}")]
    Malformed(String),
    /// Its memory cost is more than one check may take.
    #[error("its memory cost ({0} KiB) is more than the {SLOT_BLOCKS} KiB a check may use")]
    TooCostly(u32),
}

/// The budget, the memory pool and the counters; share it in an `Arc`.
pub struct PasswordChecks {
    budget: PasswordBudget,
    /// Free memory slots; at most `budget.concurrent` ever exist.
    free: Mutex<Vec<Vec<Block>>>,
    /// Slots made so far.
    made: AtomicUsize,
    freed: Condvar,
    /// Checks admitted and not yet done.
    admitted: AtomicUsize,
    /// Token bucket: (last refill, tokens).
    rate: Mutex<(Instant, f64)>,
    shed_rate: AtomicU64,
    shed_busy: AtomicU64,
    checks: AtomicU64,
    /// Verified against for unknown users, so that they cost what a wrong password does.
    decoy: String,
}

impl std::fmt::Debug for PasswordChecks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordChecks")
            .field("budget", &self.budget)
            .field("admitted", &self.admitted.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// A check that was admitted; it holds its place in the budget until dropped.
#[derive(Debug)]
pub struct Admission {
    checks: Arc<PasswordChecks>,
}

// === impl PasswordChecks ===

impl PasswordChecks {
    /// A budget with no slot allocated yet. `concurrent`, `queue` and `per_second` below 1
    /// are taken as 1.
    pub fn new(budget: PasswordBudget) -> Arc<Self> {
        let budget = PasswordBudget {
            concurrent: budget.concurrent.max(1),
            queue: budget.queue,
            per_second: budget.per_second.max(1),
        };
        Arc::new(Self {
            budget,
            free: Mutex::new(Vec::new()),
            made: AtomicUsize::new(0),
            freed: Condvar::new(),
            admitted: AtomicUsize::new(0),
            rate: Mutex::new((Instant::now(), f64::from(budget.per_second))),
            shed_rate: AtomicU64::new(0),
            shed_busy: AtomicU64::new(0),
            checks: AtomicU64::new(0),
            decoy: hash_password(b"gatehouse-decoy-password").unwrap_or_default(),
        })
    }

    /// The budget in force.
    pub fn budget(&self) -> PasswordBudget {
        self.budget
    }

    /// Admits one check, or sheds it without doing any work. Never blocks.
    pub fn admit(self: &Arc<Self>) -> Result<Admission, Shed> {
        let most = self.budget.concurrent + self.budget.queue;
        let taken = self
            .admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < most).then_some(n + 1)
            });
        if taken.is_err() {
            self.shed_busy.fetch_add(1, Ordering::Relaxed);
            return Err(Shed::Busy);
        }
        let admission = Admission {
            checks: Arc::clone(self),
        };
        {
            let mut rate = self.rate.lock();
            let now = Instant::now();
            let per_second = f64::from(self.budget.per_second);
            rate.1 =
                (rate.1 + now.duration_since(rate.0).as_secs_f64() * per_second).min(per_second);
            rate.0 = now;
            if rate.1 < 1.0 {
                drop(rate);
                self.shed_rate.fetch_add(1, Ordering::Relaxed);
                // Dropping the admission gives its place back.
                return Err(Shed::Rate);
            }
            rate.1 -= 1.0;
        }
        Ok(admission)
    }

    /// Checks shed for the rate, and for the bound on checks at once.
    pub fn shed(&self) -> (u64, u64) {
        (
            self.shed_rate.load(Ordering::Relaxed),
            self.shed_busy.load(Ordering::Relaxed),
        )
    }

    /// Checks run to the end.
    pub fn checked(&self) -> u64 {
        self.checks.load(Ordering::Relaxed)
    }

    /// Checks admitted and not yet done (running or waiting for a slot).
    pub fn in_flight(&self) -> usize {
        self.admitted.load(Ordering::Relaxed)
    }

    /// Memory slots allocated so far: never more than `concurrent`.
    pub fn slots(&self) -> usize {
        self.made.load(Ordering::Relaxed)
    }

    /// Takes a free slot, makes one while fewer than `concurrent` exist, or waits.
    fn take_slot(&self) -> Vec<Block> {
        let mut free = self.free.lock();
        loop {
            if let Some(slot) = free.pop() {
                return slot;
            }
            if self.made.load(Ordering::Acquire) < self.budget.concurrent {
                self.made.fetch_add(1, Ordering::AcqRel);
                drop(free);
                return vec![Block::new(); SLOT_BLOCKS];
            }
            self.freed.wait(&mut free);
        }
    }

    fn give_slot(&self, slot: Vec<Block>) {
        self.free.lock().push(slot);
        self.freed.notify_one();
    }
}

// === impl Admission ===

impl Admission {
    /// Whether `password` matches the PHC string `phc`. Blocks: waits for a memory slot,
    /// then hashes. A malformed or too costly hash never matches.
    pub fn verify(self, phc: &str, password: &[u8]) -> bool {
        let mut slot = self.checks.take_slot();
        let result = verify_with(&mut slot, phc, password);
        self.checks.give_slot(slot);
        self.checks.checks.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(matches) => matches,
            Err(e) => {
                tracing::warn!(error = %e, "a stored password hash cannot be checked");
                false
            }
        }
    }

    /// Spends what a check costs, for a name that has no password: the answer must not
    /// tell a missing account from a wrong password.
    pub fn verify_decoy(self, password: &[u8]) {
        let decoy = self.checks.decoy.clone();
        let _ = self.verify(&decoy, password);
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.checks.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Hashes a password: Argon2id with Argon2's default cost (19 MiB, 2 passes), a random
/// salt, as a PHC string.
pub fn hash_password(password: &[u8]) -> Result<String, HashError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| HashError::Malformed(e.to_string()))
}

/// Checks that `phc` is an Argon2 hash a check can use (within one slot's memory); for
/// configuration and stored hashes, before they are needed.
pub fn check_hash(phc: &str) -> Result<(), HashError> {
    parse(phc).map(|_| ())
}

struct Parsed {
    argon2: Argon2<'static>,
    salt: Vec<u8>,
    expected: Output,
}

fn parse(phc: &str) -> Result<Parsed, HashError> {
    let bad = |e: &dyn std::fmt::Display| HashError::Malformed(e.to_string());
    let hash = PasswordHash::new(phc).map_err(|e| bad(&e))?;
    let algorithm = Algorithm::try_from(hash.algorithm).map_err(|e| bad(&e))?;
    let version = match hash.version {
        Some(v) => Version::try_from(v).map_err(|e| bad(&e))?,
        None => Version::default(),
    };
    let params = Params::try_from(&hash).map_err(|e| bad(&e))?;
    if params.block_count() > SLOT_BLOCKS {
        return Err(HashError::TooCostly(params.m_cost()));
    }
    let salt = hash
        .salt
        .ok_or_else(|| HashError::Malformed("no salt".into()))?;
    let mut buf = [0u8; 64];
    let salt = salt.decode_b64(&mut buf).map_err(|e| bad(&e))?.to_vec();
    let expected = hash
        .hash
        .ok_or_else(|| HashError::Malformed("no hash output".into()))?;
    Ok(Parsed {
        argon2: Argon2::new(algorithm, version, params),
        salt,
        expected,
    })
}

fn verify_with(slot: &mut [Block], phc: &str, password: &[u8]) -> Result<bool, HashError> {
    let parsed = parse(phc)?;
    let mut out = vec![0u8; parsed.expected.len()];
    parsed
        .argon2
        .hash_password_into_with_memory(password, &parsed.salt, &mut out, slot)
        .map_err(|e| HashError::Malformed(e.to_string()))?;
    let got = Output::new(&out).map_err(|e| HashError::Malformed(e.to_string()))?;
    // `Output`'s equality is constant-time.
    Ok(got == parsed.expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checks(concurrent: usize, queue: usize, per_second: u32) -> Arc<PasswordChecks> {
        PasswordChecks::new(PasswordBudget {
            concurrent,
            queue,
            per_second,
        })
    }

    #[test]
    fn right_and_wrong_passwords() {
        let c = checks(1, 0, 100);
        let hash = hash_password(b"s3cret-enough").expect("hash");
        assert!(c.admit().expect("admitted").verify(&hash, b"s3cret-enough"));
        assert!(!c.admit().expect("admitted").verify(&hash, b"wrong"));
        assert!(!c.admit().expect("admitted").verify("not a hash", b"x"));
        assert_eq!(c.slots(), 1);
        assert_eq!(c.in_flight(), 0);
    }

    #[test]
    fn hashes_made_by_the_argon2_crate_verify() {
        use argon2::PasswordVerifier;
        let hash = hash_password(b"pw").expect("hash");
        let parsed = PasswordHash::new(&hash).expect("phc");
        assert!(Argon2::default().verify_password(b"pw", &parsed).is_ok());
    }

    #[test]
    fn costly_hashes_are_refused() {
        let params = Params::new(64 * 1024, 1, 1, None).expect("params");
        let salt = SaltString::generate(&mut OsRng);
        let hash = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(b"pw", &salt)
            .expect("hash")
            .to_string();
        assert_eq!(check_hash(&hash), Err(HashError::TooCostly(64 * 1024)));
        assert!(check_hash(&hash_password(b"pw").expect("hash")).is_ok());
    }

    #[test]
    fn over_the_bound_is_shed_before_any_work() {
        let c = checks(1, 1, 100);
        let a = c.admit().expect("first");
        let b = c.admit().expect("second waits");
        assert_eq!(c.admit().unwrap_err(), Shed::Busy);
        drop(a);
        let _c = c.admit().expect("a place came back");
        drop(b);
        assert_eq!(c.shed(), (0, 1));
        assert_eq!(c.slots(), 0, "nothing was hashed");
    }

    #[test]
    fn over_the_rate_is_shed() {
        let c = checks(4, 100, 3);
        for _ in 0..3 {
            drop(c.admit().expect("within the burst"));
        }
        assert_eq!(c.admit().unwrap_err(), Shed::Rate);
        assert_eq!(c.in_flight(), 0);
    }

    #[test]
    fn concurrent_checks_share_a_fixed_pool() {
        let c = checks(2, 16, 1000);
        let hash = hash_password(b"pw").expect("hash");
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let admission = c.admit().expect("admitted");
                let hash = hash.clone();
                std::thread::spawn(move || admission.verify(&hash, b"pw"))
            })
            .collect();
        for t in threads {
            assert!(t.join().expect("thread"));
        }
        assert!(c.slots() <= 2, "{} slots", c.slots());
        assert_eq!(c.checked(), 8);
    }
}
