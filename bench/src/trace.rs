//! Editing traces (gzipped JSON, the josephg/editing-traces format) and their replay into Yjs
//! updates, one update per transaction, built with yrs on the writer's own document.
//!
//! Positions in traces count Unicode code points; yrs is set to count UTF-16 units, so positions
//! are converted (a no-op for ASCII documents, the common case).

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use flate2::read::GzDecoder;
use serde::Deserialize;
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, OffsetKind, Options, ReadTxn, StateVector, Text, TextRef, Transact};

/// Name of the top-level `Y.Text` every workload edits.
pub const TEXT_NAME: &str = "text";

/// One patch: delete `del` code points at `pos`, then insert `ins` there.
#[derive(Debug, Clone, Deserialize)]
pub struct Patch(pub usize, pub usize, pub String);

/// A transaction of a sequential trace.
#[derive(Debug, Clone, Deserialize)]
pub struct SeqTxn {
    /// The transaction's patches, applied in order.
    pub patches: Vec<Patch>,
}

/// A sequential trace: one author, transactions applied in order.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SequentialTrace {
    /// Text before the first transaction.
    #[serde(default)]
    pub start_content: String,
    /// Text after the last transaction.
    pub end_content: String,
    /// The transactions.
    pub txns: Vec<SeqTxn>,
}

/// A transaction of a concurrent trace.
#[derive(Debug, Clone, Deserialize)]
pub struct ConcTxn {
    /// Indexes of the transactions whose merged state this one applies to.
    pub parents: Vec<usize>,
    /// The author.
    pub agent: usize,
    /// The patches, positions relative to the merged parents' text.
    pub patches: Vec<Patch>,
}

/// A concurrent trace: several authors, each transaction applied on the merge of its parents.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConcurrentTrace {
    /// Number of authors.
    pub num_agents: usize,
    /// Text after every transaction has been merged.
    pub end_content: String,
    /// The transactions, parents before children.
    pub txns: Vec<ConcTxn>,
}

fn read_gz_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    serde_json::from_reader(BufReader::new(GzDecoder::new(file)))
        .with_context(|| format!("parsing {}", path.display()))
}

/// Loads a sequential trace.
pub fn load_sequential(path: &Path) -> Result<SequentialTrace> {
    read_gz_json(path)
}

/// Loads a concurrent trace.
pub fn load_concurrent(path: &Path) -> Result<ConcurrentTrace> {
    read_gz_json(path)
}

/// A document whose text is edited with code-point positions.
pub struct Editor {
    doc: Doc,
    text: TextRef,
    /// Set when every text this editor will hold is ASCII: positions then need no conversion.
    ascii: bool,
}

impl Editor {
    /// A fresh document owned by `client_id`.
    pub fn new(client_id: u64) -> Self {
        let mut opts = Options::with_client_id(yrs::block::ClientID::new(client_id));
        opts.offset_kind = OffsetKind::Utf16;
        let doc = Doc::with_options(opts);
        let text = doc.get_or_insert_text(TEXT_NAME);
        Editor {
            doc,
            text,
            ascii: false,
        }
    }

    /// Declares that the text stays ASCII, so code points equal UTF-16 units.
    pub fn ascii_only(mut self, ascii: bool) -> Self {
        self.ascii = ascii;
        self
    }

    /// The document.
    pub fn doc(&self) -> &Doc {
        &self.doc
    }

    /// Applies `patches` in one transaction and returns that transaction's update (v1).
    pub fn apply(&self, patches: &[Patch]) -> Result<Vec<u8>> {
        let mut txn = self.doc.transact_mut();
        for Patch(pos, del, ins) in patches {
            let len = self.text.len(&txn);
            let (start, units) = if self.ascii {
                (*pos as u32, *del as u32)
            } else {
                let s = self.text.get_string(&txn);
                let a = utf16_offset(&s, *pos);
                let b = utf16_offset(&s, pos + del);
                (a, b - a)
            };
            ensure!(
                start + units <= len,
                "patch at {pos} (+{del}) runs past the end of a {len}-unit text"
            );
            if units > 0 {
                self.text.remove_range(&mut txn, start, units);
            }
            if !ins.is_empty() {
                self.text.insert(&mut txn, start, ins);
            }
        }
        Ok(txn.encode_update_v1())
    }

