//! The validated server configuration.
//!
//! [`Config::from_args`] turns the raw flags of [`crate::cli::ServeArgs`] into a [`Config`] whose
//! every field is checked: the address parses, open development mode is only allowed on a
//! loopback address, URLs have the right scheme, limits are non-zero and consistent. Code past
//! this point never re-validates.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use url::Url;

use crate::auth::{AuthMode, Secret};
use crate::cli::ServeArgs;
use crate::store::{CheckpointPolicy, CompactionPolicy};

/// Defaults of every flag, shared by the CLI and [`Config::default_for`].
pub mod defaults {
    /// `--addr`.
    pub const ADDR: &str = "127.0.0.1:8787";
    /// `--data-dir`.
    pub const DATA_DIR: &str = "./tandem-data";
    /// `--max-frame-size`: 1 MiB.
    pub const MAX_FRAME_SIZE: &str = "1MiB";
    /// `--max-awareness-size`: 8 KiB.
    pub const MAX_AWARENESS_SIZE: &str = "8KiB";
    /// `--max-document-size`: 64 MiB.
    pub const MAX_DOCUMENT_SIZE: &str = "64MiB";
    /// `--message-rate`: messages per second per connection.
    pub const MESSAGE_RATE: u32 = 1_000;
    /// `--message-burst`.
    pub const MESSAGE_BURST: u32 = 2_000;
    /// `--connection-rate`: new connections per second per IP.
    pub const CONNECTION_RATE: u32 = 100;
    /// `--connection-burst`.
    pub const CONNECTION_BURST: u32 = 1_000;
    /// `--max-connections`.
    pub const MAX_CONNECTIONS: usize = 25_000;
    /// `--max-pending-updates`.
    pub const MAX_PENDING_UPDATES: usize = 1_000;
    /// `--checkpoint-every`: updates between version-history checkpoints.
    pub const CHECKPOINT_EVERY: u64 = 1_000;
    /// `--checkpoint-interval`.
    pub const CHECKPOINT_INTERVAL: &str = "10m";
    /// `--compact-after`: log entries that trigger compaction.
    pub const COMPACT_AFTER: u64 = 1_000;
    /// `--compact-after-bytes`.
    pub const COMPACT_AFTER_BYTES: &str = "4MiB";
}

/// Why the flags do not make a usable configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--addr` is not `ip:port` (or `localhost:port`).
    #[error("--addr {0:?} is not an address like 127.0.0.1:8787")]
    BadAddr(String),
    /// No secret and an address other than loopback: the server would be open to the network.
    #[error(
        "refusing to listen on {0} without --auth-secret: open development mode only binds a \
         loopback address (127.0.0.1 or ::1). Set --auth-secret (or TANDEM_AUTH_SECRET) to listen \
         on other addresses"
    )]
    OpenModeNotLoopback(SocketAddr),
    /// `--auth-secret` was given but empty.
    #[error("--auth-secret is empty")]
    EmptySecret,
    /// `--database-url` is not a PostgreSQL URL.
    #[error("--database-url must be a postgres:// or postgresql:// URL: {0}")]
    BadDatabaseUrl(String),
    /// `--redis-url` is not a Redis URL.
    #[error("--redis-url must be a redis:// or rediss:// URL: {0}")]
    BadRedisUrl(String),
    /// A limit that must be positive is zero.
    #[error("--{0} must be greater than zero")]
    Zero(&'static str),
    /// A burst is smaller than its sustained rate.
    #[error("--{burst} ({burst_value}) must be at least --{rate} ({rate_value})")]
    BurstBelowRate {
        /// The burst flag.
        burst: &'static str,
        /// Its value.
        burst_value: u32,
        /// The rate flag.
        rate: &'static str,
        /// Its value.
        rate_value: u32,
    },
    /// The awareness limit exceeds the frame limit and could never be reached.
    #[error("--max-awareness-size ({awareness}) must not exceed --max-frame-size ({frame})")]
    AwarenessAboveFrame {
        /// `--max-awareness-size`.
        awareness: ByteSize,
        /// `--max-frame-size`.
        frame: ByteSize,
    },
}

