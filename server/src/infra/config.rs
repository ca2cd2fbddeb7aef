//! The validated server configuration.
//!
//! [`Config::from_args`] turns the raw flags of [`crate::cli::ServeArgs`] into a [`Config`] whose
//! every field is checked: the address parses, open development mode is only allowed on a
//! loopback address, URLs have the right scheme, limits are non-zero and consistent. Code past
//! this point never re-validates.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use std::sync::Arc;

use super::cli::{ByteSize, ServeArgs};

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
    #[error(
        "--redis-url must be a redis:// URL (this build does not speak TLS: no rediss://): {0}"
    )]
    BadRedisUrl(String),
    /// `--webhook-url` is not an http(s) URL.
    #[error("--webhook-url must be an http:// URL (this build does not speak TLS; put a TLS proxy in front): {0}")]
    BadWebhookUrl(String),
    /// `--webhook-url` without `--webhook-secret`.
    #[error("--webhook-url needs --webhook-secret (every delivery is signed)")]
    WebhookWithoutSecret,
    /// `--redis-url` without `--database-url`.
    #[error(
        "--redis-url needs --database-url: Redis carries live traffic between several nodes, and \
         several nodes need a shared store (PostgreSQL); one node needs no Redis"
    )]
    RedisWithoutDatabase,
    /// `--node-id` is empty, too long or has characters other than letters, digits, '-', '_', '.'.
    #[error("--node-id {0:?} must be 1-64 letters, digits, '-', '_' or '.'")]
    BadNodeId(String),
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

/// An empty secret cannot sign or verify tokens.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the secret is empty")]
pub struct EmptySecret;

/// The server secret. Its bytes never appear in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<[u8]>);

impl Secret {
    /// Wraps a secret; empty secrets are refused.
    pub fn new(bytes: impl AsRef<[u8]>) -> Result<Self, EmptySecret> {
        let bytes = bytes.as_ref();
        if bytes.is_empty() {
            return Err(EmptySecret);
        }
        Ok(Secret(bytes.into()))
    }

    /// The secret's length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: an empty secret cannot be constructed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The secret's bytes, to sign or verify with.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// How the server authenticates requests.
#[derive(Debug, Clone)]
pub enum AuthMode {
    /// No secret: every request is the development identity. Only allowed on loopback.
    Open,
    /// Tokens signed with this secret are required.
    Secret(Secret),
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

/// When a document's log should be compacted into a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionPolicy {
    /// Compact once the log holds this many entries.
    pub after_updates: u64,
    /// Compact once the log holds this many bytes.
    pub after_bytes: u64,
}

impl CompactionPolicy {
    /// Whether a log holding `entries` entries of `bytes` bytes should be compacted.
    pub fn is_due(&self, entries: u64, bytes: u64) -> bool {
        entries > 0 && (entries >= self.after_updates || bytes >= self.after_bytes)
    }
}

/// When a compaction also keeps a version-history checkpoint: the first compaction of a
/// document always does; later ones when `every_sids` sids or `interval` time have passed since
/// the previous checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointPolicy {
    /// Sids between checkpoints.
    pub every_sids: u64,
    /// Time between checkpoints.
    pub interval: Duration,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        CheckpointPolicy {
            every_sids: 1_000,
            interval: Duration::from_secs(600),
        }
    }
}

impl CheckpointPolicy {
    /// Whether a compaction to `sid` at `now_ms` keeps a checkpoint, given the previous one
    /// (`None` when the document has none).
    pub fn is_due(&self, previous: Option<(u64, u64)>, sid: u64, now_ms: u64) -> bool {
        match previous {
            None => true,
            Some((prev_sid, _)) if sid <= prev_sid => false,
            Some((prev_sid, prev_at)) => {
                sid - prev_sid >= self.every_sids
                    || u128::from(now_ms.saturating_sub(prev_at)) >= self.interval.as_millis()
            }
        }
    }
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

/// How a node works with others sharing its store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// This node's name (`--node-id`, or random).
    pub node_id: String,
    /// How long a gap in a document's sids waits for the bus before the store is read.
    pub gap_timeout: Duration,
    /// How often loaded documents are compared with the store's latest sids.
    pub catch_up_interval: Duration,
}

