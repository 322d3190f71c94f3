//! Threat 16: policy text from any operator allowed to validate a set cannot take the
//! process down. Texts nested too deep are refused before Cedar's recursive parser sees
//! them; texts within the limits parse, validate, evaluate and drop on a thread with the
//! 2 MiB stack of an async worker — if any of it overflowed, this test binary would abort.

use std::collections::BTreeSet;

use gatehouse_trust::policy::limits::DEFAULT_MAX_POLICY_DEPTH;
use gatehouse_trust::policy::{
    DeviceAttrs, PolicyEngine, PolicyError, ProfileTopics, TopicKind, TopicRule, compile,
};
use gatehouse_types::{Score, Tier};

/// The stack tokio gives its worker and blocking threads.
const WORKER_STACK: usize = 2 * 1024 * 1024;

fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(WORKER_STACK)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("the thread ended without a panic")
}

fn permit_when(condition: &str) -> String {
    format!(
        "@id(\"deep\")\npermit (principal, action == Action::\"publish\", resource)\nwhen {{ {condition} }};"
    )
}

/// Conditions of every shape that nests: brackets, sets, unary chains, binary chains,
/// conditionals, attribute access.
fn shapes(n: usize) -> Vec<(&'static str, String)> {
    vec![
        (
            "parentheses",
            format!("{}principal.score > 1{}", "(".repeat(n), ")".repeat(n)),
        ),
        (
            "sets",
            format!("{}1{}.contains(1)", "[".repeat(n), "]".repeat(n)),
        ),
        ("negations", format!("{}true", "!".repeat(n))),
        ("unary minus", format!("{}1 < 0", "-".repeat(n))),
        ("sum", format!("principal.score{} > 0", " + 1".repeat(n))),
        (
            "conjunction",
            format!("true{}", " && principal.score > 1".repeat(n / 3)),
        ),
        (
            "conditionals",
            format!(
                "{}true{}",
                "if true then ".repeat(n / 3),
                " else false".repeat(n / 3)
            ),
        ),
    ]
}

#[test]
fn deeply_nested_policy_is_refused_before_parsing() {
    // 150 parentheses aborted the process before these limits.
    for depth in [DEFAULT_MAX_POLICY_DEPTH + 1, 300, 10_000, 100_000] {
        for (shape, condition) in shapes(depth) {
            let text = permit_when(&condition);
            let refused = on_small_stack(move || {
                let mut engine = PolicyEngine::with_defaults();
                engine.load(&text)
            });
            match refused {
                Err(PolicyError::Limit(why)) => assert!(
                    why.contains("nests deeper") || why.contains("bytes, more than"),
                    "{shape} at {depth}: {why}"
                ),
                other => panic!("{shape} nested {depth} deep was not refused: {other:?}"),
            }
        }
    }
}

#[test]
fn a_refused_text_leaves_the_set_in_force() {
    let mut engine = PolicyEngine::with_defaults();
    let before = engine.generation();
    let text = permit_when(&format!("{}true", "!".repeat(1_000)));
    assert!(matches!(engine.load(&text), Err(PolicyError::Limit(_))));
    assert_eq!(engine.generation(), before);
    assert!(engine.policy_ids().iter().any(|id| id == "trusted-profile"));
}

#[test]
fn policies_at_the_depth_limit_load_evaluate_and_drop_on_a_worker_stack() {
    // As deep as the limit allows, less the levels the surrounding policy takes.
    let n = DEFAULT_MAX_POLICY_DEPTH - 8;
    for (shape, condition) in shapes(n) {
        let text = permit_when(&condition);
        on_small_stack(move || {
            let mut engine = PolicyEngine::with_defaults();
            match engine.add(&text) {
                Ok(()) => {}
                // A shape Cedar refuses (it allows only a few unary operators in a row;
                // a type error) was still parsed and validated within the stack, which
                // is what this test is about.
                Err(PolicyError::Invalid(_) | PolicyError::Parse(_)) => return,
                Err(e) => panic!("{shape} at depth {n}: {e}"),
            }
            let verdict = compile(&device(), &profile(), &engine, 1);
            assert!(verdict.may_connect(), "{shape}");
            drop(engine);
        });
    }
}

fn device() -> DeviceAttrs {
    DeviceAttrs {
        device: "acme/thermo-1".parse().expect("device ref"),
        model: "acme-thermo-2".to_owned(),
        tier: Tier::Trusted,
        score: Score::new(92).expect("score"),
        tags: BTreeSet::new(),
        firmware: "2.4.1".to_owned(),
        assurance: "idevid".to_owned(),
    }
}

fn profile() -> ProfileTopics {
    ProfileTopics {
        publish: vec![TopicRule {
            pattern: "devices/{device}/telemetry/#".to_owned(),
            kind: TopicKind::Telemetry,
            rate_per_sec: None,
            burst: None,
        }],
        subscribe: vec![],
    }
}
