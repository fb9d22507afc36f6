//! Classification cost with a 64 KiB stderr tail: default rules vs a generated 1,000-marker
//! rules set, for noise with no match until the end and for an early structured match.

use ccgate::rules::{FailureFacts, Rules};
use criterion::{black_box, criterion_group, criterion_main, Criterion};

fn noisy_tail(len: usize, suffix: &str) -> String {
    let lines = [
        "[DEBUG] fetching remote settings attempt 3/5 took 4013ms (req_011CT429abcdef)\n",
        "    at processTicksAndRejections (node:internal/process/task_queues:95:5)\n",
        "[claude-code:telemetry] flush ok events=12 bytes=48213 elapsed=12.429 seconds\n",
        "Warning: MCP server \"files\" stderr: listening on 127.0.0.1:40129\n",
    ];
    let mut s = String::with_capacity(len + suffix.len());
    let mut i = 0;
    while s.len() + suffix.len() < len {
        s.push_str(lines[i % lines.len()]);
        i += 1;
    }
    s.truncate(len - suffix.len());
    s.push_str(suffix);
    s
}

fn generated_rules(markers: usize) -> Rules {
    let mut y = String::from("kinds:\n");
    let per_kind = 50;
    for k in 0..markers / per_kind {
        y.push_str(&format!(
            "  - name: gen_{k}\n    status: 502\n    match:\n      markers:\n"
        ));
        for m in 0..per_kind {
            y.push_str(&format!(
                "        - \"generated failure text {k} number {m} xq\"\n"
            ));
        }
        y.push_str("    templates:\n      openai: {error: {message: \"{{message}}\"}}\n      anthropic: {type: error, error: {type: api_error, message: \"{{message}}\"}}\n");
    }
    y.push_str("fallback:\n  name: cli_error\n  status: 502\n  templates:\n    openai: {error: {message: x}}\n    anthropic: {type: error}\n");
    Rules::from_yaml(&y, "generated").expect("generated rules load")
}

fn bench(c: &mut Criterion) {
    let default = Rules::embedded();
    let big = generated_rules(1000);
    let no_match = FailureFacts {
        exit_code: Some(1),
        result_seen: true,
        result_is_error: true,
        stderr_tail: noisy_tail(64 * 1024, "fatal: something unexpected\n"),
        ..Default::default()
    };
    let match_at_end = FailureFacts {
        exit_code: Some(1),
        stderr_tail: noisy_tail(64 * 1024, "Error: Invalid API key · Fix external API key\ngenerated failure text 19 number 49 xq\n"),
        ..Default::default()
    };
    let structured = FailureFacts {
        assistant_error: Some("authentication_failed".into()),
        assistant_error_text: Some("Not logged in · Please run /login".into()),
        result_seen: true,
        result_is_error: true,
        stderr_tail: noisy_tail(64 * 1024, ""),
        ..Default::default()
    };
    assert_eq!(default.classify(&match_at_end).kind, "auth_failure");
    assert_eq!(big.classify(&match_at_end).kind, "gen_19");
    assert_eq!(default.classify(&no_match).kind, "cli_error");
    for (name, rules) in [("default", &default), ("1000_markers", &big)] {
        c.bench_function(&format!("{name}/64k_no_match"), |b| {
            b.iter(|| rules.classify(black_box(&no_match)))
        });
        c.bench_function(&format!("{name}/64k_match_at_end"), |b| {
            b.iter(|| rules.classify(black_box(&match_at_end)))
        });
        c.bench_function(&format!("{name}/64k_structured"), |b| {
            b.iter(|| rules.classify(black_box(&structured)))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
