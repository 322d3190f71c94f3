//! Bounds on policy text, checked before Cedar's parser sees it.
//!
//! Cedar's parser, validator, evaluator and even the drop of a parsed policy recurse over
//! the expression tree, so a short text nested deeply enough (`((((…))))`, `!!!!…`, a chain
//! of a thousand `+`) overflows a thread's stack, and a stack overflow aborts the whole
//! process — broker, CA and API together. Policy text reaches us from any operator allowed
//! to *validate* a set, so its depth is bounded here, by a lexical scan that cannot recurse,
//! before anything else touches it.
//!
//! The scan over-estimates the depth of the tree Cedar would build: every bracket opens a
//! level, and every operator inside a level (binary, unary, `.` access, `if`, `has`,
//! `like`, `is`, `in`) may add one, since chains like `a + b + c` nest left-deep.

use std::fmt;

/// The size and depth a policy text may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyLimits {
    /// Largest policy text accepted, in bytes.
    pub max_bytes: usize,
    /// Deepest expression accepted, as estimated by [`nesting`].
    pub max_depth: usize,
}

/// Largest policy text accepted by default: 256 KiB, some hundred times the default set.
pub const DEFAULT_MAX_POLICY_BYTES: usize = 256 * 1024;

/// Deepest expression accepted by default. The default set's deepest is 12; a `when` clause
/// joining forty conditions with `&&` stays under 160. Evaluation at this depth fits in a
/// 2 MiB thread stack in a debug build (see the tests).
pub const DEFAULT_MAX_POLICY_DEPTH: usize = 160;

impl Default for PolicyLimits {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_POLICY_BYTES,
            max_depth: DEFAULT_MAX_POLICY_DEPTH,
        }
    }
}

/// Why a text was refused before parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LimitError {
    /// The text is longer than [`PolicyLimits::max_bytes`].
    TooLarge {
        /// Its length in bytes.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// An expression nests deeper than [`PolicyLimits::max_depth`].
    TooDeep {
        /// Line of the token where the limit was passed (1-based).
        line: usize,
        /// Column of that token, in characters (1-based).
        column: usize,
        /// The limit.
        limit: usize,
    },
}

impl fmt::Display for LimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge { bytes, limit } => write!(
                f,
                "the policy text is {bytes} bytes, more than the {limit} allowed"
            ),
            Self::TooDeep {
                line,
                column,
                limit,
            } => write!(
                f,
                "at line {line}, column {column}: the expression nests deeper than the {limit} levels allowed"
            ),
        }
    }
}

/// Checks `text` against `limits` without parsing it.
pub fn check(text: &str, limits: &PolicyLimits) -> Result<(), LimitError> {
    if text.len() > limits.max_bytes {
        return Err(LimitError::TooLarge {
            bytes: text.len(),
            limit: limits.max_bytes,
        });
    }
    let (depth, at) = nesting(text);
    if depth > limits.max_depth {
        // `nesting` reports where the depth first passed any value; find where it passed
        // the limit for the message.
        let (line, column) = position_of_depth(text, limits.max_depth + 1).unwrap_or(at);
        return Err(LimitError::TooDeep {
            line,
            column,
            limit: limits.max_depth,
        });
    }
    Ok(())
}

/// The estimated expression depth of `text` and the (line, column) where it was reached.
pub fn nesting(text: &str) -> (usize, (usize, usize)) {
    let mut max = 1;
    let mut at = (1, 1);
    scan(text, |depth, pos| {
        if depth > max {
            max = depth;
            at = pos;
        }
        false
    });
    (max, at)
}

fn position_of_depth(text: &str, depth: usize) -> Option<(usize, usize)> {
    let mut found = None;
    scan(text, |d, pos| {
        if d >= depth {
            found = Some(pos);
            true
        } else {
            false
        }
    });
    found
}

