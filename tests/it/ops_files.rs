//! The operator files in `deploy/`: the Grafana dashboard and the Prometheus alert rules
//! refer only to metrics a running ccgate exports (compared with a real `/metrics` scrape),
//! the dashboard shows every metric, and docs/observability.md's recommended alerts are all there.
//! (`scripts/lint-deploy.sh` runs `promtool check rules` / `promtool test rules` on them.)

use std::collections::BTreeSet;

use crate::harness::{Opts, TestServer};

fn repo_file(path: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Sample names a scrape can hold, from its `# TYPE` lines (`_total` for counters, the
/// `_bucket`/`_sum`/`_count` series of histograms), and the family names.
fn exported(scrape: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut samples = BTreeSet::new();
    let mut families = BTreeSet::new();
    for line in scrape.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').expect("TYPE line");
        families.insert(name.to_string());
        match kind {
            "counter" => {
                samples.insert(format!("{name}_total"));
            }
            "histogram" => {
                for s in ["_bucket", "_sum", "_count"] {
                    samples.insert(format!("{name}{s}"));
                }
            }
            _ => {
                samples.insert(name.to_string());
            }
        }
    }
    (samples, families)
}

fn names_in(text: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"\bccgate_[a-z0-9_]*[a-z0-9]").unwrap();
    re.find_iter(text).map(|m| m.as_str().to_string()).collect()
}

#[tokio::test]
async fn dashboard_and_alerts_use_only_exported_metrics() {
    let server = TestServer::start(Opts::default()).await;
    // Families with labels appear in a scrape once they have a series: answer a request.
    let (status, _, _) = crate::harness::post(
        &server,
        "/v1/chat/completions",
        &crate::harness::chat_body("hi", false),
    )
    .await;
    assert_eq!(status, 200);
    let scrape = crate::harness::client()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (samples, families) = exported(&scrape);
    assert!(
        samples.contains("ccgate_log_lines_dropped_total"),
        "{scrape}"
    );

    // The dashboard: JSON, every panel with a Prometheus query, names all exported.
    let text = repo_file("deploy/grafana/ccgate-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut exprs = String::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel without a query: {panel}");
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            exprs.push_str(expr);
            exprs.push('\n');
        }
    }
    let used = names_in(&exprs);
    let unknown: Vec<_> = used.difference(&samples).collect();
    assert!(
        unknown.is_empty(),
        "dashboard queries unknown metrics {unknown:?}; exported: {samples:?}"
    );
    let unknown: Vec<_> = names_in(&text)
        .into_iter()
        .filter(|n| !samples.contains(n) && !families.contains(n))
        .collect();
    assert!(
        unknown.is_empty(),
        "dashboard names unknown metrics {unknown:?}"
    );
    let missing: Vec<_> = families
        .iter()
        .filter(|f| {
            !used
                .iter()
                .any(|u| u == *f || u.starts_with(&format!("{f}_")))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "metrics without a dashboard panel: {missing:?}"
    );

    // The alert rules.
    let alerts = repo_file("deploy/prometheus/ccgate-alerts.yaml");
    let unknown: Vec<_> = names_in(&alerts)
        .into_iter()
        .filter(|n| !samples.contains(n) && !families.contains(n))
        .collect();
    assert!(
        unknown.is_empty(),
        "alert rules name unknown metrics {unknown:?}"
    );
    for expr in [
        "ccgate_cli_health_ok == 0",
        "ccgate_rules_last_reload_successful == 0",
        "ccgate_requests_total{kind=\"cli_error\"}",
        "ccgate_log_lines_dropped_total",
    ] {
        assert!(alerts.contains(expr), "no alert on {expr}");
    }
    // docs/observability.md names the alert file and every metric the scrape has.
    let page = repo_file("docs/observability.md");
    assert!(page.contains("deploy/prometheus/ccgate-alerts.yaml"));
    assert!(page.contains("deploy/grafana/ccgate-dashboard.json"));
    for s in &samples {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|x| s.strip_suffix(x))
            .filter(|f| families.contains(*f))
            .unwrap_or(s);
        assert!(
            page.contains(&format!("`{family}`")),
            "docs/observability.md does not list {family}"
        );
    }
    server.shutdown().await;
}
