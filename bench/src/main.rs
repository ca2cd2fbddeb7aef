//! `tandem-bench`: runs the workloads against one server, or turns result files into
//! `RESULTS.md`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use tandem_bench::procstat::Proc;
use tandem_bench::report;
use tandem_bench::target::{Server, Target};
use tandem_bench::workloads::{self, log, Env, Mode, RunResult, Sizes, Workload};

#[derive(Parser)]
#[command(name = "tandem-bench", about = "y-websocket load generator")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run workloads against one running server.
    Run(RunArgs),
    /// Write RESULTS.md from the result files of several runs.
    Report(ReportArgs),
    /// Write the "Several nodes" section of RESULTS.md (C1–C3) from result files, replacing
    /// that section of the file and leaving the rest as it is.
    ReportNodes(ReportArgs),
    /// Write the "Capacity" section of RESULTS.md (W9) from result files, replacing that
    /// section of the file and leaving the rest as it is.
    ReportCapacity(ReportArgs),
    /// Serve the floor relay: the capacity workload's fan-out without CRDT or protocol, on one
    /// thread (for CPU per delivery ratios).
    Floor {
        /// Loopback address to listen on.
        #[arg(long)]
        addr: SocketAddr,
    },
    /// Print a free TCP port on 127.0.0.1 (for starting a server on it).
    FreePort,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Which server implementation listens at --addr.
    #[arg(long, value_enum)]
    server: Server,
    /// The server's loopback address; for a server of several nodes, every node's, in order
    /// (comma-separated or repeated). Single-node workloads use the first.
    #[arg(long, value_delimiter = ',', required = true)]
    addr: Vec<SocketAddr>,
    /// Clients of tandem speak the Hocuspocus dialect on `/ws` (as `@hocuspocus/provider`
    /// does) instead of the stock protocol on `/ws/{doc}`.
    #[arg(long)]
    tandem_hocuspocus: bool,
    /// The server's pid, to read its CPU time and memory from /proc; for several nodes, every
    /// node's, in `--addr` order (the failover workload kills the first).
    #[arg(long, value_delimiter = ',')]
    pid: Vec<u32>,
    /// A name for how the server was set up, kept in the results (`tandem-3`, `tandem-1`,
    /// `hocuspocus-2`: the several-node report's columns).
    #[arg(long)]
    setup: Option<String>,
    /// Pids of services the nodes share (Redis), whose CPU time is reported.
    #[arg(long, value_delimiter = ',')]
    aux_pid: Vec<u32>,
    /// The PostgreSQL database the nodes share: its backends' CPU time is reported.
    #[arg(long)]
    db_name: Option<String>,
    /// Quick (smoke test) or full sizes.
    #[arg(long, value_enum, default_value_t = Mode::Quick)]
    mode: Mode,
    /// Workloads to run, in order (C1–C3 are the several-node workloads: pass every node with
    /// `--addr`).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "w1,w2,w3,w4,w5,w6,w7,w8"
    )]
    workloads: Vec<Workload>,
    /// Folder holding the editing traces.
    #[arg(long, default_value = "../shared/traces")]
    traces: PathBuf,
    /// Override a size: `--size w2_seconds=10` (repeatable; see `Sizes`).
    #[arg(long = "size")]
    sizes: Vec<String>,
    /// Token for tandem (`?token=`) or Hocuspocus's Auth message.
    #[arg(long)]
    token: Option<String>,
    /// Tokio worker threads of the generator.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Write the results as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Keep replayed traces in this folder and reuse them on later runs.
    #[arg(long)]
    cache: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ReportArgs {
    /// Result files (JSON written by `run --out`).
    #[arg(required = true)]
    results: Vec<PathBuf>,
    /// Where to write the Markdown report.
    #[arg(long)]
    out: PathBuf,
    /// Facts about the run to print in the report header: `--meta key=value`.
    #[arg(long)]
    meta: Vec<String>,
    /// A Markdown file appended to the report (analysis of the runs).
    #[arg(long)]
    notes: Option<PathBuf>,
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Run(args) => run(args),
        Cmd::Report(args) => {
            let meta = parse_meta(&args.meta)?;
            report::write(&args.results, &args.out, &meta, args.notes.as_deref())
        }
        Cmd::ReportNodes(args) => {
            let meta = parse_meta(&args.meta)?;
            report::write_nodes(&args.results, &args.out, &meta)
        }
        Cmd::ReportCapacity(args) => {
            let meta = parse_meta(&args.meta)?;
            report::write_capacity(&args.results, &args.out, &meta)
        }
        Cmd::Floor { addr } => tandem_bench::floor::serve(addr),
        Cmd::FreePort => {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            println!("{}", l.local_addr()?.port());
            Ok(())
        }
    }
}

fn parse_meta(meta: &[String]) -> Result<Vec<(String, String)>> {
    meta.iter()
        .map(|m| {
            m.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("--meta {m}: expected key=value"))
        })
        .collect()
}

fn run(args: RunArgs) -> Result<()> {
    if let Some(a) = args.addr.iter().find(|a| !a.ip().is_loopback()) {
        bail!("only loopback addresses are benchmarked, not {a}");
    }
    // Many sockets per process: raise the soft open-file limit to the hard one.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => log(&format!("open-file limit {n}")),
        Err(e) => log(&format!("could not raise the open-file limit: {e}")),
    }
    let sizes = Sizes::of(args.mode).with_overrides(&args.sizes)?;
    let nonce = format!(
        "{:x}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    let targets: Vec<Target> = args
        .addr
        .iter()
        .map(|addr| Target {
            server: args.server,
            addr: *addr,
            token: args.token.clone(),
            tandem_hocuspocus: args.tandem_hocuspocus,
            ext: false,
        })
        .collect();
    let env = Env {
        target: targets[0].clone(),
        targets,
        server: args.pid.first().copied().map(Proc::pid),
        pids: args.pid.clone(),
        aux: args.aux_pid.iter().copied().map(Proc::pid).collect(),
        db_name: args.db_name.clone(),
        sizes: sizes.clone(),
        traces: args.traces,
        nonce,
        cache: args.cache,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    let mut result = RunResult {
        server: args.server,
        setup: args.setup.clone(),
        nodes: args.addr.len(),
        mode: args.mode,
        sizes,
        workloads: Vec::new(),
    };
    let mut ok = true;
    for w in &args.workloads {
        log(&format!("{} {w} ({:?})", args.server, args.mode));
        let r = match rt.block_on(workloads::run(*w, &env)) {
            Ok(r) => r,
            Err(e) => workloads::WorkloadResult::errored(*w, &e),
        };
        for f in &r.failures {
            log(&format!("{w} FAILED: {f}"));
        }
        ok &= r.ok;
        println!("{}", serde_json::to_string(&r)?);
        result.workloads.push(r);
    }
    // Let the client tasks' sockets close before the process exits.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_vec_pretty(&result)?)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    if !ok {
        bail!("a workload failed its checks");
    }
    Ok(())
}
