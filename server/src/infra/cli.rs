//! The command line as typed: `tandem serve` and `tandem token`.
//!
//! These are the raw flags ("low args"). Every flag is also read from a `TANDEM_*` environment
//! variable. [`crate::config::Config::from_args`] turns [`ServeArgs`] into a validated config;
//! nothing else in the server reads these types.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use std::fmt;
use std::str::FromStr;

use crate::base::name::DocPattern;
use crate::base::role::Role;

/// tandem: real-time collaboration server (Yjs-compatible).
#[derive(Debug, Parser)]
#[command(name = "tandem", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
// Parsed once at start: the size of the `serve` flags does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Print a signed access token (JWT, HS256).
    Token(TokenArgs),
}

/// Flags of `tandem serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on. Without --auth-secret it must be a loopback address.
    #[arg(long, env = "TANDEM_ADDR", default_value = defaults::ADDR)]
    pub addr: String,

    /// Directory for the embedded database (created if missing).
    #[arg(long, env = "TANDEM_DATA_DIR", default_value = defaults::DATA_DIR)]
    pub data_dir: PathBuf,

    /// Embedded database: while several documents keep writing, commit at most once per this
    /// long, so their updates share one transaction and fsync (a durability ack waits up to
    /// this much longer; a document writing alone commits at once); 0 commits what is
    /// waiting at once.
    #[arg(long, env = "TANDEM_COMMIT_WINDOW", default_value = defaults::COMMIT_WINDOW, value_parser = parse_duration)]
    pub commit_window: Duration,

    /// Secret that signs access tokens. Without it the server runs in open development mode.
    #[arg(long, env = "TANDEM_AUTH_SECRET", hide_env_values = true)]
    pub auth_secret: Option<String>,

    /// PostgreSQL storage instead of the embedded database (postgres://…).
    #[arg(long, env = "TANDEM_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Redis for live traffic between several tandem nodes (redis://…; no TLS); needs
    /// --database-url (the nodes' shared store).
    #[arg(long, env = "TANDEM_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// This node's name among several (letters, digits, '-', '_', '.'); random when not given.
    #[arg(long, env = "TANDEM_NODE_ID")]
    pub node_id: Option<String>,

    /// With several nodes: how long a document waits for a missing update to arrive over Redis
    /// before reading it from PostgreSQL (e.g. 100ms).
    #[arg(long, env = "TANDEM_GAP_TIMEOUT", default_value = defaults::GAP_TIMEOUT, value_parser = parse_duration)]
    pub gap_timeout: Duration,

    /// With several nodes: how often each node compares its loaded documents with PostgreSQL's
    /// latest sids and reads what it missed (how fast updates cross nodes while Redis is down).
    #[arg(long, env = "TANDEM_CATCH_UP_INTERVAL", default_value = defaults::CATCH_UP_INTERVAL, value_parser = parse_duration)]
    pub catch_up_interval: Duration,

    /// Largest WebSocket frame or HTTP update body accepted (e.g. 1MiB, 65536).
    #[arg(long, env = "TANDEM_MAX_FRAME_SIZE", default_value = defaults::MAX_FRAME_SIZE)]
    pub max_frame_size: ByteSize,

    /// Largest awareness (presence) state of one client; a larger one is dropped (the
    /// connection stays).
    #[arg(long, env = "TANDEM_MAX_AWARENESS_SIZE", default_value = defaults::MAX_AWARENESS_SIZE)]
    pub max_awareness_size: ByteSize,

    /// Largest encoded document; updates that would grow it beyond are refused.
    #[arg(long, env = "TANDEM_MAX_DOCUMENT_SIZE", default_value = defaults::MAX_DOCUMENT_SIZE)]
    pub max_document_size: ByteSize,

    /// Messages per second one connection may send, sustained (token bucket refill rate);
    /// a faster sender is slowed (its socket is not read until the bucket refills), not closed.
    #[arg(long, env = "TANDEM_MESSAGE_RATE", default_value_t = defaults::MESSAGE_RATE)]
    pub message_rate: u32,

    /// Messages one connection may send in a burst (token bucket size).
    #[arg(long, env = "TANDEM_MESSAGE_BURST", default_value_t = defaults::MESSAGE_BURST)]
    pub message_burst: u32,

    /// New connections per second from one IP address, sustained.
    #[arg(long, env = "TANDEM_CONNECTION_RATE", default_value_t = defaults::CONNECTION_RATE)]
    pub connection_rate: u32,

    /// New connections one IP address may open in a burst.
    #[arg(long, env = "TANDEM_CONNECTION_BURST", default_value_t = defaults::CONNECTION_BURST)]
    pub connection_burst: u32,

    /// Most simultaneous connections (WebSocket and SSE) the server accepts.
    #[arg(long, env = "TANDEM_MAX_CONNECTIONS", default_value_t = defaults::MAX_CONNECTIONS)]
    pub max_connections: usize,

    /// Most updates per document waiting for missing dependencies; past it, the waiting part
    /// is dropped and its sender resynced.
    #[arg(long, env = "TANDEM_MAX_PENDING_UPDATES", default_value_t = defaults::MAX_PENDING_UPDATES)]
    pub max_pending_updates: usize,

    /// Keep a version-history checkpoint at least every this many updates of a document.
    #[arg(long, env = "TANDEM_CHECKPOINT_EVERY", default_value_t = defaults::CHECKPOINT_EVERY)]
    pub checkpoint_every: u64,

    /// Keep a version-history checkpoint when this long has passed since the last one (e.g. 10m).
    #[arg(long, env = "TANDEM_CHECKPOINT_INTERVAL", default_value = defaults::CHECKPOINT_INTERVAL, value_parser = parse_duration)]
    pub checkpoint_interval: Duration,

    /// Compact a document's update log into a snapshot once it holds this many updates (with
    /// several nodes: this many written through this node).
    #[arg(long, env = "TANDEM_COMPACT_AFTER", default_value_t = defaults::COMPACT_AFTER)]
    pub compact_after: u64,

    /// Compact a document's update log into a snapshot once it holds this many bytes.
    #[arg(long, env = "TANDEM_COMPACT_AFTER_BYTES", default_value = defaults::COMPACT_AFTER_BYTES)]
    pub compact_after_bytes: ByteSize,

    /// Deliver webhook events to this URL (repeatable; TANDEM_WEBHOOK_URL takes several,
    /// comma-separated). Needs --webhook-secret.
    #[arg(
        long = "webhook-url",
        env = "TANDEM_WEBHOOK_URL",
        value_delimiter = ','
    )]
    pub webhook_urls: Vec<String>,

    /// The secret webhook deliveries are signed with (header Tandem-Signature).
    #[arg(long, env = "TANDEM_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,

    /// Also deliver presence.joined / presence.left webhook events.
    #[arg(long, env = "TANDEM_WEBHOOK_PRESENCE")]
    pub webhook_presence: bool,

    /// The register naming a document's assignee (a user id); setting it notifies that user.
    #[arg(long, env = "TANDEM_ASSIGNEE_FIELD", default_value = defaults::ASSIGNEE_FIELD)]
    pub assignee_field: String,

    /// The register holding a document's due date (RFC 3339 date or date-time).
    #[arg(long, env = "TANDEM_DUE_FIELD", default_value = defaults::DUE_FIELD)]
    pub due_field: String,

    /// How long before a due date its document's assignee is reminded (e.g. 24h).
    #[arg(long, env = "TANDEM_REMIND_BEFORE", default_value = defaults::REMIND_BEFORE, value_parser = parse_duration)]
    pub remind_before: Duration,
}