    /// Applies a v1 update received from elsewhere.
    pub fn apply_update(&self, update: &[u8]) -> Result<()> {
        let u = yrs::Update::decode_v1(update).context("decoding update")?;
        self.doc
            .transact_mut()
            .apply_update(u)
            .context("applying update")?;
        Ok(())
    }

    /// The current text.
    pub fn text(&self) -> String {
        self.text.get_string(&self.doc.transact())
    }

    /// The current text length in UTF-16 units.
    pub fn len(&self) -> u32 {
        self.text.len(&self.doc.transact())
    }

    /// True when the text is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole document as one v1 update.
    pub fn full_update(&self) -> Vec<u8> {
        self.doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    /// The document's state vector.
    pub fn state_vector(&self) -> StateVector {
        self.doc.transact().state_vector()
    }
}

fn utf16_offset(s: &str, code_points: usize) -> u32 {
    s.chars()
        .take(code_points)
        .map(|c| c.len_utf16() as u32)
        .sum()
}

fn patches_ascii<'a>(mut patches: impl Iterator<Item = &'a Patch>) -> bool {
    patches.all(|p| p.2.is_ascii())
}

/// A sequential trace replayed into updates.
pub struct SequentialReplay {
    /// One update per transaction (an initial one first when the trace has start content).
    pub updates: Vec<Vec<u8>>,
    /// The text after the replayed transactions.
    pub final_text: String,
    /// The writer's document after the replay.
    pub editor: Editor,
}

/// Replays the first `limit` transactions (all when `None`) as `client_id`.
pub fn replay_sequential(
    trace: &SequentialTrace,
    client_id: u64,
    limit: Option<usize>,
) -> Result<SequentialReplay> {
    let n = limit.unwrap_or(trace.txns.len()).min(trace.txns.len());
    let txns = &trace.txns[..n];
    let ascii =
        trace.start_content.is_ascii() && patches_ascii(txns.iter().flat_map(|t| t.patches.iter()));
    let editor = Editor::new(client_id).ascii_only(ascii);
    let mut updates = Vec::with_capacity(n + 1);
    if !trace.start_content.is_empty() {
        updates.push(editor.apply(&[Patch(0, 0, trace.start_content.clone())])?);
    }
    for (i, t) in txns.iter().enumerate() {
        updates.push(
            editor
                .apply(&t.patches)
                .with_context(|| format!("transaction {i}"))?,
        );
    }
    let final_text = editor.text();
    if n == trace.txns.len() && final_text != trace.end_content {
        bail!("replaying the whole trace did not reach endContent");
    }
    Ok(SequentialReplay {
        updates,
        final_text,
        editor,
    })
}

/// Like [`replay_sequential`], but keeps the updates in `cache` (a folder) and reuses them on
/// later runs: replaying through yrs's index-based editing is slow on long documents, while
/// applying the cached updates by id is fast. `key` names the trace in the cache.
pub fn replay_sequential_cached(
    trace: &SequentialTrace,
    key: &str,
    client_id: u64,
    limit: Option<usize>,
    cache: Option<&Path>,
) -> Result<SequentialReplay> {
    let Some(dir) = cache else {
        return replay_sequential(trace, client_id, limit);
    };
    let n = limit.unwrap_or(trace.txns.len()).min(trace.txns.len());
    let file = dir.join(format!(
        "{key}-{n}of{}-{client_id}.updates",
        trace.txns.len()
    ));
    let state_file = file.with_extension("state");
    let cached = std::fs::read(&file)
        .ok()
        .and_then(|b| decode_updates(&b))
        .zip(std::fs::read(&state_file).ok());
    if let Some((updates, state)) = cached {
        // The final document was cached too: merging 100k small updates is slow.
        let editor = Editor::new(client_id);
        editor.apply_update(&state)?;
        let final_text = editor.text();
        if n < trace.txns.len() || final_text == trace.end_content {
            return Ok(SequentialReplay {
                updates,
                final_text,
                editor,
            });
        }
    }
    let replay = replay_sequential(trace, client_id, limit)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(&file, encode_updates(&replay.updates))
        .with_context(|| format!("writing {}", file.display()))?;
    std::fs::write(&state_file, replay.editor.full_update())
        .with_context(|| format!("writing {}", state_file.display()))?;
    Ok(replay)
}

