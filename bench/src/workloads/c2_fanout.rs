//! C2 cross-node fan-out: the W2 classroom (one document, presence on join, a few typists
//! sending a keystroke and a cursor update at a steady rate) with its clients spread over every
//! node of the server round robin, so most deliveries cross from one node to another.
//!
//! Run against a one-node setup it is the baseline the several-node numbers are compared with.
//! Measured and checked as W2 (every client must receive every other client's keystrokes and
//! cursor updates; a missing one is a lost delivery), plus keystroke latency split into
//! same-node and cross-node deliveries.

use anyhow::Result;

use super::w2_classroom::{classroom, Classroom};
use super::{Env, Workload, WorkloadResult};

pub(super) async fn run(env: &Env) -> Result<WorkloadResult> {
    let s = &env.sizes;
    let shape = Classroom {
        clients: s.c2_clients,
        typists: s.c2_typists,
        rate_hz: s.c2_rate_hz,
        seconds: s.c2_seconds,
        drain_seconds: s.c2_drain_seconds,
        docs: 1,
        targets: env.targets.clone(),
        doc_name: None,
        settle: false,
        presence: true,
        kernel_stamps: false,
    };
    classroom(env, Workload::C2, shape).await
}
