//! The keys file: who may call the gateway, in which role, for which models and accounts,
//! and within which limits. [`load_keys_file`] is the one loader (`serve` at start, every
//! reload, `ccgate check`): raw YAML ([`KeysFile`], also the JSON Schema of `ccgate schema
//! keys`) → every problem with `file:line:column`, or a compiled [`KeySet`].
//!
//! Keys are stored as SHA-256 digests only. [`KeySet::lookup`] hashes the presented key and
//! compares it with every digest in constant time, whatever matches first. The
//! `api_keys` of the process config join the set as client keys without limits, named
//! `api_keys[N]`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_saphyr::{Location, Spanned};

use crate::rules::load::{strip_position_suffix, LoadError, Problem, Problems};

/// Largest keys file (bytes).
pub const MAX_KEYS_BYTES: usize = 1024 * 1024;
/// Most keys in one file.
pub const MAX_KEYS: usize = 10_000;

/// A ccgate keys file: the API keys (as SHA-256 digests), their roles, allow-lists and
/// limits. Reloaded with the rules (SIGHUP, file change, `POST /admin/reload`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "ccgate keys")]
pub struct KeysFile {
    /// The keys. `ccgate keys new NAME` prints a fresh key and its entry.
    #[serde(default)]
    pub keys: Vec<KeyDef>,
}

/// One key.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyDef {
    /// Unique label in logs, metrics and the usage ledger (letters, digits, `_ - . @`; at
    /// most 64 characters).
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// Lower-case hex SHA-256 digest of the key (64 digits); the key itself is never stored.
    #[schemars(with = "String")]
    pub sha256: Spanned<String>,
    /// `client` (the API endpoints) or `admin` (also `/admin/*`). Default `client`.
    #[serde(default)]
    #[schemars(with = "Option<Role>")]
    pub role: Option<Spanned<String>>,
    /// Models this key may ask for (after aliases are resolved; case-insensitive). Unset:
    /// every model.
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// Accounts that may serve this key (names from `accounts:`). Unset: any.
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub accounts: Option<Spanned<Vec<String>>>,
    /// Limits; each is optional.
    #[serde(default)]
    pub limits: Option<LimitsDef>,
    /// When the key stops working (RFC 3339, e.g. `2027-01-01T00:00:00Z`); it then gets 401.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub expires: Option<Spanned<String>>,
}

/// A key's limits.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsDef {
    /// Requests running at once.
    #[serde(default)]
    #[schemars(with = "Option<u64>")]
    pub concurrent: Option<Spanned<i64>>,
    /// Requests per minute (a fixed window: each UTC minute).
    #[serde(default)]
    #[schemars(with = "Option<u64>")]
    pub requests_per_minute: Option<Spanned<i64>>,
    /// Tokens (input + output + cache, as the answers' usage reported) per UTC minute.
    #[serde(default)]
    #[schemars(with = "Option<u64>")]
    pub tokens_per_minute: Option<Spanned<i64>>,
    /// Tokens per UTC day.
    #[serde(default)]
    #[schemars(with = "Option<u64>")]
    pub tokens_per_day: Option<Spanned<i64>>,
    /// Share (0 < share ≤ 1) of its account's 5-hour plan window this key may use: its
    /// part of the tokens ccgate saw on the account in the window times the window's
    /// utilization (docs/governance.md says how exact that is).
    #[serde(default)]
    #[schemars(with = "Option<f64>")]
    pub window_share: Option<Spanned<f64>>,
}

/// A key's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Client,
    Admin,
}

/// A key's limits, checked before anything runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Limits {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrent: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_per_day: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_share: Option<f64>,
}

impl Limits {
    /// Whether any limit is set.
    pub fn any(&self) -> bool {
        *self != Limits::default()
    }
}

