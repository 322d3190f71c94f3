//! Narration of a fleet run: progress bars and a live line on a terminal, plain lines
//! otherwise (a log, CI), nothing at all for tests.

use std::io::IsTerminal as _;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Where a run tells what it is doing.
#[derive(Debug, Clone)]
pub struct Narrator {
    mode: Mode,
}

#[derive(Debug, Clone)]
enum Mode {
    Quiet,
    Lines,
    Bars(MultiProgress),
}

/// One phase's progress.
#[derive(Debug)]
pub struct Phase {
    bar: Option<ProgressBar>,
    name: String,
    total: u64,
    lines: bool,
}

impl Narrator {
    /// Bars on a terminal's standard error, plain lines when it is not one.
    pub fn stderr() -> Self {
        if std::io::stderr().is_terminal() {
            Self {
                mode: Mode::Bars(MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
            }
        } else {
            Self { mode: Mode::Lines }
        }
    }

    /// Says nothing.
    pub fn quiet() -> Self {
        Self { mode: Mode::Quiet }
    }

    /// A line of narration.
    pub fn say(&self, line: impl AsRef<str>) {
        match &self.mode {
            Mode::Quiet => {}
            Mode::Lines => eprintln!("{}", line.as_ref()),
            Mode::Bars(m) => {
                let _ = m.println(line.as_ref());
            }
        }
    }

    /// A phase of `total` steps (0: a spinner).
    pub fn phase(&self, name: &str, total: u64) -> Phase {
        let bar = match &self.mode {
            Mode::Bars(m) => {
                let bar = if total > 0 {
                    let b = m.add(ProgressBar::new(total));
                    b.set_style(
                        ProgressStyle::with_template(
                            "{prefix:>12} [{bar:32}] {pos}/{len} {per_sec:>10} {msg}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                    );
                    b
                } else {
                    let b = m.add(ProgressBar::new_spinner());
                    b.set_style(
                        ProgressStyle::with_template("{prefix:>12} {spinner} {elapsed} {msg}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    b.enable_steady_tick(Duration::from_millis(120));
                    b
                };
                bar.set_prefix(name.to_owned());
                Some(bar)
            }
            _ => None,
        };
        Phase {
            bar,
            name: name.to_owned(),
            total,
            lines: matches!(self.mode, Mode::Lines),
        }
    }
}

impl Phase {
    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    /// The live line beside the bar (on a terminal only).
    pub fn set_message(&self, msg: impl Into<String>) {
        if let Some(b) = &self.bar {
            b.set_message(msg.into());
        }
    }

    /// Ends the phase with a summary line.
    pub fn finish(self, summary: impl Into<String>) {
        let summary = summary.into();
        match &self.bar {
            Some(b) => {
                b.set_style(
                    ProgressStyle::with_template("{prefix:>12} {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                b.finish_with_message(summary);
            }
            None if self.lines => {
                let _ = self.total;
                eprintln!("{:>12} {summary}", self.name);
            }
            None => {}
        }
    }
}