/// A size in bytes, written as a plain number or with a suffix: `B`, `KiB`/`K`, `MiB`/`M`,
/// `GiB`/`G` (all binary, also accepted as `KB`, `MB`, `GB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

/// `ByteSize` could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a size like 65536, 64KiB or 1MiB")]
pub struct ByteSizeError(String);

impl FromStr for ByteSize {
    type Err = ByteSizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ByteSizeError(s.to_owned());
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        let n: u64 = digits.parse().map_err(|_| bad())?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            _ => return Err(bad()),
        };
        n.checked_mul(mult).map(ByteSize).ok_or_else(bad)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if n >= size && (n / size) * size == n {
                return write!(f, "{}{unit}", n / size);
            }
        }
        write!(f, "{n}B")
    }
}

/// A token bucket's parameters: `per_second` tokens refill each second, up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Sustained rate, tokens per second.
    pub per_second: u32,
    /// Bucket size: how many may be taken at once after a quiet period.
    pub burst: u32,
}

/// Limits that protect the server and its other clients from one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest WebSocket frame or HTTP update body.
    pub max_frame_bytes: usize,
    /// Largest awareness state of one client.
    pub max_awareness_bytes: usize,
    /// Largest encoded document.
    pub max_document_bytes: u64,
    /// Per-connection message rate.
    pub message_rate: Rate,
    /// Per-IP new-connection rate.
    pub connection_rate: Rate,
    /// Most simultaneous connections.
    pub max_connections: usize,
    /// Most updates per document waiting for missing dependencies.
    pub max_pending_updates: usize,
}

/// When documents are compacted and version history is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    /// When a document's log is folded into a snapshot.
    pub compaction: CompactionPolicy,
    /// When a compaction also keeps a version-history checkpoint.
    pub checkpoints: CheckpointPolicy,
}

/// Where documents are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageConfig {
    /// The embedded SQLite database in this directory (the default).
    Embedded {
        /// `--data-dir`.
        data_dir: PathBuf,
    },
    /// PostgreSQL at this URL (`--database-url`).
    Postgres {
        /// The connection URL.
        url: Url,
    },
}

/// The validated configuration of `tandem serve`.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to bind.
    pub addr: SocketAddr,
    /// `--data-dir`, always kept: local files live here even with PostgreSQL storage.
    pub data_dir: PathBuf,
    /// Open development mode or a token secret.
    pub auth: AuthMode,
    /// `--database-url`, when given.
    pub database_url: Option<Url>,
    /// `--redis-url`, when given.
    pub redis_url: Option<Url>,
    /// Per-client limits.
    pub limits: Limits,
    /// Compaction and version history.
    pub history: History,
}