/// One compiled key. Its digest never leaves this module.
#[derive(Clone)]
pub struct Key {
    pub name: String,
    digest: [u8; 32],
    pub role: Role,
    /// Lower-cased; None: every model.
    pub models: Option<Vec<String>>,
    /// None: any account.
    pub accounts: Option<Vec<String>>,
    pub limits: Limits,
    /// Unix seconds.
    pub expires: Option<i64>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("models", &self.models)
            .field("accounts", &self.accounts)
            .field("limits", &self.limits)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// Whether this key may ask for `model` (already resolved from an alias).
    pub fn allows_model(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|m| m.iter().any(|a| a.eq_ignore_ascii_case(model)))
    }

    /// Whether the key has expired at `now` (Unix seconds).
    pub fn expired_at(&self, now: i64) -> bool {
        self.expires.is_some_and(|e| now >= e)
    }
}

/// Where a key set came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeysSource {
    /// No keys file configured: only the process config's `api_keys` (if any).
    Config,
    /// The keys file (plus the process config's `api_keys`).
    File,
}

/// The keys in force.
#[derive(Debug, Clone)]
pub struct KeySet {
    keys: Vec<Arc<Key>>,
    /// SHA-256 of the keys file's text (empty without a file).
    sha256: String,
    source: KeysSource,
}

/// The result of [`KeySet::lookup`].
#[derive(Debug, Clone)]
pub enum Lookup {
    /// The set is empty: the gateway is open.
    Open,
    /// No key was presented, or it matches none.
    Unknown,
    /// The key matched but has expired.
    Expired(Arc<Key>),
    Found(Arc<Key>),
}

impl KeySet {
    /// The set of the process config's `api_keys` only (client keys).
    pub fn from_config(api_keys: &[String]) -> KeySet {
        KeySet {
            keys: config_keys(api_keys),
            sha256: String::new(),
            source: KeysSource::Config,
        }
    }

    /// Whether any key exists (then every API call needs one).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn keys(&self) -> &[Arc<Key>] {
        &self.keys
    }

    /// SHA-256 of the keys file's text (empty without one).
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    pub fn source(&self) -> KeysSource {
        self.source
    }

    /// The key `presented` is, by its digest compared with every key's in constant time.
    pub fn lookup(&self, presented: Option<&str>, now: i64) -> Lookup {
        use subtle::{ConditionallySelectable, ConstantTimeEq};
        if self.keys.is_empty() {
            return Lookup::Open;
        }
        let Some(p) = presented else {
            return Lookup::Unknown;
        };
        let digest = sha256(p.as_bytes());
        let mut found = subtle::Choice::from(0);
        let mut index = 0u32;
        for (i, k) in self.keys.iter().enumerate() {
            let eq = k.digest.ct_eq(&digest);
            index = u32::conditional_select(&index, &(i as u32), eq);
            found |= eq;
        }
        if !bool::from(found) {
            return Lookup::Unknown;
        }
        let key = Arc::clone(&self.keys[index as usize]);
        if key.expired_at(now) {
            Lookup::Expired(key)
        } else {
            Lookup::Found(key)
        }
    }

    /// The key named `name`.
    pub fn by_name(&self, name: &str) -> Option<&Arc<Key>> {
        self.keys.iter().find(|k| k.name == name)
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

fn config_keys(api_keys: &[String]) -> Vec<Arc<Key>> {
    api_keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            Arc::new(Key {
                name: format!("api_keys[{i}]"),
                digest: sha256(k.as_bytes()),
                role: Role::Client,
                models: None,
                accounts: None,
                limits: Limits::default(),
                expires: None,
            })
        })
        .collect()
}

/// Why a keys file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeysLoadError {
    #[error("cannot read keys file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Every problem of the file, with line and column.
    #[error("{0}")]
    Invalid(#[from] LoadError),
}

