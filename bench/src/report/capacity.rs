//! The "Capacity" section of RESULTS.md (W9, `bench/run.sh --capacity`): capacity at the
//! latency target per server, every step tried, and CPU per delivery at the fixed load as a
//! ratio to the floor relay's. Written between markers so that the main report keeps it.

use std::fmt::Write as _;

use super::{fmt_num, peer_name};
use crate::capacity::Step;
use crate::target::Server;
use crate::workloads::{RunResult, Sizes, WorkloadResult};

/// The line that opens the section.
pub const BEGIN: &str =
    "<!-- capacity: begin (bench/run.sh --capacity writes this section; bench/run.sh keeps it) -->";
/// The line that closes it.
pub const END: &str = "<!-- capacity: end -->";

/// Column order: tandem, the peers, the floor last.
const ORDER: [Server; 4] = [
    Server::Tandem,
    Server::Hocuspocus,
    Server::Ywebsocket,
    Server::Floor,
];

/// The section in `text`, markers included.
pub fn extract(text: &str) -> Option<&str> {
    super::section::extract(text, BEGIN, END)
}

/// `text` with its section replaced by `block` (appended when it has none).
pub fn replace(text: &str, block: &str) -> String {
    super::section::replace(text, BEGIN, END, block)
}

/// Renders the section from the W9 results of `runs`.
pub fn render(runs: &[RunResult], meta: &[(String, String)]) -> String {
    let mut cols: Vec<(Server, &WorkloadResult, &Sizes)> = Vec::new();
    for s in ORDER {
        if let Some((run, w)) = runs.iter().filter(|r| r.server == s).find_map(|r| {
            r.workloads
                .iter()
                .find(|w| w.workload == "w9")
                .map(|w| (r, w))
        }) {
            cols.push((s, w, &run.sizes));
        }
    }
    let mut md = String::new();
    let _ = writeln!(md, "{BEGIN}");
    let _ = writeln!(md, "## Capacity at the latency target (W9)\n");
    let Some((_, _, sizes)) = cols.first().copied() else {
        let _ = writeln!(md, "No W9 results.\n\n{END}");
        return md;
    };
    let _ = writeln!(
        md,
        "Written by `bench/run.sh --capacity`. How much typing one document with {} clients \
         takes before keystroke p99 reaches {} ms or a delivery goes missing, each server alone \
         on one core.\n",
        sizes.w9_clients, sizes.w9_p99_ms
    );
    for (k, v) in meta {
        let _ = writeln!(md, "- **{k}**: {v}");
    }
    let _ = writeln!(
        md,
        "- **Method**: the server runs pinned to CPU 0 (`taskset -c 0`), the load generator to \
         CPU 1 (`taskset -c 1`, one runtime thread), so neither takes the other's core. Each step \
         is a W2 classroom on a fresh document: {clients} clients connect (without announcing \
         a presence: the join's n² presence deliveries would take a Node server longer than the \
         step), then N typists type {rate} keystrokes/s each for {secs} s, every keystroke one \
         document update followed by one cursor (awareness) update, staggered evenly. A delivery \
         is one update received by a client other than its sender: a step expects \
         2 × keystrokes × {readers}. It passes when keystroke p99 < {p99} ms and every delivery \
         arrives (within {drain} s of the last send; missing ones count in the percentiles with \
         the time waited). N climbs 1, 2, 4, 8, 12, 16, 24, 32, 48, … up to {max} and stops at \
         the first failing step; then the gap below it is bisected {refine} time(s). Capacity is \
         the highest passing N. A keystroke's latency runs from the writer's send (read before \
         its write) to the kernel's receive timestamp of the read that completed the frame at \
         the reader (`SO_TIMESTAMPNS`): when the server's data reached the reader's socket, not \
         when the generator's one thread got round to reading that socket among the thousand.\n\
         - **CPU per delivery** is the server's user + system CPU (/proc/<pid>/stat) from the \
         first keystroke to the last delivery, divided by the deliveries, at a fixed load of \
         {fixed} typist(s) at {fixed_rate} keystrokes/s for {fixed_s} s (run first, {fixed_runs} \
         time(s); the table shows the run with the median CPU per delivery), a load every \
         server is meant to sustain: below saturation, where CPU per delivery is a cost, not a \
         queue. Every step starts on a settled server: after the join the generator waits until the server's CPU is below 5% for 250 ms.\n\
         - **The floor** (`tandem-bench floor`) is a relay on the same core that accepts the same \
         connections and writes every update and cursor message a client sends, unchanged, to \
         every other connection of the document, one task per connection and the frames queued \
         while it writes in one `write` (at most 64, as tandem batches); no CRDT, no protocol \
         beyond an empty sync step 2 and the present clients' last awareness message for a \
         joiner. Its CPU per delivery is what the kernel and WebSocket framing cost for this \
         fan-out; tandem's ratio to it is the overhead of everything else.\n\
         - **Generator load** is the generator's CPU over the same window in cores: near 100% \
         the generator, not the server, limited the step (the floor shows where that happens). \
         **Server waiting for its CPU** is the time the server's threads were runnable but \
         another process held CPU 0 (`/proc/<pid>/task/*/schedstat`), in cores: on a quiet \
         machine it stays near 0%; well above, the latencies measure the machine's other work.\n",
        clients = sizes.w9_clients,
        rate = sizes.w9_rate_hz,
        secs = sizes.w9_seconds,
        readers = sizes.w9_clients.saturating_sub(1),
        p99 = sizes.w9_p99_ms,
        drain = sizes.w9_drain_seconds,
        max = sizes.w9_max_typists,
        refine = sizes.w9_refine,
        fixed = sizes.w9_fixed_typists,
        fixed_rate = sizes.w9_fixed_rate_hz,
        fixed_runs = sizes.w9_fixed_runs.max(1),
        fixed_s = sizes.w9_fixed_seconds,
    );

    // Capacity.
    let header = |md: &mut String| {
        let _ = writeln!(
            md,
            "| |{}\n|---|{}",
            cols.iter()
                .map(|(s, _, _)| format!(" {} |", peer_name(*s)))
                .collect::<String>(),
            "---:|".repeat(cols.len())
        );
    };
    let _ = writeln!(md, "### Capacity\n");
    header(&mut md);
    let cap = |w: &WorkloadResult| w.metrics.get("capacity_typists").copied();
    let row = |md: &mut String, label: &str, f: &dyn Fn(&WorkloadResult) -> String| {
        let _ = writeln!(
            md,
            "| {label} |{}",
            cols.iter()
                .map(|(_, w, _)| format!(" {} |", f(w)))
                .collect::<String>()
        );
    };
    row(&mut md, "capacity (typists)", &|w| match cap(w) {
        Some(c) if !w.metrics.contains_key("first_failing_typists") => {
            format!("≥ {}", c as usize)
        }
        Some(c) => format!("{}", c as usize),
        None => "none passed".into(),
    });
    row(&mut md, "keystrokes/s at capacity", &|w| {
        cap(w)
            .map(|c| fmt_num(c * sizes.w9_rate_hz))
            .unwrap_or_else(|| "–".into())
    });
    row(&mut md, "deliveries/s at capacity", &|w| {
        cap(w)
            .map(|c| {
                fmt_num(2.0 * c * sizes.w9_rate_hz * sizes.w9_clients.saturating_sub(1) as f64)
            })
            .unwrap_or_else(|| "–".into())
    });
    row(&mut md, "keystroke p99 at capacity (ms)", &|w| {
        at_capacity(w)
            .map(|s| fmt_num(s.p99_ms))
            .unwrap_or_else(|| "–".into())
    });
    row(&mut md, "server load at capacity", &|w| {
        at_capacity(w)
            .map(|s| format!("{:.0}%", s.server_load * 100.0))
            .unwrap_or_else(|| "–".into())
    });
    row(&mut md, "generator load at capacity", &|w| {
        at_capacity(w)
            .map(|s| format!("{:.0}%", s.generator_load * 100.0))
            .unwrap_or_else(|| "–".into())
    });
    row(&mut md, "first failing step", &|w| {
        first_failing(w)
            .map(|s| format!("{} ({})", s.typists, s.failures.join("; ")))
            .unwrap_or_else(|| "none".into())
    });
    let _ = writeln!(md);

    // Fixed load.
    let floor = cols
        .iter()
        .find(|(s, _, _)| *s == Server::Floor)
        .and_then(|(_, w, _)| fixed(w))
        .map(|s| s.cpu_us_per_delivery)
        .filter(|v| *v > 0.0);
    let _ = writeln!(
        md,
        "### CPU per delivery at the fixed load ({} typists, {} keystrokes/s, {} deliveries/s)\n",
        sizes.w9_fixed_typists,
        fmt_num(sizes.w9_fixed_typists as f64 * sizes.w9_fixed_rate_hz),
        fmt_num(
            2.0 * sizes.w9_fixed_typists as f64
                * sizes.w9_fixed_rate_hz
                * sizes.w9_clients.saturating_sub(1) as f64
        )
    );
    header(&mut md);
    let fx = |w: &WorkloadResult, f: &dyn Fn(&Step) -> String| {
        fixed(w).map(f).unwrap_or_else(|| "–".into())
    };
    row(&mut md, "server CPU per delivery (µs)", &|w| {
        fx(w, &|s| {
            format!("{:.3}{}", s.cpu_us_per_delivery, pass_mark(s))
        })
    });
    row(&mut md, "× the floor", &|w| {
        fx(w, &|s| match floor {
            Some(f) => format!("{:.2}×", s.cpu_us_per_delivery / f),
            None => "–".into(),
        })
    });
    row(&mut md, "of which the store writer thread (µs)", &|w| {
        fx(w, &|s| match s.store_cpu_s {
            Some(c) => format!("{:.3}", c * 1e6 / s.received.max(1) as f64),
            None => "–".into(),
        })
    });
    row(&mut md, "server load", &|w| {
        fx(w, &|s| format!("{:.0}%", s.server_load * 100.0))
    });
    row(&mut md, "keystroke p50 / p99 / max (ms)", &|w| {
        fx(w, &|s| {
            format!(
                "{} / {} / {}",
                fmt_num(s.p50_ms),
                fmt_num(s.p99_ms),
                fmt_num(s.max_ms)
            )
        })
    });
    row(&mut md, "deliveries received / expected", &|w| {
        fx(w, &|s| {
            format!(
                "{} / {}",
                fmt_num(s.received as f64),
                fmt_num(s.expected as f64)
            )
        })
    });
    row(&mut md, "server waiting for its CPU", &|w| {
        fx(w, &|s| format!("{:.0}%", s.server_wait * 100.0))
    });
    row(&mut md, "generator load", &|w| {
        fx(w, &|s| format!("{:.0}%", s.generator_load * 100.0))
    });
    let _ = writeln!(md, "\n† the step failed its check (see the step tables).\n");

    // Every step.
    let _ = writeln!(md, "### Steps\n");
    for (s, w, _) in &cols {
        let _ = writeln!(md, "**{}**\n", peer_name(*s));
        for n in &w.notes {
            if n.starts_with("server:") || n.starts_with("generator:") {
                let _ = writeln!(md, "- {n}");
            }
        }
        let _ = writeln!(
            md,
            "\n| typists | keystrokes/s | p50 (ms) | p99 (ms) | max (ms) | cursor p99 (ms) | \
             delivered / expected | CPU per delivery (µs) | server load | server waiting for \
             its CPU | generator load | |\n\
             |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
        );
        for st in &w.steps {
            let verdict = match (st.fixed, st.pass) {
                (true, true) => "fixed load".to_string(),
                (true, false) => format!("fixed load, failed: {}", st.failures.join("; ")),
                (false, true) => "pass".to_string(),
                (false, false) => format!("fail: {}", st.failures.join("; ")),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} / {} | {:.3} | {:.0}% | {:.0}% | {:.0}% | {} |",
                st.typists,
                fmt_num(st.keystrokes_per_s),
                fmt_num(st.p50_ms),
                fmt_num(st.p99_ms),
                fmt_num(st.max_ms),
                fmt_num(st.awareness_p99_ms),
                fmt_num(st.received as f64),
                fmt_num(st.expected as f64),
                st.cpu_us_per_delivery,
                st.server_load * 100.0,
                st.server_wait * 100.0,
                st.generator_load * 100.0,
                verdict
            );
        }
        let _ = writeln!(md);
    }
    let _ = write!(md, "{END}");
    md
}

