//! The `tandem` binary: parses the command line, sets up logging, and runs a subcommand.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use tandem_server::access::token::{self, TokenRequest};
use tandem_server::base::clock::unix_now;
use tandem_server::infra::cli::{Cli, Command, ServeArgs, TokenArgs};
use tandem_server::infra::config::{AuthMode, Config, Secret};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Token(args) => token(args),
        Command::Serve(args) => serve(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `tandem token`: prints a signed token on stdout.
fn token(args: TokenArgs) -> anyhow::Result<()> {
    let secret = Secret::new(args.secret).context("--secret")?;
    let request = TokenRequest {
        user: args.user,
        name: args.name,
        doc: args.doc,
        role: args.role,
        ttl: args.ttl,
    };
    let token = token::mint(&secret, &request.claims(unix_now()))?;
    println!("{token}");
    Ok(())
}

/// `tandem serve`: validates the flags, binds, and serves until SIGTERM or Ctrl-C.
fn serve(args: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = Config::from_args(args)?;
    if let AuthMode::Secret(secret) = &config.auth {
        if secret.len() < 32 {
            tracing::warn!(
                bytes = secret.len(),
                "--auth-secret is short; use at least 32 random bytes"
            );
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("cannot listen on {}", config.addr))?;
        tandem_server::run(listener, config, shutdown_signal()).await?;
        Ok(())
    })
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(cause = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(e) => {
                tracing::error!(cause = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("received Ctrl-C"),
        () = terminate => tracing::info!("received SIGTERM"),
    }
}
