//! Offline training of a draft head (`augur train-head`): the static speculator for a model with
//! no smaller sibling. It uses the online trainer unchanged: each corpus document runs through
//! the target with the head attached, so its rows land in the replay ring exactly as live
//! traffic would (prompt rows from prefill; with `generate` > 0 also the target's own
//! continuation, which is what the head must predict when serving), and after each document
//! the head takes enough steps that every new sample is seen `epochs` times on average.

use crate::engine::{CancelToken, Engine, GenerateParams};
use crate::error::{Error, Result};
use crate::spec::SpecMode;
use std::path::Path;

/// One training document: text to prefill, and whether it is a request (chat template, then the
/// target's answer is generated and learned too) or plain text.
pub struct Document {
    pub text: String,
    pub request: bool,
}

/// Reads a corpus: `.jsonl` lines with `prompt`, `turns[0]` or `text` (the first two are
/// requests), or any other file as plain text split at blank lines into documents.
pub fn read_corpus(paths: &[std::path::PathBuf]) -> Result<Vec<Document>> {
    let mut docs = Vec::new();
    for p in paths {
        let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
        if p.extension().is_some_and(|e| e == "jsonl") {
            for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let v: serde_json::Value = serde_json::from_str(line)
                    .map_err(|e| Error::msg(format!("{}:{}: not JSON ({e})", p.display(), i + 1)))?;
                let request = v["prompt"].as_str().or(v["turns"].get(0).and_then(|t| t.as_str()));
                match (request, v["text"].as_str()) {
                    (Some(t), _) => docs.push(Document { text: t.to_string(), request: true }),
                    (None, Some(t)) => docs.push(Document { text: t.to_string(), request: false }),
                    (None, None) => {
                        return Err(Error::msg(format!(
                            "{}:{}: no \"prompt\", \"turns\" or \"text\" field",
                            p.display(),
                            i + 1
                        )));
                    }
                }
            }
        } else {
            docs.extend(
                text.split("\n\n")
                    .filter(|d| !d.trim().is_empty())
                    .map(|d| Document { text: d.to_string(), request: false }),
            );
        }
    }
    docs.retain(|d| !d.text.trim().is_empty());
    if docs.is_empty() {
        return Err(Error::msg("the corpus holds no text; give .jsonl files (prompt/turns/text fields) or text files"));
    }
    Ok(docs)
}

pub struct OfflineOptions {
    /// Tokens of the target's own answer generated (and learned) per request document.
    pub generate: usize,
    /// Average passes over each sample.
    pub epochs: f64,
}

/// Trains the engine's attached head on `docs`; `progress` sees (documents done, all, stats).
pub fn train(
    engine: &mut Engine,
    docs: &[Document],
    o: &OfflineOptions,
    mut progress: impl FnMut(usize, usize, &crate::spec::head::HeadStats),
) -> Result<()> {
    if engine.head.is_none() {
        return Err(Error::msg("train-head needs a draft head attached"));
    }
    let ctx = engine.model.max_ctx;
    let c = CancelToken::default();
    for (i, d) in docs.iter().enumerate() {
        let mut ids = engine.encode_prompt(&d.text, d.request)?;
        // long documents: their start only, leaving room for the answer
        ids.truncate(ctx.saturating_sub(o.generate + 8).max(2));
        let params = GenerateParams {
            max_tokens: if d.request { o.generate.max(1) } else { 1 },
            chat: d.request,
            speculate: SpecMode::Head,
            tree_budget: 4,
            max_depth: 3,
            ..Default::default()
        };
        let head = engine.head.as_ref().expect("checked above");
        let before = head.stats.samples_recorded;
        engine.generate_tokens(&ids, &params, &c, |_| true)?;
        let head = engine.head.as_mut().expect("checked above");
        let new = head.stats.samples_recorded - before;
        let steps = (new as f64 * o.epochs / head.head.max_batch as f64).ceil() as usize;
        head.train_steps(steps);
        progress(i + 1, docs.len(), &head.stats);
    }
    Ok(())
}

/// The default file of the offline-trained (static) head for a model file stem.
pub fn static_head_path(home: &Path, stem: &str) -> std::path::PathBuf {
    home.join("heads").join(format!("{stem}.static.safetensors"))
}
