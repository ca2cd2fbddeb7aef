//! W9 capacity: the highest typing load a server sustains at the latency target, and its CPU per
//! delivery at one fixed load.
//!
//! Each step is a W2 classroom on a fresh document: `w9_clients` clients join without
//! announcing a presence (the join's n² presence deliveries would outlast the step); once the
//! server's CPU has settled, `typists` of them type `w9_rate_hz` keystrokes/s for `w9_seconds`,
//! every keystroke one update plus one cursor (awareness) update. A step passes when keystroke
//! p99 stays under `w9_p99_ms` and every delivery arrives. First the fixed load
//! (`w9_fixed_typists` at `w9_fixed_rate_hz`, for `w9_fixed_seconds`): its server CPU per
//! delivery is the number compared across servers. Then the ladder of
//! [`crate::capacity::Ladder`] up to `w9_max_typists` (0: the fixed load only), stopping at the
//! first failing step and bisecting the last gap `w9_refine` times.
//!
//! `bench/run.sh --capacity` pins the server to CPU 0 and the generator to CPU 1; the notes
//! record what each was allowed to run on, and the server's threads with their CPU time.

use anyhow::Result;

use super::w2_classroom::{classroom, Classroom};
use super::{log, Env, Workload, WorkloadResult};
use crate::capacity::{Ladder, Step};
use crate::procstat::Proc;

pub(super) async fn run(env: &Env) -> Result<WorkloadResult> {
    let s = &env.sizes;
    let mut r = WorkloadResult::new(Workload::W9);
    r.note(format!(
        "each step: {} clients join a fresh document (without presence: no awareness until the \
         typing); N of them type {} keystrokes/s, each keystroke one update plus one cursor \
         (awareness) update; a delivery is one of these received by a client other than its sender. A step passes \
         when keystroke p99 < {} ms and every delivery arrives within {} s of the last send",
        s.w9_clients, s.w9_rate_hz, s.w9_p99_ms, s.w9_drain_seconds
    ));
    r.note(format!(
        "generator: CPUs allowed {}",
        cpus_allowed("self").unwrap_or_else(|| "?".into())
    ));

    // The fixed load first: CPU per delivery where every server keeps up, run a few times (the
    // median run is reported: a busy machine moves single runs by a third).
    let mut runs = Vec::new();
    for i in 0..s.w9_fixed_runs.max(1) {
        env.settle().await;
        let st = step(
            env,
            s.w9_fixed_typists,
            s.w9_fixed_rate_hz,
            s.w9_fixed_seconds,
            Some(i),
        )
        .await?;
        log(&format!("W9 fixed load: {}", describe(&st)));
        runs.push(st);
    }
    let fixed = crate::capacity::median_run(&runs)
        .cloned()
        .unwrap_or_default();
    // Correctness at a load every server is expected to sustain: every delivery arrives. (Its
    // latency is judged, not checked: a busy machine can push p99 over the target.)
    for (i, run) in runs.iter().enumerate() {
        if run.received < run.expected {
            r.fail(format!(
                "fixed load ({} typists), run {}: {} of {} deliveries missing",
                run.typists,
                i + 1,
                run.expected - run.received,
                run.expected
            ));
        }
    }
    if !fixed.pass {
        log("W9: the fixed load did not pass (its CPU per delivery is still reported)");
    }
    r.metric("fixed_typists", fixed.typists as f64);
    r.metric("fixed_cpu_us_per_delivery", fixed.cpu_us_per_delivery);
    r.metric("fixed_p99_ms", fixed.p99_ms);
    r.metric("fixed_server_load", fixed.server_load);
    r.steps.extend(runs);

    let mut ladder = Ladder::new(s.w9_max_typists, s.w9_refine);
    while let Some(typists) = ladder.next() {
        env.settle().await;
        let st = step(env, typists, s.w9_rate_hz, s.w9_seconds, None).await?;
        log(&format!("W9 step: {}", describe(&st)));
        ladder.record(typists, st.pass);
        r.steps.push(st);
    }
    match ladder.capacity() {
        Some(c) => {
            r.metric("capacity_typists", c as f64);
            r.metric("capacity_keystrokes_per_s", c as f64 * s.w9_rate_hz);
        }
        None => r.note("no step passed".to_string()),
    }
    if let Some(f) = ladder.first_failure() {
        r.metric("first_failing_typists", f as f64);
    } else {
        r.note(format!(
            "every step passed up to the top of the ladder ({} typists): the capacity is at \
             least that",
            s.w9_max_typists
        ));
    }
    // What the server ran on, with each thread's CPU over the whole run: under taskset, tokio
    // sizes its worker pool from `available_parallelism` (the affinity mask: one CPU), so
    // tandem has one busy `tokio-rt-worker`; a second one of that name is its blocking pool.
    if let Some(pid) = env.pids.first() {
        r.note(format!(
            "server: CPUs allowed {}; threads (CPU seconds over the run): {}",
            cpus_allowed(&pid.to_string()).unwrap_or_else(|| "?".into()),
            threads(*pid)
        ));
    }
    Ok(r)
}

