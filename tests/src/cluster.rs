//! Several tandem nodes for tests: a fresh PostgreSQL database per test, a `redis-server` of
//! the test's own on a free port (so a test can stop it), a TCP relay in front of PostgreSQL
//! (so a test can cut the database off), and nodes started against them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

use crate::{temp_dir, Server};

/// Where the tests' PostgreSQL listens (the machine's, trust auth).
pub const PG_ADDR: &str = "127.0.0.1:5432";

fn psql(sql: &str) -> Result<()> {
    let out = std::process::Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            "5432",
            "-U",
            "postgres",
            "-d",
            "postgres",
        ])
        .args(["-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .output()
        .context("run psql (is the postgresql-client installed?)")?;
    if !out.status.success() {
        bail!(
            "psql {sql:?} failed (is PostgreSQL running on {PG_ADDR}? scripts/services.sh starts it): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A fresh database, dropped when the value is.
pub struct TestDb {
    /// Its name.
    pub name: String,
}

impl TestDb {
    /// Creates `tandem_t_<random>`.
    pub fn create() -> Result<TestDb> {
        let name = format!("tandem_t_{:016x}", fastrand::u64(..));
        psql(&format!("CREATE DATABASE {name}"))?;
        Ok(TestDb { name })
    }

    /// The URL of this database at `addr` (PostgreSQL itself, or a [`Relay`] in front of it).
    pub fn url_at(&self, addr: &str) -> String {
        format!("postgres://postgres@{addr}/{}", self.name)
    }

    /// The URL of this database.
    pub fn url(&self) -> String {
        self.url_at(PG_ADDR)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = psql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// A `redis-server` of the test's own, killed when dropped.
pub struct Redis {
    /// Its port.
    pub port: u16,
    child: Option<Child>,
}

impl Redis {
    /// Starts one on a free port and waits until it answers.
    pub async fn start() -> Result<Redis> {
        let mut redis = Redis {
            port: free_port()?,
            child: None,
        };
        redis.resume().await?;
        Ok(redis)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it (its data is gone: it keeps nothing on disk).
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// Starts it again, empty, on the same port.
    pub async fn resume(&mut self) -> Result<()> {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("start redis-server (scripts/setup.sh installs it)")?;
        self.child = Some(child);
        for _ in 0..200 {
            if TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        bail!("redis-server did not listen on {}", self.port)
    }
}

/// A TCP relay to PostgreSQL that a test can cut: while cut, it closes every relayed
/// connection and refuses new ones (as an unreachable database looks to its clients).
pub struct Relay {
    /// Where it listens.
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    cut: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Relays a free port to [`PG_ADDR`].
    pub async fn start() -> Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let open = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(tokio::sync::Notify::new());
        let (o, c) = (open.clone(), cut.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !o.load(Ordering::SeqCst) {
                    continue;
                }
                let c = c.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(PG_ADDR).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = c.notified() => {}
                    }
                });
            }
        });
        Ok(Relay {
            addr,
            open,
            cut,
            task,
        })
    }

    /// Closes every relayed connection and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    /// Relays again.
    pub fn mend(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
        self.cut.notify_waiters();
    }
}

/// Several nodes on one database and one Redis.
pub struct Nodes {
    /// The nodes, `node-0`, `node-1`, …
    pub nodes: Vec<Server>,
    /// Their database.
    pub db: TestDb,
    /// Their Redis.
    pub redis: Redis,
    dirs: Vec<PathBuf>,
}

impl Nodes {
    /// Starts `n` nodes on a fresh database and a Redis of their own, with `extra` flags each.
    pub async fn start(n: usize, extra: &[&str]) -> Result<Nodes> {
        let db = TestDb::create()?;
        let redis = Redis::start().await?;
        let url = db.url();
        Self::start_on(n, db, redis, &url, extra).await
    }

    /// Starts `n` nodes on `db` reached at `url` (through a [`Relay`], say).
    pub async fn start_on(
        n: usize,
        db: TestDb,
        redis: Redis,
        url: &str,
        extra: &[&str],
    ) -> Result<Nodes> {
        let mut nodes = Vec::new();
        let mut dirs = Vec::new();
        let redis_url = redis.url();
        for i in 0..n {
            let dir = temp_dir(&format!("node-{i}-{:08x}", fastrand::u32(..)));
            let id = format!("node-{i}");
            let mut args = vec![
                "--database-url",
                url,
                "--redis-url",
                &redis_url,
                "--node-id",
                &id,
            ];
            args.extend_from_slice(extra);
            nodes.push(Server::start(&dir, &args).await?);
            dirs.push(dir);
        }
        Ok(Nodes {
            nodes,
            db,
            redis,
            dirs,
        })
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}