/// The one keys loader: reads `path` (which must exist) and compiles it together with the
/// process config's `api_keys`; `known_accounts` are the names `accounts:` may use (empty:
/// the implicit account, so an `accounts` list is an error). `now` (Unix seconds) decides
/// which expiries are in the past.
pub fn load_keys_file(
    path: &Path,
    api_keys: &[String],
    known_accounts: &[String],
    now: i64,
) -> Result<KeySet, KeysLoadError> {
    use std::io::Read;
    let origin = path.display().to_string();
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_KEYS_BYTES as u64 + 1).read_to_end(&mut bytes))
        .map_err(|source| KeysLoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    if bytes.len() > MAX_KEYS_BYTES {
        return Err(one_problem(
            &origin,
            format!("keys file is larger than {MAX_KEYS_BYTES} bytes"),
        )
        .into());
    }
    let text = String::from_utf8(bytes).map_err(|e| KeysLoadError::Read {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })?;
    Ok(compile_keys(&text, &origin, api_keys, known_accounts, now)?)
}

fn one_problem(origin: &str, message: String) -> LoadError {
    LoadError {
        origin: origin.to_string(),
        problems: vec![Problem {
            line: 0,
            column: 0,
            message,
            snippet: String::new(),
        }],
    }
}

/// Parses and checks keys file text (see [`load_keys_file`]).
pub fn compile_keys(
    text: &str,
    origin: &str,
    api_keys: &[String],
    known_accounts: &[String],
    now: i64,
) -> Result<KeySet, LoadError> {
    let mut p = Problems::new(text);
    // An empty file is refused rather than read as "no keys": a save in progress
    // (truncate, then write) must not open the gateway for a moment.
    if text.trim().is_empty() {
        return Err(one_problem(
            origin,
            "keys file is empty (write `keys: []` for no keys)".into(),
        ));
    }
    let file: KeysFile = match serde_saphyr::from_str(text) {
        Ok(f) => f,
        Err(e) => {
            let loc = e.location().unwrap_or(Location::UNKNOWN);
            let msg = strip_position_suffix(&e.without_snippet().to_string());
            p.at(loc, msg);
            return Err(LoadError {
                origin: origin.to_string(),
                problems: p.list,
            });
        }
    };
    if file.keys.len() > MAX_KEYS {
        return Err(one_problem(
            origin,
            format!("more than {MAX_KEYS} keys ({})", file.keys.len()),
        ));
    }
    let mut keys = config_keys(api_keys);
    let mut names: std::collections::HashMap<String, Location> = Default::default();
    let mut digests: std::collections::HashMap<[u8; 32], Location> = Default::default();
    for k in &keys {
        digests.insert(k.digest, Location::UNKNOWN);
    }
    for def in file.keys {
        let name = def.name.value.trim().to_string();
        if !valid_name(&name) {
            p.at(
                def.name.referenced,
                "name must be 1-64 letters, digits or `_ - . @`",
            );
        } else if let Some(first) = names.get(&name) {
            p.at(
                def.name.referenced,
                format!(
                    "duplicate key name `{name}` (first at line {}:{})",
                    first.line(),
                    first.column()
                ),
            );
        } else {
            names.insert(name.clone(), def.name.referenced);
        }
        let digest = parse_digest(&def.sha256.value);
        match digest {
            None => p.at(
                def.sha256.referenced,
                "sha256 must be 64 hexadecimal digits (the SHA-256 of the key; `ccgate keys new` prints it)",
            ),
            Some(d) => match digests.get(&d) {
                Some(first) if first.line() == 0 => p.at(
                    def.sha256.referenced,
                    "this digest is also a key of the process config's api_keys",
                ),
                Some(first) => p.at(
                    def.sha256.referenced,
                    format!(
                        "duplicate sha256 (first at line {}:{})",
                        first.line(),
                        first.column()
                    ),
                ),
                None => {
                    digests.insert(d, def.sha256.referenced);
                }
            },
        }
        let role = match &def.role {
            None => Role::Client,
            Some(r) => match r.value.as_str() {
                "client" => Role::Client,
                "admin" => Role::Admin,
                other => {
                    p.at(
                        r.referenced,
                        format!("unknown role `{other}`; expected `client` or `admin`"),
                    );
                    Role::Client
                }
            },
        };
        if let Some(accounts) = &def.accounts {
            for a in &accounts.value {
                if !known_accounts.iter().any(|k| k == a) {
                    let known = if known_accounts.is_empty() {
                        "no accounts are configured".to_string()
                    } else {
                        format!("known: {}", known_accounts.join(", "))
                    };
                    p.at(
                        accounts.referenced,
                        format!("unknown account `{a}` ({known})"),
                    );
                }
            }
            if accounts.value.is_empty() {
                p.at(
                    accounts.referenced,
                    "accounts must not be empty (leave it out for any account)",
                );
            }
        }
        let limits = def
            .limits
            .map(|l| compile_limits(l, &mut p))
            .unwrap_or_default();
        let expires = def.expires.as_ref().and_then(|e| {
            match time::OffsetDateTime::parse(
                e.value.trim(),
                &time::format_description::well_known::Rfc3339,
            ) {
                Ok(t) if t.unix_timestamp() <= now => {
                    p.at(
                        e.referenced,
                        format!("expires `{}` is in the past", e.value),
                    );
                    None
                }
                Ok(t) => Some(t.unix_timestamp()),
                Err(_) => {
                    p.at(
                        e.referenced,
                        "expires must be an RFC 3339 time such as 2027-01-01T00:00:00Z",
                    );
                    None
                }
            }
        });
        keys.push(Arc::new(Key {
            name,
            digest: digest.unwrap_or_default(),
            role,
            models: def
                .models
                .map(|m| m.iter().map(|s| s.trim().to_ascii_lowercase()).collect()),
            accounts: def.accounts.map(|a| a.value),
            limits,
            expires,
        }));
    }
    if !p.list.is_empty() {
        p.list.sort_by_key(|q| (q.line, q.column));
        return Err(LoadError {
            origin: origin.to_string(),
            problems: p.list,
        });
    }
    Ok(KeySet {
        keys,
        sha256: crate::rules::sha256_hex(text.as_bytes()),
        source: KeysSource::File,
    })
}

