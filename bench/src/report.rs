//! Turns result files (`tandem-bench run --out`) into RESULTS.md: per workload a table of
//! absolute numbers per server and tandem's ratio against each peer, and a summary of where
//! tandem stands against the product's targets.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::target::Server;
use crate::workloads::{RunResult, WorkloadResult};

/// Which way a metric improves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Better {
    Higher,
    Lower,
    /// Context only: no ratio.
    Info,
}

struct Row {
    key: &'static str,
    label: &'static str,
    better: Better,
}

const fn row(key: &'static str, label: &'static str, better: Better) -> Row {
    Row { key, label, better }
}

fn rows(workload: &str) -> Vec<Row> {
    use Better::*;
    match workload {
        "w1" => vec![
            row("updates_per_s", "throughput (updates/s)", Higher),
            row("latency_p50_ms", "latency p50 (ms)", Lower),
            row("latency_p99_ms", "latency p99 (ms)", Lower),
            row("latency_max_ms", "latency max (ms)", Lower),
            row("server_cpu_s", "server CPU (s)", Lower),
            row("server_rss_peak_mib", "server RSS peak (MiB)", Lower),
            row("total_s", "first send to last reader complete (s)", Lower),
            row("deliveries", "deliveries", Info),
            row("generator_cpu_s", "generator CPU (s)", Info),
        ],
        "w2" => vec![
            row("keystroke_p50_ms", "keystroke latency p50 (ms)", Lower),
            row("keystroke_p99_ms", "keystroke latency p99 (ms)", Lower),
            row("keystroke_p999_ms", "keystroke latency p99.9 (ms)", Lower),
            row("keystroke_max_ms", "keystroke latency max (ms)", Lower),
            row("awareness_p99_ms", "awareness latency p99 (ms)", Lower),
            row(
                "server_cpu_s_per_1m_deliveries",
                "server CPU-seconds per 1M deliveries",
                Lower,
            ),
            row("server_cpu_s", "server CPU while typing (s)", Lower),
            row("server_rss_peak_mib", "server RSS peak (MiB)", Lower),
            row("keystrokes_per_s", "keystrokes sent per second", Info),
            row("deliveries", "deliveries", Info),
            row("drain_s", "last keystroke to all delivered (s)", Lower),
            row("join_s", "join + presence convergence (s)", Lower),
            row("generator_cpu_s", "generator CPU (s)", Info),
        ],
        "w3" => vec![
            row(
                "server_bytes_per_connection",
                "server memory per connection (bytes)",
                Lower,
            ),
            row(
                "server_rss_mib",
                "server RSS with all connected (MiB)",
                Lower,
            ),
            row("server_rss_before_mib", "server RSS before (MiB)", Info),
            row("connect_s", "connect + sync + presence (s)", Lower),
            row("server_cpu_s", "server CPU (s)", Lower),
        ],
        "w4" => vec![
            row("synced_p50_ms", "time to synced p50 (ms)", Lower),
            row("synced_p99_ms", "time to synced p99 (ms)", Lower),
            row("synced_max_ms", "time to synced max (ms)", Lower),
            row("server_cpu_s", "server CPU (s)", Lower),
            row("server_rss_peak_mib", "server RSS peak (MiB)", Lower),
            row("document_chars", "document length (chars)", Info),
            row("distinct_step2_payloads", "distinct step2 payloads", Info),
        ],
        "w5" => vec![
            row("converged_readers", "readers converged", Info),
            row("updates_per_s", "throughput (updates/s)", Higher),
            row("latency_p50_ms", "latency p50 (ms)", Lower),
            row("latency_p99_ms", "latency p99 (ms)", Lower),
            row("server_cpu_s", "server CPU (s)", Lower),
            row("server_rss_peak_mib", "server RSS peak (MiB)", Lower),
        ],
        "w6" => vec![
            row("updates_per_s", "throughput (updates/s)", Higher),
            row("latency_p50_ms", "latency p50 (ms)", Lower),
            row("latency_p99_ms", "latency p99 (ms)", Lower),
            row("server_cpu_s", "server CPU (s)", Lower),
            row("server_rss_peak_mib", "server RSS peak (MiB)", Lower),
        ],
        _ => vec![],
    }
}

fn title(workload: &str) -> &'static str {
    match workload {
        "w1" => "W1 trace replay (1 writer → N readers)",
        "w2" => "W2 classroom (fan-out with presence)",
        "w3" => "W3 idle connections",
        "w4" => "W4 join storm",
        "w5" => "W5 concurrent trace (2 writers → N readers)",
        "w6" => "W6 ingest (1 writer → 1 checking reader)",
        _ => "other",
    }
}

const SERVERS: [Server; 3] = [Server::Tandem, Server::Hocuspocus, Server::Ywebsocket];

