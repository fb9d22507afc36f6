//! `ccgate usage --by key,model --since 24h`: the usage ledger as a table, read from the
//! same store `serve` writes (`state.path` of the process config).

use std::io::Write;
use std::path::PathBuf;

use crate::config::Overrides;
use crate::store::{parse_group_by, parse_time, usage_csv, Store};

/// `ccgate usage`.
#[derive(Debug, Clone, clap::Args)]
pub struct UsageArgs {
    /// Group by these, comma-separated: key, model, account, api, day or hour.
    #[arg(long, default_value = "key")]
    pub by: String,
    /// From when: a span back from now (`24h`, `7d`), RFC 3339, a date or Unix seconds.
    #[arg(long, default_value = "24h")]
    pub since: String,
    /// Until when (same forms); default now.
    #[arg(long)]
    pub until: Option<String>,
    /// `table`, `csv` or `json`.
    #[arg(long, default_value = "table")]
    pub format: String,
    /// Process config file whose `state.path` names the store, as for `serve`.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The store (overrides `state.path` / CCGATE_STATE__PATH).
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
}

/// `ccgate usage`: exit 0 with the table, 1 when the store cannot be read, 2 for bad
/// arguments.
pub fn usage(args: &UsageArgs, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let now = crate::clock::unix_now() as i64;
    let group_by = match parse_group_by(&args.by) {
        Ok(g) => g,
        Err(e) => {
            let _ = writeln!(err, "--by: {e}");
            return 2;
        }
    };
    let Some(from) = parse_time(&args.since, now) else {
        let _ = writeln!(
            err,
            "--since: `{}` is not a time or a span such as 24h",
            args.since
        );
        return 2;
    };
    let to = match &args.until {
        None => now + 1,
        Some(s) => match parse_time(s, now) {
            Some(t) => t,
            None => {
                let _ = writeln!(err, "--until: `{s}` is not a time");
                return 2;
            }
        },
    };
    if !matches!(args.format.as_str(), "table" | "csv" | "json") {
        let _ = writeln!(err, "--format: use table, csv or json");
        return 2;
    }
    let options = match &args.state {
        Some(p) => crate::store::StoreOptions::sqlite(p),
        None => match super::load_config(args.config.as_deref(), &Overrides::default()) {
            Ok(c) => c.config.state.store_options(),
            Err(e) => {
                let _ = writeln!(err, "{e}");
                return 1;
            }
        },
    };
    if let Some(path) = options.sqlite_path().filter(|p| !p.is_file()) {
        let _ = writeln!(err, "no usage ledger at {} (state.path)", path.display());
        return 1;
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(err, "{e}");
            return 1;
        }
    };
    let rows = rt.block_on(async {
        let store = Store::open_with(options).await?;
        let rows = store.usage(&group_by, from, to).await;
        store.close().await;
        rows
    });
    let rows = match rows {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(err, "{e}");
            return 1;
        }
    };
    let text = match args.format.as_str() {
        "csv" => usage_csv(&group_by, &rows),
        "json" => format!("{}\n", serde_json::json!({"rows": rows})),
        _ => table(&usage_csv(&group_by, &rows)),
    };
    match out.write_all(text.as_bytes()) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

/// A CSV (without quoted commas: names are simple) as aligned columns, numbers right.
fn table(csv: &str) -> String {
    let rows: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            let w = widths[i];
            let numeric = !cell.is_empty() && cell.bytes().all(|b| b.is_ascii_digit());
            if numeric {
                line.push_str(&format!("{cell:>w$}  "));
            } else {
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if rows.len() <= 1 {
        out.push_str("(no requests in this period)\n");
    }
    out
}