fn compile_limits(l: LimitsDef, p: &mut Problems) -> Limits {
    let mut count = |field: &str, v: Option<Spanned<i64>>| -> Option<u64> {
        let v = v?;
        match u64::try_from(v.value) {
            Ok(n) if n > 0 => Some(n),
            _ => {
                p.at(
                    v.referenced,
                    format!(
                        "limits.{field} must be a positive whole number (got {})",
                        v.value
                    ),
                );
                None
            }
        }
    };
    let concurrent = count("concurrent", l.concurrent);
    let requests_per_minute = count("requests_per_minute", l.requests_per_minute);
    let tokens_per_minute = count("tokens_per_minute", l.tokens_per_minute);
    let tokens_per_day = count("tokens_per_day", l.tokens_per_day);
    let window_share = l.window_share.and_then(|s| {
        if s.value.is_finite() && s.value > 0.0 && s.value <= 1.0 {
            Some(s.value)
        } else {
            p.at(
                s.referenced,
                format!(
                    "limits.window_share must be a number above 0 and at most 1 (got {})",
                    s.value
                ),
            );
            None
        }
    });
    Limits {
        concurrent,
        requests_per_minute,
        tokens_per_minute,
        tokens_per_day,
        window_share,
    }
}

/// Whether `name` is a valid key name (1-64 letters, digits or `_ - . @`).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '@'))
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(chunk).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// A fresh random key (`ccg-` and 64 hex digits: 244 random bits) and its SHA-256 digest.
pub fn new_key() -> (String, String) {
    let a = uuid::Uuid::new_v4().simple().to_string();
    let b = uuid::Uuid::new_v4().simple().to_string();
    let key = format!("ccg-{a}{b}");
    let digest = crate::rules::sha256_hex(key.as_bytes());
    (key, digest)
}