/// The validated configuration of `tandem serve`.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to bind.
    pub addr: SocketAddr,
    /// `--data-dir`, always kept: local files live here even with PostgreSQL storage.
    pub data_dir: PathBuf,
    /// `--commit-window` of the embedded database.
    pub commit_window: Duration,
    /// Open development mode or a token secret.
    pub auth: AuthMode,
    /// `--database-url`, when given.
    pub database_url: Option<Url>,
    /// `--redis-url`, when given.
    pub redis_url: Option<Url>,
    /// Settings of a node among several (used with `--database-url`).
    pub cluster: ClusterSettings,
    /// Per-client limits.
    pub limits: Limits,
    /// Compaction and version history.
    pub history: History,
    /// Notifications and webhooks.
    pub notify: NotifyConfig,
}

/// Notifications and webhooks (`--webhook-*`, `--assignee-field`, `--due-field`,
/// `--remind-before`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyConfig {
    /// Where webhook events go (http:// or https:// URLs).
    pub webhook_urls: Vec<String>,
    /// What deliveries are signed with (set whenever there are URLs).
    pub webhook_secret: Option<String>,
    /// Whether presence events are delivered too.
    pub webhook_presence: bool,
    /// The assignee register.
    pub assignee_field: String,
    /// The due-date register.
    pub due_field: String,
    /// How long before a due date its assignee is reminded.
    pub remind_before: Duration,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            webhook_urls: Vec::new(),
            webhook_secret: None,
            webhook_presence: false,
            assignee_field: crate::infra::cli::defaults::ASSIGNEE_FIELD.to_owned(),
            due_field: crate::infra::cli::defaults::DUE_FIELD.to_owned(),
            remind_before: Duration::from_secs(24 * 60 * 60),
        }
    }
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
            .map(|u| parse_url(&u, &["redis"], ConfigError::BadRedisUrl))
            .transpose()?;
        if redis_url.is_some() && database_url.is_none() {
            return Err(ConfigError::RedisWithoutDatabase);
        }
        let node_id = match args.node_id {
            Some(id) => {
                let ok = (1..=64).contains(&id.len())
                    && id
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
                if !ok {
                    return Err(ConfigError::BadNodeId(id));
                }
                id
            }
            None => format!("node-{:08x}", fastrand::u32(..)),
        };
        if args.gap_timeout.is_zero() {
            return Err(ConfigError::Zero("gap-timeout"));
        }
        if args.catch_up_interval.is_zero() {
            return Err(ConfigError::Zero("catch-up-interval"));
        }
        let cluster = ClusterSettings {
            node_id,
            gap_timeout: args.gap_timeout,
            catch_up_interval: args.catch_up_interval,
        };

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
        let webhook_urls: Vec<String> = args
            .webhook_urls
            .iter()
            .map(|u| u.trim())
            .filter(|u| !u.is_empty())
            .map(|u| parse_url(u, &["http"], ConfigError::BadWebhookUrl).map(|_| u.to_owned()))
            .collect::<Result<_, _>>()?;
        let webhook_secret = args.webhook_secret.filter(|s| !s.is_empty());
        if !webhook_urls.is_empty() && webhook_secret.is_none() {
            return Err(ConfigError::WebhookWithoutSecret);
        }
        if args.assignee_field.is_empty() || args.due_field.is_empty() {
            return Err(ConfigError::Zero("assignee-field and --due-field"));
        }
        let notify = NotifyConfig {
            webhook_urls,
            webhook_secret,
            webhook_presence: args.webhook_presence,
            assignee_field: args.assignee_field,
            due_field: args.due_field,
            remind_before: args.remind_before,
        };
        Ok(Config {
            addr,
            data_dir: args.data_dir,
            commit_window: args.commit_window,
            auth,
            database_url,
            redis_url,
            cluster,
            limits,
            history,
            notify,
        })
    }

    /// The configuration `tandem serve` would use with no flags, but with this data dir and
    /// an ephemeral loopback port: open development mode. Meant for tests and embedding.
    pub fn default_for(data_dir: impl Into<PathBuf>) -> Config {
        let mut args = ServeArgs::defaults();
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
        match crate::infra::cli::Cli::try_parse_from(argv)
            .unwrap()
            .command
        {
            crate::infra::cli::Command::Serve(a) => a,
            _ => panic!("expected serve"),
        }
    }

    fn config(extra: &[&str]) -> Result<Config, ConfigError> {
        Config::from_args(args(extra))
    }

    #[test]
    fn webhook_and_notification_flags_are_checked() {
        let c = config(&[]).unwrap();
        assert_eq!(c.notify, NotifyConfig::default());
        let c = config(&[
            "--webhook-url",
            "http://a.example/h",
            "--webhook-url",
            "http://b.example:9000/h?x=1",
            "--webhook-secret",
            "s",
            "--webhook-presence",
            "--assignee-field",
            "owner",
            "--remind-before",
            "90m",
        ])
        .unwrap();
        assert_eq!(c.notify.webhook_urls.len(), 2);
        assert!(c.notify.webhook_presence);
        assert_eq!(c.notify.assignee_field, "owner");
        assert_eq!(c.notify.remind_before, Duration::from_secs(5400));
        assert!(matches!(
            config(&["--webhook-url", "http://a.example/h"]),
            Err(ConfigError::WebhookWithoutSecret)
        ));
        assert!(matches!(
            config(&[
                "--webhook-url",
                "https://a.example/h",
                "--webhook-secret",
                "s"
            ]),
            Err(ConfigError::BadWebhookUrl(_))
        ));
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
        assert_eq!(c.commit_window, from_cli.commit_window);
        assert_eq!(
            c.commit_window,
            crate::infra::store::sqlite::DEFAULT_COMMIT_WINDOW
        );
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
            "redis://cache:6380",
        ])
        .unwrap();
        assert_eq!(c.database_url.as_ref().unwrap().host_str(), Some("db"));
        assert!(matches!(c.storage(), StorageConfig::Postgres { .. }));
        assert_eq!(c.redis_url.unwrap().scheme(), "redis");
        assert!(matches!(
            config(&[
                "--database-url",
                "postgres://db/x",
                "--redis-url",
                "rediss://cache"
            ]),
            Err(ConfigError::BadRedisUrl(_))
        ));
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
        let err = config(&["--redis-url", "redis://cache"]).unwrap_err();
        assert!(matches!(err, ConfigError::RedisWithoutDatabase));
        assert!(err.to_string().contains("--database-url"), "{err}");
    }

    #[test]
    fn node_ids_are_checked_and_default_to_a_random_one() {
        let c = config(&["--node-id", "node-a.1"]).unwrap();
        assert_eq!(c.cluster.node_id, "node-a.1");
        for bad in ["", "a b", "a/b", &"x".repeat(65)] {
            assert!(
                matches!(config(&["--node-id", bad]), Err(ConfigError::BadNodeId(_))),
                "{bad:?}"
            );
        }
        let (a, b) = (config(&[]).unwrap(), config(&[]).unwrap());
        assert!(a.cluster.node_id.starts_with("node-"));
        assert_ne!(a.cluster.node_id, b.cluster.node_id);
        assert_eq!(a.cluster.gap_timeout, Duration::from_millis(100));
        assert_eq!(a.cluster.catch_up_interval, Duration::from_millis(500));
        check_zero("--gap-timeout");
        check_zero("--catch-up-interval");
    }

    fn check_zero(flag: &str) {
        let err = config(&[flag, "0s"]).unwrap_err().to_string();
        assert!(err.contains(flag), "{err}");
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

    #[test]
    fn secrets_do_not_leak_through_debug() {
        let s = format!(
            "{:?}",
            Secret::new("a test secret that is long enough!").unwrap()
        );
        assert!(!s.contains("test secret"), "{s}");
        assert_eq!(Secret::new(""), Err(EmptySecret));
    }

    #[test]
    fn compaction_is_due_on_either_threshold() {
        let p = CompactionPolicy {
            after_updates: 10,
            after_bytes: 1000,
        };
        assert!(!p.is_due(0, 0));
        assert!(!p.is_due(9, 999));
        assert!(p.is_due(10, 0));
        assert!(p.is_due(1, 1000));
    }

    #[test]
    fn checkpoints_are_due_by_sids_or_time() {
        let p = CheckpointPolicy {
            every_sids: 100,
            interval: Duration::from_secs(60),
        };
        assert!(p.is_due(None, 1, 0));
        assert!(!p.is_due(Some((50, 1_000)), 149, 1_000));
        assert!(p.is_due(Some((50, 1_000)), 150, 1_000));
        assert!(!p.is_due(Some((50, 1_000)), 51, 60_999));
        assert!(p.is_due(Some((50, 1_000)), 51, 61_000));
        // Never twice at the same sid, however much time passed.
        assert!(!p.is_due(Some((50, 1_000)), 50, 1_000_000));
    }
}