fn peer_name(s: Server) -> &'static str {
    match s {
        Server::Tandem => "tandem",
        Server::Hocuspocus => "Hocuspocus",
        Server::Ywebsocket => "y-websocket",
    }
}

fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 10_000.0 {
        let s = format!("{:.0}", v);
        // Thousands separators.
        let (sign, digits) = s.split_at(usize::from(s.starts_with('-')));
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        format!("{sign}{out}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// How many times better tandem is than `peer` (above 1: better).
fn factor(better: Better, tandem: f64, peer: f64) -> Option<f64> {
    match better {
        Better::Info => None,
        Better::Higher if peer > 0.0 => Some(tandem / peer),
        Better::Lower if tandem > 0.0 => Some(peer / tandem),
        _ => None,
    }
}

fn fmt_factor(f: f64) -> String {
    if f >= 1.0 {
        format!("{f:.2}× better")
    } else {
        format!("{:.2}× worse", 1.0 / f)
    }
}

type Table = BTreeMap<String, BTreeMap<Server, WorkloadResult>>;

/// A metric and whether its run passed its checks.
fn metric(t: &Table, w: &str, s: Server, k: &str) -> Option<(f64, bool)> {
    let r = t.get(w)?.get(&s)?;
    r.metrics.get(k).map(|v| (*v, r.ok))
}

/// Marks numbers that come from a run that failed a check.
const FAILED_MARK: &str = "†";

fn mark(ok: bool) -> &'static str {
    if ok {
        ""
    } else {
        FAILED_MARK
    }
}

/// Writes the report for `results` to `out`.
pub fn write(
    results: &[PathBuf],
    out: &Path,
    meta: &[(String, String)],
    notes: Option<&Path>,
) -> Result<()> {
    let mut runs = Vec::new();
    for p in results {
        let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        let run: RunResult =
            serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", p.display()))?;
        runs.push(run);
    }
    let mut md = render(&runs, meta);
    if let Some(n) = notes {
        let text =
            std::fs::read_to_string(n).with_context(|| format!("reading {}", n.display()))?;
        md.push_str(&text);
    }
    std::fs::write(out, md).with_context(|| format!("writing {}", out.display()))
}

/// Renders the Markdown report.
pub fn render(runs: &[RunResult], meta: &[(String, String)]) -> String {
    let mut table: Table = BTreeMap::new();
    let mut modes = Vec::new();
    for run in runs {
        modes.push(format!("{:?}", run.mode).to_lowercase());
        for w in &run.workloads {
            table
                .entry(w.workload.clone())
                .or_default()
                .insert(run.server, w.clone());
        }
    }
    modes.sort();
    modes.dedup();
    let servers: Vec<Server> = SERVERS
        .iter()
        .copied()
        .filter(|s| table.values().any(|m| m.contains_key(s)))
        .collect();
    let peers: Vec<Server> = servers
        .iter()
        .copied()
        .filter(|s| *s != Server::Tandem)
        .collect();
    let has_tandem = servers.contains(&Server::Tandem);

    let mut md = String::new();
    let _ = writeln!(md, "# Benchmark results\n");
    let _ = writeln!(
        md,
        "Written by `bench/run.sh` (load generator: `tandem-bench`, crate `bench/`). Mode: {}.\n",
        modes.join(", ")
    );
    for (k, v) in meta {
        let _ = writeln!(md, "- **{k}**: {v}");
    }
    let _ = writeln!(
        md,
        "- Every server ran alone on the same machine, restarted fresh for each workload, on a \
         loopback port. The load generator ran on the same cores (it shares them with the \
         server; its own CPU time is listed as \"generator CPU\"). Server CPU and memory are read \
         from /proc/<pid>/stat and /proc/<pid>/status of the server process (the node process \
         for the Node servers).\n- Latencies are measured inside the generator: send and receive \
         timestamps from one clock; each update is matched at the reader by the Yjs ids it \
         carries.\n- Ratios read \"tandem is N× better/worse than the peer\" (for lower-is-better \
         numbers: peer ÷ tandem; for throughput: tandem ÷ peer).\n- {FAILED_MARK} marks a \
         number from a run that failed a check (the failures are listed under each table). When \
         a server fell behind and some updates never arrived in the time allowed, each missing \
         delivery counts in the latency percentiles with the time waited: those percentiles are \
         lower bounds.\n"
    );

    // Targets.
    let _ = writeln!(md, "## Where tandem stands against the targets\n");
    if !has_tandem {
        let _ = writeln!(
            md,
            "tandem was not part of this run: no verdicts. Peer numbers are below.\n"
        );
    }
    let _ = writeln!(
        md,
        "| Target (../shared/BRIEF.md) | Goal | tandem |{} Verdict |",
        peers
            .iter()
            .map(|p| format!(" {} |", peer_name(*p)))
            .collect::<String>()
    );
    let _ = writeln!(
        md,
        "| --- | --- | --- | {}--- |",
        "--- | ".repeat(peers.len())
    );
    let targets: [(&str, &str, &str, &str, f64, bool); 4] = [
        (
            "Fan-out: keystroke-to-reader p99 (W2)",
            "< 10 ms",
            "w2",
            "keystroke_p99_ms",
            10.0,
            false,
        ),
        (
            "Idle: server memory per connection (W3, bytes)",
            "< 8 KB (8,192)",
            "w3",
            "server_bytes_per_connection",
            8192.0,
            false,
        ),
        (
            "Join storm: time to synced p99 (W4)",
            "< 200 ms",
            "w4",
            "synced_p99_ms",
            200.0,
            false,
        ),
        (
            "Ingest: trace replay, one update per transaction (W6, updates/s)",
            "≥ 100,000/s",
            "w6",
            "updates_per_s",
            100_000.0,
            true,
        ),
    ];
    let cell = |w: &str, s: Server, k: &str| -> String {
        match table.get(w).and_then(|m| m.get(&s)) {
            None => "not run".into(),
            Some(r) => r
                .metrics
                .get(k)
                .map(|v| format!("{}{}", fmt_num(*v), mark(r.ok)))
                .unwrap_or_else(|| format!("n/a{}", mark(r.ok))),
        }
    };
    for (label, goal, w, k, limit, higher) in targets {
        let t = metric(&table, w, Server::Tandem, k);
        let verdict = match t {
            None => "not measured".to_string(),
            Some((_, false)) => "tandem failed a check".into(),
            Some((v, true)) if (higher && v >= limit) || (!higher && v < limit) => "**met**".into(),
            Some(_) => "**not met**".into(),
        };
        let peer_cells: String = peers
            .iter()
            .map(|p| format!(" {} |", cell(w, *p, k)))
            .collect();
        let _ = writeln!(
            md,
            "| {label} | {goal} | {} |{peer_cells} {verdict} |",
            cell(w, Server::Tandem, k),
        );
    }
    // CPU per delivery ratios.
    for (peer, goal) in [(Server::Hocuspocus, 10.0), (Server::Ywebsocket, 5.0)] {
        if !peers.contains(&peer) {
            continue;
        }
        let k = "server_cpu_s_per_1m_deliveries";
        let t = metric(&table, "w2", Server::Tandem, k);
        let p = metric(&table, "w2", peer, k);
        let (ratio, verdict) = match (t, p) {
            (Some((_, false)), _) => ("n/a".into(), "tandem failed a check"),
            (Some((t, true)), Some((p, p_ok))) if t > 0.0 => {
                let f = p / t;
                (
                    format!("{f:.1}× less{}", mark(p_ok)),
                    if f >= goal { "**met**" } else { "**not met**" },
                )
            }
            _ => ("n/a".into(), "not measured"),
        };
        let peer_cells: Vec<String> = peers
            .iter()
            .map(|q| {
                if *q == peer {
                    cell("w2", *q, k)
                } else {
                    String::new()
                }
            })
            .collect();
        let _ = writeln!(
            md,
            "| Fan-out: server CPU per delivered message vs {} (W2, CPU-s per 1M) | ≥ {goal}× less | {} ({ratio}) | {} | {verdict} |",
            peer_name(peer),
            cell("w2", Server::Tandem, k),
            peer_cells.join(" | ")
        );
    }
    // The bundle size comes from the wasm package build (`--meta bundle=<gzipped bytes>`).
    let bundle = meta
        .iter()
        .find(|(k, _)| k == "bundle")
        .and_then(|(_, v)| v.split_whitespace().next()?.parse::<f64>().ok());
    match bundle {
        Some(bytes) => {
            let verdict = if bytes < 250.0 * 1024.0 {
                "**met**"
            } else {
                "**not met**"
            };
            let _ = writeln!(
                md,
                "| Browser bundle (wasm + JS, gzip -9) | < 250 KB gzipped | {} bytes ({:.0} KB) |{} {verdict} |\n",
                fmt_num(bytes),
                bytes / 1024.0,
                " n/a |".repeat(peers.len())
            );
        }
        None => {
            let _ = writeln!(
                md,
                "| Browser bundle | < 250 KB gzipped | not measured by this benchmark |{} not measured |\n",
                " |".repeat(peers.len())
            );
        }
    }

    // Per workload.
    for (w, by_server) in &table {
        let _ = writeln!(md, "## {}\n", title(w));
        let notes = by_server
            .get(&Server::Tandem)
            .or_else(|| by_server.values().next())
            .map(|r| r.notes.clone())
            .unwrap_or_default();
        for n in notes {
            let _ = writeln!(md, "{n}.\n");
        }
        let mut header = String::from("| | ");
        header.push_str(
            &servers
                .iter()
                .map(|s| peer_name(*s))
                .collect::<Vec<_>>()
                .join(" | "),
        );
        if has_tandem {
            for p in &peers {
                let _ = write!(header, " | tandem vs {}", peer_name(*p));
            }
        }
        header.push_str(" |");
        let _ = writeln!(md, "{header}");
        let ncol = servers.len() + if has_tandem { peers.len() } else { 0 };
        let _ = writeln!(md, "| --- |{}", " --- |".repeat(ncol));
        let status: Vec<String> = servers
            .iter()
            .map(|s| match by_server.get(s) {
                None => "not run".into(),
                Some(r) if r.ok => "passed".into(),
                Some(_) => "**FAILED**".into(),
            })
            .collect();
        let _ = writeln!(
            md,
            "| correctness checks | {}{} |",
            status.join(" | "),
            if has_tandem {
                " | ".repeat(peers.len())
            } else {
                String::new()
            }
        );
        for r in rows(w) {
            let vals: Vec<Option<(f64, bool)>> = servers
                .iter()
                .map(|s| metric(&table, w, *s, r.key))
                .collect();
            if vals.iter().all(Option::is_none) {
                continue;
            }
            let mut line = format!("| {} |", r.label);
            for v in &vals {
                let text = v
                    .map(|(v, ok)| format!("{}{}", fmt_num(v), mark(ok)))
                    .unwrap_or_else(|| "–".into());
                let _ = write!(line, " {text} |");
            }
            if has_tandem {
                let t = metric(&table, w, Server::Tandem, r.key);
                for p in &peers {
                    let text = t
                        .zip(metric(&table, w, *p, r.key))
                        .and_then(|((t, t_ok), (pv, p_ok))| {
                            factor(r.better, t, pv)
                                .map(|f| format!("{}{}", fmt_factor(f), mark(t_ok && p_ok)))
                        })
                        .unwrap_or_default();
                    let _ = write!(line, " {text} |");
                }
            }
            let _ = writeln!(md, "{line}");
        }
        let _ = writeln!(md);
        for s in &servers {
            if let Some(r) = by_server.get(s) {
                for f in &r.failures {
                    let _ = writeln!(md, "- {} failed: {f}", peer_name(*s));
                }
            }
        }
        let _ = writeln!(md);
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workloads::{Mode, Sizes};

    fn result(w: &str, ok: bool, metrics: &[(&str, f64)]) -> WorkloadResult {
        WorkloadResult {
            workload: w.into(),
            ok,
            failures: if ok {
                vec![]
            } else {
                vec!["readers diverged".into()]
            },
            metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            notes: vec![],
        }
    }

    fn run(server: Server, w: Vec<WorkloadResult>) -> RunResult {
        RunResult {
            server,
            mode: Mode::Full,
            sizes: Sizes::of(Mode::Full),
            workloads: w,
        }
    }

    #[test]
    fn ratios_and_verdicts() {
        let md = render(
            &[
                run(
                    Server::Tandem,
                    vec![result(
                        "w2",
                        true,
                        &[
                            ("keystroke_p99_ms", 4.0),
                            ("server_cpu_s_per_1m_deliveries", 1.0),
                        ],
                    )],
                ),
                run(
                    Server::Hocuspocus,
                    vec![result(
                        "w2",
                        true,
                        &[
                            ("keystroke_p99_ms", 40.0),
                            ("server_cpu_s_per_1m_deliveries", 12.0),
                        ],
                    )],
                ),
                run(
                    Server::Ywebsocket,
                    vec![result(
                        "w2",
                        false,
                        &[
                            ("keystroke_p99_ms", 8.0),
                            ("server_cpu_s_per_1m_deliveries", 3.0),
                        ],
                    )],
                ),
            ],
            &[("machine".into(), "2 cores".into())],
        );
        assert!(md.contains("| Fan-out: keystroke-to-reader p99 (W2) | < 10 ms | 4.00 | 40.0 | 8.00† | **met** |"), "{md}");
        assert!(
            md.contains("vs Hocuspocus (W2, CPU-s per 1M) | ≥ 10× less | 1.00 (12.0× less)"),
            "{md}"
        );
        assert!(
            md.contains("| keystroke latency p99 (ms) | 4.00 | 40.0 | 8.00† | 10.00× better | 2.00× better† |"),
            "{md}"
        );
        assert!(md.contains("y-websocket failed: readers diverged"), "{md}");
        assert!(md.contains("Ingest") && md.contains("not measured"), "{md}");
    }

    #[test]
    fn numbers_are_readable() {
        assert_eq!(fmt_num(123_456.7), "123,457");
        assert_eq!(fmt_num(12.345), "12.3");
        assert_eq!(fmt_num(0.5), "0.50");
        assert_eq!(fmt_factor(0.5), "2.00× worse");
    }
}
