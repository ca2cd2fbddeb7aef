//! W9 capacity: the highest typing load a server sustains at the latency target, and its CPU per
//! delivery at one fixed load.
//!
//! Each step is a W2 classroom on a fresh document: `w9_clients` clients, each announcing its
//! presence; `typists` of them type `w9_rate_hz` keystrokes/s for `w9_seconds`, every
//! keystroke one update plus one cursor (awareness) update. A step passes when keystroke p99
//! stays under `w9_p99_ms` and every delivery arrives. First the fixed load
//! (`w9_fixed_typists`, for `w9_fixed_seconds`): its server CPU per delivery is the number
//! compared across servers. Then the ladder of [`crate::capacity::Ladder`] up to
//! `w9_max_typists`, stopping at the first failing step and bisecting the last gap
//! `w9_refine` times.
//!
//! `bench/run.sh --capacity` pins the server to CPU 0 and the generator to CPU 1; the notes
//! record what the server and the generator were allowed to run on, and how many runtime
//! worker threads tandem started.

use std::time::Duration;

use anyhow::Result;

use super::w2_classroom::{classroom, Classroom};
use super::{log, Env, Workload, WorkloadResult};
use crate::capacity::{Ladder, Step};

/// How long the server's CPU must stay nearly idle before a step starts.
const SETTLE_WINDOW: Duration = Duration::from_millis(250);
/// "Nearly idle": below this share of a core over [`SETTLE_WINDOW`].
const SETTLE_LOAD: f64 = 0.05;
/// The longest wait for the server to settle.
const SETTLE_MAX: Duration = Duration::from_secs(10);

pub(super) async fn run(env: &Env) -> Result<WorkloadResult> {
    let s = &env.sizes;
    let mut r = WorkloadResult::new(Workload::W9);
    r.note(format!(
        "each step: {} clients on a fresh document, each sending its presence on join; N of them \
         type {} keystrokes/s, each keystroke one update plus one cursor (awareness) update; a \
         delivery is one of these received by a client other than its sender. A step passes \
         when keystroke p99 < {} ms and every delivery arrives within {} s of the last send",
        s.w9_clients, s.w9_rate_hz, s.w9_p99_ms, s.w9_drain_seconds
    ));
    if let Some(pid) = env.pids.first() {
        r.note(format!(
            "server: CPUs allowed {}, {} runtime worker threads (tandem's tokio workers; 0 for \
             the Node servers)",
            cpus_allowed(&pid.to_string()).unwrap_or_else(|| "?".into()),
            threads_named(*pid, "tokio-runtime-w")
        ));
    }
    r.note(format!(
        "generator: CPUs allowed {}",
        cpus_allowed("self").unwrap_or_else(|| "?".into())
    ));

    // The fixed load first: CPU per delivery where every server keeps up.
    settle(env).await;
    let fixed = step(env, s.w9_fixed_typists, s.w9_fixed_seconds, true).await?;
    log(&format!("W9 fixed load: {}", describe(&fixed)));
    if !fixed.pass {
        // Correctness at a load every server is expected to sustain.
        for f in &fixed.failures {
            r.fail(format!("fixed load ({} typists): {f}", fixed.typists));
        }
    }
    r.metric("fixed_typists", fixed.typists as f64);
    r.metric("fixed_cpu_us_per_delivery", fixed.cpu_us_per_delivery);
    r.metric("fixed_p99_ms", fixed.p99_ms);
    r.metric("fixed_server_load", fixed.server_load);
    r.steps.push(fixed);

    let mut ladder = Ladder::new(s.w9_max_typists, s.w9_refine);
    while let Some(typists) = ladder.next() {
        settle(env).await;
        let st = step(env, typists, s.w9_seconds, false).await?;
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
    Ok(r)
}

/// Runs one step: a classroom of `typists` typists typing for `seconds`.
async fn step(env: &Env, typists: usize, seconds: f64, fixed: bool) -> Result<Step> {
    let s = &env.sizes;
    let shape = Classroom {
        clients: s.w9_clients,
        typists,
        rate_hz: s.w9_rate_hz,
        seconds,
        drain_seconds: s.w9_drain_seconds,
        docs: 1,
        targets: vec![env.target.clone()],
        doc_name: Some(format!("w9-t{typists}{}", if fixed { "-fixed" } else { "" })),
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
        keystrokes_per_s: typists as f64 * s.w9_rate_hz,
        seconds,
        fixed,
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
         per delivery, server {:.0}% / generator {:.0}% of a core: {}",
        st.typists,
        st.p50_ms,
        st.p99_ms,
        st.max_ms,
        st.received,
        st.expected,
        st.cpu_us_per_delivery,
        st.server_load * 100.0,
        st.generator_load * 100.0,
        if st.pass {
            "pass".to_string()
        } else {
            format!("FAIL ({})", st.failures.join("; "))
        }
    )
}

/// Waits until the server's CPU has been nearly idle for a moment (the previous step's clients
/// are gone), at most [`SETTLE_MAX`].
async fn settle(env: &Env) {
    let Some(p) = &env.server else { return };
    let deadline = tokio::time::Instant::now() + SETTLE_MAX;
    let mut last = p.cpu_seconds().ok();
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(SETTLE_WINDOW).await;
        let now = p.cpu_seconds().ok();
        if let (Some(a), Some(b)) = (last, now) {
            if (b - a) / SETTLE_WINDOW.as_secs_f64() < SETTLE_LOAD {
                return;
            }
        }
        last = now;
    }
}

/// The `Cpus_allowed_list` of a process (`self` or a pid).
fn cpus_allowed(id: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{id}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_string())
}

/// How many threads of process `pid` are named `comm`.
fn threads_named(pid: u32, comm: &str) -> usize {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    dir.flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm"))
                .is_ok_and(|c| c.trim_end() == comm)
        })
        .count()
}