fn encode_updates(updates: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(updates.iter().map(|u| u.len() + 3).sum::<usize>() + 8);
    crate::lib0::write_var_u64(&mut out, updates.len() as u64);
    for u in updates {
        crate::lib0::write_var_bytes(&mut out, u);
    }
    out
}

fn decode_updates(bytes: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut c = crate::lib0::Cursor::new(bytes);
    let n = c.var_u64().ok()?;
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(c.var_bytes().ok()?.to_vec());
    }
    c.is_empty().then_some(out)
}

/// A concurrent trace replayed: every transaction's update, built on its author's document
/// holding exactly the merge of the transaction's parents.
pub struct ConcurrentReplay {
    /// Update of transaction `i`.
    pub updates: Vec<Vec<u8>>,
    /// Author of transaction `i`.
    pub agent: Vec<usize>,
    /// For transaction `i`, per other agent, the highest index of that agent's transactions it
    /// depends on (directly or through its own earlier transactions).
    pub deps: Vec<Vec<Option<usize>>>,
    /// Text of the merge of every transaction, as yrs orders concurrent inserts.
    pub final_text: String,
    /// Whether that text equals the trace's endContent.
    pub matches_end_content: bool,
}

/// Replays the first `limit` transactions of a concurrent trace; agent `a` writes as client
/// `base_client + a`.
pub fn replay_concurrent(
    trace: &ConcurrentTrace,
    base_client: u64,
    limit: Option<usize>,
) -> Result<ConcurrentReplay> {
    let n = limit.unwrap_or(trace.txns.len()).min(trace.txns.len());
    let txns = &trace.txns[..n];
    let agents = trace.num_agents;
    ensure!(agents >= 1, "trace has no agents");
    let ascii = patches_ascii(txns.iter().flat_map(|t| t.patches.iter()));
    let editors: Vec<Editor> = (0..agents)
        .map(|a| Editor::new(base_client + a as u64).ascii_only(ascii))
        .collect();
    // version[i][a] = how many of agent a's transactions (a prefix of them, in trace order)
    // transaction i's state includes, itself counted.
    let mut version: Vec<Vec<usize>> = Vec::with_capacity(n);
    // Per agent: trace indexes of its transactions, in order.
    let mut by_agent: Vec<Vec<usize>> = vec![Vec::new(); agents];
    // Per agent: the version its editor holds now.
    let mut holds: Vec<Vec<usize>> = vec![vec![0; agents]; agents];
    let mut updates: Vec<Vec<u8>> = Vec::with_capacity(n);
    let mut agent_of = Vec::with_capacity(n);
    let mut deps = Vec::with_capacity(n);
    {
        for (i, t) in txns.iter().enumerate() {
            ensure!(
                t.agent < agents,
                "transaction {i}: agent {} unknown",
                t.agent
            );
            let mut need = vec![0usize; agents];
            for &p in &t.parents {
                ensure!(p < i, "transaction {i}: parent {p} is not earlier");
                for (a, v) in version[p].iter().enumerate() {
                    need[a] = need[a].max(*v);
                }
            }
            let me = t.agent;
            for a in 0..agents {
                ensure!(
                    holds[me][a] <= need[a],
                    "transaction {i}: agent {me} already holds more of agent {a} than the \
                     parents do; this replay needs each author's view to only grow"
                );
                // Bring the author's document up to the parents' merge.
                for idx in &by_agent[a][holds[me][a]..need[a]] {
                    editors[me].apply_update(&updates[*idx])?;
                }
                holds[me][a] = need[a];
            }
            ensure!(
                need[me] == by_agent[me].len(),
                "transaction {i}: does not build on all of agent {me}'s earlier transactions"
            );
            let u = editors[me]
                .apply(&t.patches)
                .with_context(|| format!("transaction {i}"))?;
            updates.push(u);
            agent_of.push(me);
            by_agent[me].push(i);
            need[me] += 1;
            holds[me][me] = need[me];
            deps.push(
                (0..agents)
                    .map(|a| {
                        if a == me || need[a] == 0 {
                            None
                        } else {
                            Some(by_agent[a][need[a] - 1])
                        }
                    })
                    .collect(),
            );
            version.push(need);
        }
    }
    // Merge everything into one document.
    let merged = Editor::new(base_client + agents as u64 + 1);
    for u in &updates {
        merged.apply_update(u)?;
    }
    let final_text = merged.text();
    let matches_end_content = n == trace.txns.len() && final_text == trace.end_content;
    Ok(ConcurrentReplay {
        updates,
        agent: agent_of,
        deps,
        final_text,
        matches_end_content,
    })
}