impl Config {
    /// Validates raw flags.
    pub fn from_args(args: ServeArgs) -> Result<Config, ConfigError> {
        let addr = parse_addr(&args.addr)?;
        let auth = match args.auth_secret {
            Some(s) => AuthMode::Secret(Secret::new(s).map_err(|_| ConfigError::EmptySecret)?),
            None if is_loopback(addr.ip()) => AuthMode::Open,
            None => return Err(ConfigError::OpenModeNotLoopback(addr)),
        };
        let database_url = args
            .database_url
            .map(|u| parse_url(&u, &["postgres", "postgresql"], ConfigError::BadDatabaseUrl))
            .transpose()?;
        let redis_url = args
            .redis_url
            .map(|u| parse_url(&u, &["redis", "rediss"], ConfigError::BadRedisUrl))
            .transpose()?;

        let nonzero = |name: &'static str, v: u64| {
            if v == 0 {
                Err(ConfigError::Zero(name))
            } else {
                Ok(v)
            }
        };
        let rate = |rate: &'static str, r: u32, burst: &'static str, b: u32| {
            nonzero(rate, r.into())?;
            if b < r {
                return Err(ConfigError::BurstBelowRate {
                    burst,
                    burst_value: b,
                    rate,
                    rate_value: r,
                });
            }
            Ok(Rate {
                per_second: r,
                burst: b,
            })
        };
        let to_usize = |name: &'static str, b: ByteSize| -> Result<usize, ConfigError> {
            let v = nonzero(name, b.0)?;
            Ok(usize::try_from(v).unwrap_or(usize::MAX))
        };
        if args.max_awareness_size > args.max_frame_size {
            return Err(ConfigError::AwarenessAboveFrame {
                awareness: args.max_awareness_size,
                frame: args.max_frame_size,
            });
        }
        let limits = Limits {
            max_frame_bytes: to_usize("max-frame-size", args.max_frame_size)?,
            max_awareness_bytes: to_usize("max-awareness-size", args.max_awareness_size)?,
            max_document_bytes: nonzero("max-document-size", args.max_document_size.0)?,
            message_rate: rate(
                "message-rate",
                args.message_rate,
                "message-burst",
                args.message_burst,
            )?,
            connection_rate: rate(
                "connection-rate",
                args.connection_rate,
                "connection-burst",
                args.connection_burst,
            )?,
            max_connections: nonzero("max-connections", args.max_connections as u64)? as usize,
            max_pending_updates: nonzero("max-pending-updates", args.max_pending_updates as u64)?
                as usize,
        };
        if args.checkpoint_interval.is_zero() {
            return Err(ConfigError::Zero("checkpoint-interval"));
        }
        let history = History {
            compaction: CompactionPolicy {
                after_updates: nonzero("compact-after", args.compact_after)?,
                after_bytes: nonzero("compact-after-bytes", args.compact_after_bytes.0)?,
            },
            checkpoints: CheckpointPolicy {
                every_sids: nonzero("checkpoint-every", args.checkpoint_every)?,
                interval: args.checkpoint_interval,
            },
        };
        Ok(Config {
            addr,
            data_dir: args.data_dir,
            auth,
            database_url,
            redis_url,
            limits,
            history,
        })
    }

    /// The configuration `tandem serve` would use with no flags, but with this data dir and
    /// an ephemeral loopback port: open development mode. Meant for tests and embedding.
    pub fn default_for(data_dir: impl Into<PathBuf>) -> Config {
        let mut args = default_args();
        args.addr = "127.0.0.1:0".to_owned();
        args.data_dir = data_dir.into();
        match Config::from_args(args) {
            Ok(config) => config,
            // The defaults are constants checked by this module's tests.
            Err(e) => unreachable!("default flags are valid: {e}"),
        }
    }

    /// Where documents are stored.
    pub fn storage(&self) -> StorageConfig {
        match &self.database_url {
            Some(url) => StorageConfig::Postgres { url: url.clone() },
            None => StorageConfig::Embedded {
                data_dir: self.data_dir.clone(),
            },
        }
    }

    /// Whether requests need no token (open development mode).
    pub fn is_open(&self) -> bool {
        matches!(self.auth, AuthMode::Open)
    }
}