/// Walks the tokens that matter for depth, calling `seen(depth, (line, column))` after each
/// one that changes it; stops early when `seen` returns true. Iterative: a stack of
/// per-level operator counts, no recursion.
fn scan(text: &str, mut seen: impl FnMut(usize, (usize, usize)) -> bool) {
    // One entry per open bracket (the first for the top level): operators seen in it.
    let mut levels: Vec<usize> = vec![0];
    // Sum over `levels` of (1 + operators), kept up to date.
    let mut depth = 1usize;
    let chars: Vec<char> = text.chars().collect();
    let (mut line, mut col) = (1usize, 1usize);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let pos = (line, col);
        let mut step = 1;
        let mut op = false;
        match c {
            '"' => {
                // A string literal: skip to its unescaped closing quote.
                let mut j = i + 1;
                while j < chars.len() && chars[j] != '"' {
                    j += if chars[j] == '\\' { 2 } else { 1 };
                }
                step = (j + 1).min(chars.len()) - i;
            }
            '/' if chars.get(i + 1) == Some(&'/') => {
                let mut j = i;
                while j < chars.len() && chars[j] != '\n' {
                    j += 1;
                }
                step = j - i;
            }
            '(' | '[' | '{' => {
                levels.push(0);
                depth += 1;
                if seen(depth, pos) {
                    return;
                }
            }
            ')' | ']' | '}' if levels.len() > 1 => {
                let ops = levels.pop().unwrap_or(0);
                depth -= ops + 1;
            }
            ';' if levels.len() == 1 => {
                // A new policy starts.
                depth -= levels[0];
                levels[0] = 0;
            }
            '&' | '|' | '=' if chars.get(i + 1) == Some(&c) => {
                op = true;
                step = 2;
            }
            '!' | '<' | '>' => {
                op = true;
                if chars.get(i + 1) == Some(&'=') {
                    step = 2;
                }
            }
            '+' | '-' | '*' | '.' => op = true,
            c if c.is_alphabetic() || c == '_' => {
                let mut j = i;
                while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_') {
                    j += 1;
                }
                let word: String = chars[i..j].iter().collect();
                op = matches!(
                    word.as_str(),
                    "if" | "then" | "else" | "has" | "like" | "is" | "in"
                );
                step = j - i;
            }
            _ => {}
        }
        if op {
            if let Some(top) = levels.last_mut() {
                *top += 1;
            }
            depth += 1;
            if seen(depth, pos) {
                return;
            }
        }
        for &ch in &chars[i..(i + step).min(chars.len())] {
            if ch == '\n' {
                line += 1;
                col = 1;
            } else {
                col += 1;
            }
        }
        i += step;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brackets_and_operators_add_depth_and_strings_and_comments_do_not() {
        assert_eq!(nesting("").0, 1);
        assert_eq!(nesting("((()))").0, 4);
        assert_eq!(nesting("a && b && c").0, 3);
        assert_eq!(nesting("\"((((((((\" // ((((((((\n").0, 1);
        assert_eq!(nesting("\"\\\"((((\"").0, 1);
        // Policies are counted one at a time.
        assert_eq!(nesting("a && b; c && d;").0, 2);
    }

    #[test]
    fn too_deep_names_the_place() {
        let text = format!(
            "permit(principal, action, resource)\nwhen {{ {}1 }};",
            "(".repeat(500)
        );
        let err = check(&text, &PolicyLimits::default()).unwrap_err();
        match err {
            LimitError::TooDeep { line, limit, .. } => {
                assert_eq!(line, 2);
                assert_eq!(limit, DEFAULT_MAX_POLICY_DEPTH);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn the_default_set_is_well_inside_the_limit() {
        let (depth, _) = nesting(super::super::DEFAULT_POLICIES);
        assert!(depth <= 16, "default set depth {depth}");
    }

    #[test]
    fn too_large_is_refused() {
        let limits = PolicyLimits {
            max_bytes: 10,
            max_depth: 100,
        };
        assert_eq!(
            check("01234567890", &limits),
            Err(LimitError::TooLarge {
                bytes: 11,
                limit: 10
            })
        );
    }
}
