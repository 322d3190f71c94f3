//! The trust engine. Pure: no I/O, no runtime; everything here is a function of its inputs.
//!
//! - [`profile`]: model profiles (TOML), the manufacturer's statement of how a model behaves.
//! - [`score`]: posture facts → an explainable 0–100 score and a tier.
//! - [`policy`]: Cedar policies → a compiled per-device verdict, and the table of verdicts in
//!   force that the gate reads.
//! - [`posture`]: signed posture reports, parsed and applied to the facts.

pub mod policy;
pub mod posture;
pub mod profile;
pub mod score;