/// Flags of `tandem token`.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The server's secret (the same as `serve --auth-secret`).
    #[arg(long, env = "TANDEM_AUTH_SECRET", hide_env_values = true)]
    pub secret: String,

    /// User id (the token's `sub`).
    #[arg(long, env = "TANDEM_TOKEN_USER")]
    pub user: String,

    /// Display name shown to other users.
    #[arg(long, env = "TANDEM_TOKEN_NAME")]
    pub name: Option<String>,

    /// Documents the token opens: an exact name, or a prefix ending in `*`.
    #[arg(long, env = "TANDEM_TOKEN_DOC")]
    pub doc: DocPattern,

    /// Role on those documents: read, write or admin.
    #[arg(long, env = "TANDEM_TOKEN_ROLE")]
    pub role: Role,

    /// How long the token is valid (e.g. 1h, 30m, 7d).
    #[arg(long, env = "TANDEM_TOKEN_TTL", default_value = "1h", value_parser = parse_duration)]
    pub ttl: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

/// Defaults of every flag, shared by the CLI and [`Config::default_for`].
pub mod defaults {
    /// `--addr`.
    pub const ADDR: &str = "127.0.0.1:8787";
    /// `--data-dir`.
    pub const DATA_DIR: &str = "./tandem-data";
    /// `--assignee-field`.
    pub const ASSIGNEE_FIELD: &str = "assignee";
    /// `--due-field`.
    pub const DUE_FIELD: &str = "due";
    /// `--remind-before`.
    pub const REMIND_BEFORE: &str = "24h";
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
    /// `--gap-timeout`.
    pub const GAP_TIMEOUT: &str = "100ms";
    /// `--commit-window`.
    pub const COMMIT_WINDOW: &str = "20ms";
    /// `--catch-up-interval`.
    pub const CATCH_UP_INTERVAL: &str = "500ms";
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

impl ServeArgs {
    /// The flags with nothing given, built from [`defaults`] without reading the command line
    /// or the environment. A test checks it against what clap produces.
    pub fn defaults() -> ServeArgs {
        // The default strings are constants covered by `default_for_matches_the_cli_defaults`.
        let size = |s: &str| s.parse::<ByteSize>().unwrap_or(ByteSize(0));
        ServeArgs {
            addr: defaults::ADDR.to_owned(),
            data_dir: PathBuf::from(defaults::DATA_DIR),
            commit_window: humantime::parse_duration(defaults::COMMIT_WINDOW)
                .unwrap_or(Duration::ZERO),
            auth_secret: None,
            database_url: None,
            redis_url: None,
            node_id: None,
            gap_timeout: humantime::parse_duration(defaults::GAP_TIMEOUT).unwrap_or(Duration::ZERO),
            catch_up_interval: humantime::parse_duration(defaults::CATCH_UP_INTERVAL)
                .unwrap_or(Duration::ZERO),
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
            webhook_urls: Vec::new(),
            webhook_secret: None,
            webhook_presence: false,
            assignee_field: defaults::ASSIGNEE_FIELD.to_owned(),
            due_field: defaults::DUE_FIELD.to_owned(),
            remind_before: humantime::parse_duration(defaults::REMIND_BEFORE)
                .unwrap_or(Duration::ZERO),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("tandem").chain(args.iter().copied()))
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_without_flags_uses_defaults() {
        let Command::Serve(a) = parse(&["serve"]).unwrap().command else {
            panic!("expected serve");
        };
        assert_eq!(a.addr, "127.0.0.1:8787");
        assert_eq!(a.data_dir, PathBuf::from("./tandem-data"));
        assert_eq!(a.max_frame_size, ByteSize(1024 * 1024));
        assert_eq!(a.max_awareness_size, ByteSize(8 * 1024));
        assert_eq!(a.checkpoint_interval, Duration::from_secs(600));
    }

    #[test]
    fn serve_flags_are_parsed() {
        let Command::Serve(a) = parse(&[
            "serve",
            "--addr",
            "0.0.0.0:9000",
            "--auth-secret",
            "s",
            "--max-frame-size",
            "64KiB",
            "--message-rate",
            "5",
            "--checkpoint-interval",
            "90s",
            "--database-url",
            "postgres://db/x",
        ])
        .unwrap()
        .command
        else {
            panic!("expected serve");
        };
        assert_eq!(a.addr, "0.0.0.0:9000");
        assert_eq!(a.auth_secret.as_deref(), Some("s"));
        assert_eq!(a.max_frame_size, ByteSize(64 * 1024));
        assert_eq!(a.message_rate, 5);
        assert_eq!(a.checkpoint_interval, Duration::from_secs(90));
        assert_eq!(a.database_url.as_deref(), Some("postgres://db/x"));
    }

    #[test]
    fn token_flags_are_parsed() {
        let Command::Token(a) = parse(&[
            "token", "--secret", "s", "--user", "u1", "--doc", "notes:*", "--role", "write",
        ])
        .unwrap()
        .command
        else {
            panic!("expected token");
        };
        assert_eq!(a.doc, DocPattern::Prefix("notes:".into()));
        assert_eq!(a.role, Role::Write);
        assert_eq!(a.ttl, Duration::from_secs(3600));
        assert_eq!(a.name, None);
    }

    #[test]
    fn bad_values_are_refused_by_the_parser() {
        let err = |args: &[&str]| parse(args).unwrap_err().kind();
        assert_eq!(
            err(&["token", "--secret", "s", "--user", "u", "--doc", "d", "--role", "owner"]),
            clap::error::ErrorKind::ValueValidation
        );
        assert_eq!(
            err(&["serve", "--max-frame-size", "lots"]),
            clap::error::ErrorKind::ValueValidation
        );
        assert_eq!(
            err(&["serve", "--checkpoint-interval", "soon"]),
            clap::error::ErrorKind::ValueValidation
        );
    }
}
