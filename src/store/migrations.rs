//! The schema's versions: one SQL file each (`NNNN_name.sql`), in order, never edited
//! once released — a change is a new file. Statements are separated by `;` at a line's
//! end; `--` comment lines are skipped. The SQL is the portable subset both SQLite and
//! PostgreSQL run.

/// (version, the file's text), in order.
pub(super) const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/0001_usage_ledger.sql")),
    (2, include_str!("migrations/0002_key_counters.sql")),
    (3, include_str!("migrations/0003_stored_responses.sql")),
    (4, include_str!("migrations/0004_account_cooldowns.sql")),
    (5, include_str!("migrations/0005_shared_account_state.sql")),
    (6, include_str!("migrations/0006_ledger_request_counts.sql")),
];

/// The newest schema version this build knows.
pub fn schema_version() -> i64 {
    MIGRATIONS.last().map(|m| m.0).unwrap_or(0)
}

/// The statements of one migration file.
pub(super) fn statements(text: &str) -> Vec<&str> {
    text.split(";\n")
        .map(|s| {
            // Drop leading comment lines.
            let mut s = s.trim();
            while s.starts_with("--") {
                s = s.split_once('\n').map(|(_, r)| r.trim()).unwrap_or("");
            }
            s.trim_end_matches(';').trim()
        })
        .filter(|s| !s.is_empty())
        .collect()
}