/// The JSON Schema of the keys file, pretty-printed with a trailing newline.
pub fn schema_json() -> String {
    let schema = schemars::schema_for!(KeysFile);
    let mut s = serde_json::to_string_pretty(&schema).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn digest_of(k: &str) -> String {
        crate::rules::sha256_hex(k.as_bytes())
    }

    #[test]
    fn loads_and_looks_up_in_constant_time() {
        let text = format!(
            "keys:\n  - name: alice\n    sha256: \"{}\"\n    role: client\n    models: [Sonnet]\n    limits:\n      concurrent: 2\n    expires: 2099-01-01T00:00:00Z\n  - name: root\n    sha256: {}\n    role: admin\n",
            digest_of("alice-key"),
            digest_of("root-key")
        );
        let set = compile_keys(&text, "keys.yaml", &["legacy".into()], &[], NOW).unwrap();
        assert_eq!(set.len(), 3);
        match set.lookup(Some("alice-key"), NOW) {
            Lookup::Found(k) => {
                assert_eq!(k.name, "alice");
                assert_eq!(k.role, Role::Client);
                assert!(k.allows_model("sonnet"));
                assert!(!k.allows_model("opus"));
                assert_eq!(k.limits.concurrent, Some(2));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(set.lookup(Some("root-key"), NOW), Lookup::Found(k) if k.role == Role::Admin)
        );
        assert!(
            matches!(set.lookup(Some("legacy"), NOW), Lookup::Found(k) if k.name == "api_keys[0]")
        );
        assert!(matches!(set.lookup(Some("nope"), NOW), Lookup::Unknown));
        assert!(matches!(set.lookup(None, NOW), Lookup::Unknown));
        assert!(matches!(
            set.lookup(Some("alice-key"), 4_102_444_800),
            Lookup::Expired(_)
        ));
        assert!(matches!(
            KeySet::from_config(&[]).lookup(None, NOW),
            Lookup::Open
        ));
    }

    #[test]
    fn bad_files_report_every_problem_with_positions() {
        let d = digest_of("x");
        let text = format!(
            "keys:\n  - name: a\n    sha256: \"abc\"\n  - name: a\n    sha256: {d}\n    role: root\n  - name: b\n    sha256: {d}\n    limits:\n      concurrent: -1\n      window_share: 2\n    expires: 2001-01-01T00:00:00Z\n"
        );
        let e = compile_keys(&text, "k.yaml", &[], &[], NOW)
            .unwrap_err()
            .to_string();
        for want in [
            "k.yaml:3:13: sha256 must be 64 hexadecimal digits",
            "k.yaml:4:11: duplicate key name `a` (first at line 2:11)",
            "k.yaml:6:11: unknown role `root`",
            "k.yaml:8:13: duplicate sha256 (first at line 5:13)",
            "k.yaml:10:19: limits.concurrent must be a positive whole number (got -1)",
            "k.yaml:11:21: limits.window_share must be a number above 0 and at most 1",
            "k.yaml:12:14: expires `2001-01-01T00:00:00Z` is in the past",
        ] {
            assert!(e.contains(want), "missing {want:?} in:\n{e}");
        }
        let e = compile_keys("keys:\n  - name: a\n    sha: x\n", "k.yaml", &[], &[], NOW)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("k.yaml:3:5: unknown field `sha`"), "{e}");
        assert!(!e.contains(&d));
        let e = compile_keys(
            &format!("keys:\n  - name: a\n    sha256: {d}\n    accounts: [nobody]\n"),
            "k.yaml",
            &[],
            &["seat-1".into()],
            NOW,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("unknown account `nobody` (known: seat-1)"),
            "{e}"
        );
        let set = compile_keys(
            &format!("keys:\n  - name: a\n    sha256: {d}\n    limits:\n      window_share: 0.5\n"),
            "k.yaml",
            &[],
            &[],
            NOW,
        )
        .unwrap();
        assert_eq!(set.keys()[0].limits.window_share, Some(0.5));
    }

    #[test]
    fn new_keys_are_random_and_match_their_digest() {
        let (k1, d1) = new_key();
        let (k2, _) = new_key();
        assert_ne!(k1, k2);
        assert_eq!(k1.len(), 68);
        assert_eq!(d1, digest_of(&k1));
    }
}
