//! Drives the real `tandem` binary: `tandem token`, the open-mode address check, and
//! `tandem serve` answering /healthz and stopping on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};

use tandem_server::access::token;
use tandem_server::base::clock::unix_now;
use tandem_server::base::role::Role;
use tandem_server::infra::config::Secret;

fn tandem() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tandem"));
    // Only what each test sets: no TANDEM_* from the surrounding environment.
    for (key, _) in std::env::vars() {
        if key.starts_with("TANDEM_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("RUST_LOG", "info");
    cmd
}

#[test]
fn token_prints_a_verifiable_jwt() {
    let out = tandem()
        .args([
            "token", "--secret", "s3cret", "--user", "u42", "--name", "Ada", "--doc", "notes:*",
            "--role", "write", "--ttl", "2h",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).unwrap();
    let token = token.trim();
    let now = unix_now();
    let claims = token::verify(&Secret::new("s3cret").unwrap(), token, now).unwrap();
    assert_eq!(claims.sub, "u42");
    assert_eq!(claims.name.as_deref(), Some("Ada"));
    assert_eq!(claims.doc, "notes:*");
    assert_eq!(claims.role, Role::Write);
    assert!(
        claims.exp >= now + 7190 && claims.exp <= now + 7210,
        "{claims:?}"
    );
    assert!(token::verify(&Secret::new("other").unwrap(), token, now).is_err());
}

#[test]
fn token_reads_its_flags_from_the_environment() {
    let out = tandem()
        .arg("token")
        .env("TANDEM_AUTH_SECRET", "env-secret")
        .env("TANDEM_TOKEN_USER", "envuser")
        .env("TANDEM_TOKEN_DOC", "doc-1")
        .env("TANDEM_TOKEN_ROLE", "read")
        .env("TANDEM_TOKEN_TTL", "90s")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).unwrap();
    let claims = token::verify(
        &Secret::new("env-secret").unwrap(),
        token.trim(),
        unix_now(),
    )
    .unwrap();
    assert_eq!(
        (claims.sub.as_str(), claims.doc.as_str(), claims.role),
        ("envuser", "doc-1", Role::Read)
    );
    assert_eq!(claims.exp - claims.iat, 90);
}

#[test]
fn token_refuses_an_unknown_role() {
    let out = tandem()
        .args([
            "token", "--secret", "s", "--user", "u", "--doc", "d", "--role", "owner",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("owner"));
}

#[test]
fn serve_refuses_a_public_address_without_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let out = tandem()
        .args(["serve", "--addr", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--auth-secret"), "{stderr}");
    assert!(stderr.contains("loopback"), "{stderr}");
}

#[test]
fn serve_says_once_that_a_data_dir_naming_a_file_is_not_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let out = tandem()
        .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert!(error.contains("not a directory"), "{error}");
    assert_eq!(error.matches("not a directory").count(), 1, "{error}");
    assert!(!error.contains("os error"), "{error}");
}

/// A running `tandem serve`, killed if the test fails before stopping it.
struct Server {
    child: Child,
    addr: SocketAddr,
    log: Vec<String>,
}

impl Server {
    fn start(mut cmd: Command) -> Server {
        let mut child = cmd
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut log = Vec::new();
        let addr = loop {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("server exited before listening: {log:#?}"))
                .unwrap();
            let found = line
                .split("listening on ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|a| a.parse::<SocketAddr>().ok());
            log.push(line);
            if let Some(addr) = found {
                break addr;
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server { child, addr, log }
    }

    fn get(&self, path: &str) -> String {
        let mut stream = TcpStream::connect(self.addr).unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).unwrap();
        out
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        self.child.wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn serve_answers_healthz_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = tandem();
    // Defaults everywhere except an ephemeral port; the data dir defaults to ./tandem-data.
    cmd.arg("serve")
        .env("TANDEM_ADDR", "127.0.0.1:0")
        .current_dir(dir.path());
    let server = Server::start(cmd);
    assert!(
        server
            .log
            .iter()
            .any(|l| l.contains("OPEN DEVELOPMENT MODE")),
        "{:#?}",
        server.log
    );
    let health = server.get("/healthz");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.contains("\"status\":\"ok\""), "{health}");
    let metrics = server.get("/metrics");
    assert!(metrics.contains("tandem_connections 0"), "{metrics}");
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    assert!(dir.path().join("tandem-data/tandem.sqlite3").exists());
}

#[test]
fn serve_with_a_secret_says_nothing_about_open_mode() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = tandem();
    cmd.args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env(
            "TANDEM_AUTH_SECRET",
            "a-long-enough-secret-for-this-test-0123456789",
        );
    let server = Server::start(cmd);
    assert!(!server
        .log
        .iter()
        .any(|l| l.contains("OPEN DEVELOPMENT MODE")));
    assert!(server.get("/healthz").contains("\"mode\":\"secured\""));
    assert!(server.terminate().success());
}
