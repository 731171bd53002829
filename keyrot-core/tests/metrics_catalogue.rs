//! The metric catalogue is what the alert rules and the README use: every metric name in
//! `deploy/prometheus/keyrot.rules.yml` is one keyrot records, and the README's table lists
//! every metric with its type and labels.

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
fn the_readme_table_lists_every_metric() {
    let readme = read("README.md");
    for m in METRICS {
        let kind = match m.kind {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
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
            "README metrics table is missing the row starting {row}"
        );
    }
}
