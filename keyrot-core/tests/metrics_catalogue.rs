//! The metric catalogue is what the alert rules and the manual use: every metric name in
//! `deploy/prometheus/keyrot.rules.yml` is one keyrot records, the manual's operations
//! chapter lists every metric with its type and labels, and every alert's `runbook` names a
//! section of that chapter.

use keyrot_core::{METRICS, MetricKind};
use std::path::Path;

fn read(rel: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every `keyrot_…` word in `text`.
fn metric_words(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("keyrot_"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_metric_in_the_alert_rules_exists() {
    let rules = read("deploy/prometheus/keyrot.rules.yml");
    let exprs: Vec<&str> = rules.lines().filter(|l| !l.trim_start().starts_with('#')).collect();
    let words = metric_words(&exprs.join("\n"));
    assert!(words.len() >= 7, "the rules use keyrot's metrics: {words:?}");
    for w in words {
        assert!(
            METRICS.iter().any(|m| m.name == w),
            "{w} is used by an alert but keyrot records no such metric"
        );
    }
}

#[test]
fn the_manual_table_lists_every_metric() {
    let readme = read("keyrot-core/src/manual/operations.md");
    for m in METRICS {
        let kind = match m.kind {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
            _ => "?",
        };
        let labels = if m.labels.is_empty() {
            "—".to_owned()
        } else {
            m.labels.join(", ")
        };
        let row = format!("| `{}` | {kind} | {labels} |", m.name);
        assert!(
            readme.contains(&row),
            "the manual's metrics table (operations.md) is missing the row starting {row}"
        );
    }
}

/// The heading anchor rustdoc and GitHub give `heading`: lower case, spaces as `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn every_alert_runbook_names_a_section_of_the_manual() {
    const CHAPTER: &str = "keyrot-core/src/manual/operations.md";
    let manual = read(CHAPTER);
    let anchors: Vec<String> = manual
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|h| anchor(h.trim_start_matches('#')))
        .collect();
    let rules = read("deploy/prometheus/keyrot.rules.yml");
    let runbooks: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("runbook: "))
        .map(|v| v.trim_matches('"'))
        .collect();
    assert!(runbooks.len() >= 7, "alerts with a runbook: {runbooks:?}");
    for r in runbooks {
        let (file, section) = r.split_once('#').unwrap_or((r, ""));
        assert_eq!(
            file, CHAPTER,
            "runbook {r} does not point into the manual's operations chapter"
        );
        assert!(
            anchors.iter().any(|a| a == section),
            "runbook {r}: the chapter has no section #{section}"
        );
    }
}