/// The fixed-load run reported: the median by CPU per delivery.
fn fixed(w: &WorkloadResult) -> Option<&Step> {
    crate::capacity::median_run(w.steps.iter().filter(|s| s.fixed))
}

fn at_capacity(w: &WorkloadResult) -> Option<&Step> {
    let c = w.metrics.get("capacity_typists").copied()? as usize;
    w.steps.iter().find(|s| !s.fixed && s.typists == c)
}

fn first_failing(w: &WorkloadResult) -> Option<&Step> {
    let f = w.metrics.get("first_failing_typists").copied()? as usize;
    w.steps.iter().find(|s| !s.fixed && s.typists == f)
}

fn pass_mark(s: &Step) -> &'static str {
    if s.pass {
        ""
    } else {
        super::FAILED_MARK
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workloads::Mode;

    fn step(typists: usize, fixed: bool, pass: bool, cpu_us: f64) -> Step {
        Step {
            typists,
            keystrokes_per_s: typists as f64 * 20.0,
            fixed,
            expected: 100,
            received: if pass { 100 } else { 90 },
            p99_ms: if pass { 3.0 } else { 30.0 },
            cpu_us_per_delivery: cpu_us,
            pass,
            failures: if pass {
                vec![]
            } else {
                vec!["10 of 100 deliveries missing".into()]
            },
            ..Default::default()
        }
    }

    fn run(server: Server, cap: usize, fixed_cpu: f64) -> RunResult {
        let mut w = WorkloadResult {
            workload: "w9".into(),
            ok: true,
            ..Default::default()
        };
        w.steps.push(step(2, true, true, fixed_cpu));
        for t in [1, 2, 4, 8] {
            w.steps.push(step(t, false, t <= cap, 1.0));
            if t > cap {
                w.metrics.insert("first_failing_typists".into(), t as f64);
                break;
            }
        }
        w.metrics.insert("capacity_typists".into(), cap as f64);
        RunResult {
            server,
            setup: None,
            nodes: 1,
            mode: Mode::Full,
            sizes: Sizes::of(Mode::Full),
            workloads: vec![w],
        }
    }

    #[test]
    fn renders_capacity_and_ratios_to_the_floor() {
        let runs = vec![
            run(Server::Floor, 8, 0.5),
            run(Server::Tandem, 4, 1.5),
            run(Server::Ywebsocket, 2, 5.0),
        ];
        let md = render(&runs, &[("date".into(), "today".into())]);
        assert!(md.starts_with(BEGIN) && md.ends_with(END));
        // Columns in order: tandem, y-websocket, floor (no Hocuspocus run).
        assert!(md.contains("| | tandem | y-websocket | floor |"), "{md}");
        assert!(md.contains("| capacity (typists) | 4 | 2 | ≥ 8 |"), "{md}");
        assert!(
            md.contains("| × the floor | 3.00× | 10.00× | 1.00× |"),
            "{md}"
        );
        assert!(md.contains("| first failing step | 8 (10 of 100 deliveries missing) |"));
        let doc = format!("# Results\n\n{md}\n\n## After\n");
        assert_eq!(extract(&doc), Some(md.as_str()));
        let again = replace(&doc, "NEW");
        assert!(again.contains("# Results") && again.contains("NEW") && !again.contains(BEGIN));
    }
}
