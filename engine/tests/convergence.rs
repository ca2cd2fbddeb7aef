//! Property test: three users edit texts, write registers and undo/redo on their own
//! replicas; updates reach the others in random order, with duplicates. Every replica ends
//! with the same texts, register values and versions.
//!
//! Each case is driven by one seed, printed on failure; rerun a case with
//! `TANDEM_SEED=<seed> cargo test -p tandem-engine --test convergence`.

use proptest::prelude::*;
use tandem_engine::Document;

mod common;
use common::Rng;

const USERS: [&str; 3] = ["alice", "bob", "carol"];
const FIELDS: [&str; 2] = ["description", "comment:1"];
const REGISTERS: [&str; 2] = ["status", "due"];
const WORDS: [&str; 5] = ["a", "xyz", "😀", "é", "hello "];

fn run(seed: u64) {
    let mut rng = Rng::new(seed);
    let mut replicas: Vec<Document> = (0..3).map(|i| Document::new(i as u64 + 1)).collect();
    // Every update made so far, with its author.
    let mut log: Vec<(usize, Vec<u8>)> = Vec::new();
    // Clock skew per replica (ms).
    let skew: Vec<u64> = (0..3).map(|_| rng.below(5_000)).collect();
    let steps = 20 + rng.below(60);
    for step in 0..steps {
        let now = 10_000 + step * 300;
        let i = rng.below(3) as usize;
        let user = USERS[i];
        let r = &mut replicas[i];
        r.set_time(now + skew[i]);
        let update = match rng.below(8) {
            0..=2 => {
                let field = FIELDS[rng.below(2) as usize];
                let len = r.text_len(field);
                let at = rng.below(u64::from(len) + 1) as u32;
                let word = WORDS[rng.below(WORDS.len() as u64) as usize];
                Some(r.insert(user, field, at, word).unwrap())
            }
            3 => {
                let field = FIELDS[rng.below(2) as usize];
                let len = r.text_len(field);
                if len == 0 {
                    None
                } else {
                    let at = rng.below(u64::from(len)) as u32;
                    let n = 1 + rng.below(u64::from(len - at)) as u32;
                    // Never split a surrogate pair: move to whole characters.
                    let text = r.text(field).unwrap();
                    let units: Vec<u16> = text.encode_utf16().collect();
                    let start = if (0xDC00..0xE000).contains(&units[at as usize]) {
                        at - 1
                    } else {
                        at
                    };
                    let mut end = at + n;
                    if (end as usize) < units.len()
                        && (0xDC00..0xE000).contains(&units[end as usize])
                    {
                        end += 1;
                    }
                    Some(r.delete(user, field, start, end - start).unwrap())
                }
            }
            4 | 5 => {
                let name = REGISTERS[rng.below(2) as usize];
                let value = if rng.below(5) == 0 {
                    None
                } else {
                    Some(serde_json::json!(rng.below(100)))
                };
                Some(r.set_field(user, name, value).unwrap().1)
            }
            6 => r.undo(user),
            _ => r.redo(user),
        };
        if let Some(u) = update {
            log.push((i, u));
        }
        // Sometimes a replica catches up with a random part of the log.
        if rng.below(3) == 0 {
            let j = rng.below(3) as usize;
            let from = rng.below(log.len() as u64 + 1) as usize;
            for (author, u) in &log[from..] {
                replicas[j].apply_update(u, Some(USERS[*author])).unwrap();
            }
        }
    }
    // Final delivery: every update to every replica, shuffled, with duplicates.
    for (j, r) in replicas.iter_mut().enumerate() {
        let mut order: Vec<usize> = (0..log.len()).collect();
        order.extend((0..log.len() / 3).map(|_| rng.below(log.len() as u64) as usize));
        for k in (1..order.len()).rev() {
            let swap = rng.below(k as u64 + 1) as usize;
            order.swap(k, swap);
        }
        for k in order {
            let (author, u) = &log[k];
            r.apply_update(u, Some(USERS[*author]))
                .unwrap_or_else(|e| panic!("seed {seed}: replica {j}: {e}"));
        }
        assert_eq!(
            r.pending_len(),
            0,
            "seed {seed}: replica {j} has pending updates"
        );
    }
    for j in 1..3 {
        assert_eq!(
            replicas[0].texts(),
            replicas[j].texts(),
            "seed {seed}: texts differ"
        );
        assert_eq!(
            replicas[0].fields(),
            replicas[j].fields(),
            "seed {seed}: registers differ"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn replicas_converge(seed in any::<u64>()) {
        let result = std::panic::catch_unwind(|| run(seed));
        if result.is_err() {
            eprintln!("convergence failed with seed {seed}");
        }
        prop_assert!(result.is_ok(), "seed {}", seed);
    }
}

#[test]
fn replay_seed_from_environment() {
    // Lets a failing seed be rerun exactly; runs a fixed seed otherwise.
    let seed = std::env::var("TANDEM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    println!("seed {seed}");
    run(seed);
}

#[test]
fn seeds_that_once_diverged() {
    // Out-of-order delivery once left updates stuck as pending inside yrs and texts apart.
    for seed in [17_648_529_772_320_590_422, 10_975_857_212_429_788_664] {
        run(seed);
    }
}