/// Runs one step: a classroom of `typists` typists typing for `seconds`; `fixed`: the i-th run
/// of the fixed load.
async fn step(
    env: &Env,
    typists: usize,
    rate_hz: f64,
    seconds: f64,
    fixed: Option<usize>,
) -> Result<Step> {
    let s = &env.sizes;
    let shape = Classroom {
        clients: s.w9_clients,
        typists,
        rate_hz,
        seconds,
        drain_seconds: s.w9_drain_seconds,
        docs: 1,
        targets: vec![env.target.clone()],
        // Every step on a document of its own (the ladder never repeats a typist count).
        doc_name: Some(match fixed {
            Some(i) => format!("w9-t{typists}-fixed{i}"),
            None => format!("w9-t{typists}"),
        }),
        settle: true,
        presence: false,
        kernel_stamps: true,
    };
    let w = classroom(env, Workload::W9, shape).await?;
    let m = |k: &str| w.metrics.get(k).copied().unwrap_or(f64::NAN);
    let keystrokes = m("updates");
    let readers = (s.w9_clients.max(1) - 1) as f64;
    let expected = (2.0 * keystrokes * readers) as u64;
    let received = m("deliveries") as u64;
    let window = m("typing_s") + m("drain_s");
    let cpu = m("server_cpu_s");
    let mut st = Step {
        typists,
        keystrokes_per_s: typists as f64 * rate_hz,
        seconds,
        fixed: fixed.is_some(),
        expected,
        received,
        p50_ms: m("keystroke_p50_ms"),
        p99_ms: m("keystroke_p99_ms"),
        max_ms: m("keystroke_max_ms"),
        awareness_p99_ms: m("awareness_p99_ms"),
        server_cpu_s: cpu,
        cpu_us_per_delivery: cpu * 1e6 / (received.max(1) as f64),
        store_cpu_s: w.metrics.get("writer_cpu_s").copied(),
        server_load: cpu / window,
        server_wait: m("server_run_wait_s") / window,
        generator_load: m("generator_load"),
        pass: false,
        failures: w.failures.clone(),
    };
    st.judge(s.w9_p99_ms);
    Ok(st)
}

fn describe(st: &Step) -> String {
    format!(
        "{} typists: p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms, {}/{} delivered, {:.3} µs CPU \
         per delivery, server {:.0}% (waiting for its CPU {:.0}%) / generator {:.0}% of a core: \
         {}",
        st.typists,
        st.p50_ms,
        st.p99_ms,
        st.max_ms,
        st.received,
        st.expected,
        st.cpu_us_per_delivery,
        st.server_load * 100.0,
        st.server_wait * 100.0,
        st.generator_load * 100.0,
        if st.pass {
            "pass".to_string()
        } else {
            format!("FAIL ({})", st.failures.join("; "))
        }
    )
}

/// The `Cpus_allowed_list` of a process (`self` or a pid).
fn cpus_allowed(id: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{id}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_string())
}

/// The threads of process `pid`: name and CPU seconds, busiest first.
fn threads(pid: u32) -> String {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return "?".into();
    };
    let mut out: Vec<(String, f64)> = dir
        .flatten()
        .filter_map(|e| {
            let name = std::fs::read_to_string(e.path().join("comm")).ok()?;
            let tid = e.file_name().to_string_lossy().into_owned();
            let cpu = Proc::task(pid, &tid).cpu_seconds().ok()?;
            Some((name.trim_end().to_string(), cpu))
        })
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    out.iter()
        .map(|(n, c)| format!("{n} {c:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}