/// The flags of `tandem serve` with nothing given, built from [`defaults`] without reading the
/// command line or the environment. A test checks it against what clap produces.
fn default_args() -> ServeArgs {
    // The default strings are constants covered by `default_for_matches_the_cli_defaults`.
    let size = |s: &str| s.parse::<ByteSize>().unwrap_or(ByteSize(0));
    ServeArgs {
        addr: defaults::ADDR.to_owned(),
        data_dir: PathBuf::from(defaults::DATA_DIR),
        auth_secret: None,
        database_url: None,
        redis_url: None,
        max_frame_size: size(defaults::MAX_FRAME_SIZE),
        max_awareness_size: size(defaults::MAX_AWARENESS_SIZE),
        max_document_size: size(defaults::MAX_DOCUMENT_SIZE),
        message_rate: defaults::MESSAGE_RATE,
        message_burst: defaults::MESSAGE_BURST,
        connection_rate: defaults::CONNECTION_RATE,
        connection_burst: defaults::CONNECTION_BURST,
        max_connections: defaults::MAX_CONNECTIONS,
        max_pending_updates: defaults::MAX_PENDING_UPDATES,
        checkpoint_every: defaults::CHECKPOINT_EVERY,
        checkpoint_interval: humantime::parse_duration(defaults::CHECKPOINT_INTERVAL)
            .unwrap_or(Duration::ZERO),
        compact_after: defaults::COMPACT_AFTER,
        compact_after_bytes: size(defaults::COMPACT_AFTER_BYTES),
    }
}

fn parse_addr(s: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    // `localhost:PORT` is common enough to accept; it always means IPv4 loopback here so the
    // bound address does not depend on the resolver.
    match s.strip_prefix("localhost:").map(str::parse::<u16>) {
        Some(Ok(port)) => Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)),
        _ => Err(ConfigError::BadAddr(s.to_owned())),
    }
}

/// Loopback addresses, including IPv4-mapped IPv6 loopback (`::ffff:127.0.0.1`).
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