/// Counts how often each agent authored a transaction (for reports).
pub fn txns_per_agent(replay: &ConcurrentReplay) -> HashMap<usize, usize> {
    let mut m = HashMap::new();
    for a in &replay.agent {
        *m.entry(*a).or_insert(0) += 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(txns: Vec<Vec<Patch>>, end: &str) -> SequentialTrace {
        SequentialTrace {
            start_content: String::new(),
            end_content: end.into(),
            txns: txns.into_iter().map(|patches| SeqTxn { patches }).collect(),
        }
    }

    #[test]
    fn sequential_replay_reaches_end_content_with_code_point_positions() {
        let t = seq(
            vec![
                vec![Patch(0, 0, "h€llo".into())],
                vec![Patch(1, 1, "e".into())],
                vec![Patch(5, 0, " 😀!".into())],
                vec![Patch(6, 1, "".into()), Patch(0, 0, ">".into())],
            ],
            ">hello !",
        );
        let r = replay_sequential(&t, 9, None).expect("replays");
        assert_eq!(r.final_text, ">hello !");
        assert_eq!(r.updates.len(), 4);
        let reader = Editor::new(10);
        for u in &r.updates {
            reader.apply_update(u).expect("applies");
        }
        assert_eq!(reader.text(), ">hello !");
    }

    #[test]
    fn cached_replay_matches_a_fresh_one() {
        let t = seq(
            vec![
                vec![Patch(0, 0, "abc".into())],
                vec![Patch(1, 1, "X".into())],
                vec![Patch(3, 0, "!".into())],
            ],
            "aXc!",
        );
        let dir = std::env::temp_dir().join(format!("tandem-bench-cache-{}", std::process::id()));
        let first = replay_sequential_cached(&t, "t", 4, None, Some(&dir)).expect("replays");
        let second = replay_sequential_cached(&t, "t", 4, None, Some(&dir)).expect("from cache");
        assert_eq!(first.updates, second.updates);
        assert_eq!(second.final_text, "aXc!");
        assert_eq!(
            second.editor.full_update().len(),
            first.editor.full_update().len()
        );
        std::fs::remove_dir_all(&dir).expect("cleans up");
    }

    #[test]
    fn sequential_replay_checks_end_content() {
        let t = seq(vec![vec![Patch(0, 0, "a".into())]], "b");
        assert!(replay_sequential(&t, 1, None).is_err());
        assert_eq!(
            replay_sequential(&t, 1, Some(0))
                .expect("prefix")
                .final_text,
            ""
        );
    }

    #[test]
    fn concurrent_replay_forks_and_merges() {
        // Agent 0 types "ab", agent 1 concurrently types "X" at 0 on top of "a", then agent 0
        // merges and appends "!".
        let trace = ConcurrentTrace {
            num_agents: 2,
            end_content: String::new(),
            txns: vec![
                ConcTxn {
                    parents: vec![],
                    agent: 0,
                    patches: vec![Patch(0, 0, "a".into())],
                },
                ConcTxn {
                    parents: vec![0],
                    agent: 0,
                    patches: vec![Patch(1, 0, "b".into())],
                },
                ConcTxn {
                    parents: vec![0],
                    agent: 1,
                    patches: vec![Patch(0, 0, "X".into())],
                },
                ConcTxn {
                    parents: vec![1, 2],
                    agent: 0,
                    patches: vec![Patch(3, 0, "!".into())],
                },
            ],
        };
        let r = replay_concurrent(&trace, 100, None).expect("replays");
        assert_eq!(r.final_text, "Xab!");
        assert_eq!(r.deps[2], vec![Some(0), None]);
        assert_eq!(r.deps[3], vec![None, Some(2)]);
        assert_eq!(txns_per_agent(&r)[&0], 3);
    }
}