fn parse_url(
    s: &str,
    schemes: &[&str],
    err: fn(String) -> ConfigError,
) -> Result<Url, ConfigError> {
    // The URL may hold a password: errors name the problem, never echo the URL.
    let url = Url::parse(s).map_err(|e| err(e.to_string()))?;
    if !schemes.contains(&url.scheme()) {
        return Err(err(format!("unexpected scheme {:?}", url.scheme())));
    }
    if !matches!(url.host_str(), Some(host) if !host.is_empty()) {
        return Err(err("missing host".to_owned()));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> ServeArgs {
        use clap::Parser;
        let argv = ["tandem", "serve"].into_iter().chain(extra.iter().copied());
        match crate::cli::Cli::try_parse_from(argv).unwrap().command {
            crate::cli::Command::Serve(a) => a,
            _ => panic!("expected serve"),
        }
    }

    fn config(extra: &[&str]) -> Result<Config, ConfigError> {
        Config::from_args(args(extra))
    }

    #[test]
    fn no_flags_is_open_mode_on_loopback() {
        let c = config(&[]).unwrap();
        assert_eq!(c.addr, "127.0.0.1:8787".parse().unwrap());
        assert!(c.is_open());
        assert_eq!(
            c.storage(),
            StorageConfig::Embedded {
                data_dir: "./tandem-data".into()
            }
        );
        assert_eq!(c.limits.max_frame_bytes, 1 << 20);
        assert_eq!(c.limits.max_awareness_bytes, 8 << 10);
        assert_eq!(c.limits.max_document_bytes, 64 << 20);
        assert_eq!(
            c.limits.message_rate,
            Rate {
                per_second: 1000,
                burst: 2000
            }
        );
        assert_eq!(c.history.checkpoints.every_sids, 1000);
        assert_eq!(c.history.checkpoints.interval, Duration::from_secs(600));
        assert_eq!(c.history.compaction.after_updates, 1000);
        assert_eq!(c.history.compaction.after_bytes, 4 << 20);
    }

    #[test]
    fn default_for_matches_the_cli_defaults() {
        let c = Config::default_for("/tmp/x");
        let from_cli = config(&[]).unwrap();
        assert_eq!(c.limits, from_cli.limits);
        assert_eq!(c.history, from_cli.history);
        assert_eq!(c.addr.port(), 0);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert!(c.is_open());
    }

    #[test]
    fn open_mode_refuses_non_loopback_addresses() {
        for addr in ["0.0.0.0:8787", "[::]:8787", "192.168.1.10:80"] {
            let err = config(&["--addr", addr]).unwrap_err();
            assert!(matches!(err, ConfigError::OpenModeNotLoopback(_)), "{addr}");
            assert!(err.to_string().contains("--auth-secret"), "{err}");
        }
        for addr in ["127.0.0.1:1", "127.1.2.3:1", "[::1]:1", "localhost:9"] {
            assert!(config(&["--addr", addr]).unwrap().is_open(), "{addr}");
        }
    }

    #[test]
    fn a_secret_allows_any_address() {
        let c = config(&["--addr", "0.0.0.0:80", "--auth-secret", "s3cret"]).unwrap();
        assert!(!c.is_open());
        assert!(matches!(
            config(&["--auth-secret", ""]),
            Err(ConfigError::EmptySecret)
        ));
    }

    #[test]
    fn bad_addresses_are_refused() {
        for addr in ["", "8787", "example.com:80", "localhost", "127.0.0.1:99999"] {
            assert!(
                matches!(config(&["--addr", addr]), Err(ConfigError::BadAddr(_))),
                "{addr}"
            );
        }
    }

    #[test]
    fn urls_are_checked_and_kept() {
        let c = config(&[
            "--database-url",
            "postgres://u:pw@db:5432/tandem",
            "--redis-url",
            "rediss://cache:6380",
        ])
        .unwrap();
        assert_eq!(c.database_url.as_ref().unwrap().host_str(), Some("db"));
        assert!(matches!(c.storage(), StorageConfig::Postgres { .. }));
        assert_eq!(c.redis_url.unwrap().scheme(), "rediss");
        let err = config(&["--database-url", "mysql://u:hunter2@db/x"]).unwrap_err();
        assert!(matches!(err, ConfigError::BadDatabaseUrl(_)));
        assert!(!err.to_string().contains("hunter2"));
        assert!(matches!(
            config(&["--redis-url", "not a url"]),
            Err(ConfigError::BadRedisUrl(_))
        ));
        assert!(matches!(
            config(&["--redis-url", "http://x"]),
            Err(ConfigError::BadRedisUrl(_))
        ));
    }

    #[test]
    fn limits_are_validated() {
        let check = |extra: &[&str], expected: &str| {
            let err = config(extra).unwrap_err().to_string();
            assert!(err.contains(expected), "{extra:?}: {err}");
        };
        check(&["--max-frame-size", "0"], "--max-frame-size");
        check(&["--message-rate", "0"], "--message-rate");
        check(
            &["--message-rate", "10", "--message-burst", "5"],
            "--message-burst",
        );
        check(&["--connection-burst", "1"], "--connection-burst");
        check(&["--max-connections", "0"], "--max-connections");
        check(&["--max-pending-updates", "0"], "--max-pending-updates");
        check(&["--checkpoint-every", "0"], "--checkpoint-every");
        check(&["--checkpoint-interval", "0s"], "--checkpoint-interval");
        check(&["--compact-after", "0"], "--compact-after");
        check(
            &["--max-frame-size", "4KiB", "--max-awareness-size", "8KiB"],
            "--max-awareness-size",
        );
    }

    #[test]
    fn byte_sizes_parse_and_print() {
        let check = |s: &str, n: u64| {
            assert_eq!(s.parse::<ByteSize>(), Ok(ByteSize(n)), "{s}");
        };
        check("0", 0);
        check("65536", 65536);
        check("12B", 12);
        check("8KiB", 8192);
        check("8k", 8192);
        check("1MiB", 1 << 20);
        check("1 MB", 1 << 20);
        check("2GiB", 2 << 30);
        for bad in [
            "",
            "MiB",
            "1.5MiB",
            "-1",
            "1TiB",
            "99999999999999999999",
            "18014398509481984GiB",
        ] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad}");
        }
        assert_eq!(ByteSize(1 << 20).to_string(), "1MiB");
        assert_eq!(ByteSize(1536).to_string(), "1536B");
        assert_eq!(ByteSize(8192).to_string(), "8KiB");
    }
}
