//! Speculative decoding: speculators propose token trees, the target verifies a whole tree in
//! one tree-masked pass, and the GPU accepts a path (greedy: the target's argmax at every step,
//! so output is identical to plain decoding).
//!
//! One proposer per method behind `Speculator`; acceptance lives in shaders/accept.wgsl; the
//! numbers in `stats`.

pub mod calibration;
pub mod candidates;
pub mod controller;
pub mod cost;
pub mod draft;
pub mod head;
pub mod stats;
pub mod suffix;
pub mod tree;

pub use tree::{Drafter, Node, TokenTree};

/// Which speculation to use (`--speculate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum SpecMode {
    Off,
    Suffix,
    /// A smaller model of the target's family (`--draft`).
    Draft,
    /// The adaptive draft head on the target's hidden states, learning online.
    Head,
    /// The controller (`controller.rs`): every speculator available, trees sized each round
    /// from measured acceptance and measured cost on this device.
    Auto,
}

impl std::str::FromStr for SpecMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(SpecMode::Off),
            "suffix" => Ok(SpecMode::Suffix),
            "auto" => Ok(SpecMode::Auto),
            "draft" => Ok(SpecMode::Draft),
            "head" => Ok(SpecMode::Head),
            _ => Err(format!("unknown --speculate '{s}' (off, suffix, draft, head, auto)")),
        }
    }
}

/// A proposer of token trees.
pub trait Speculator {
    fn drafter(&self) -> Drafter;
    /// A new request starts with this prompt.
    fn begin(&mut self, prompt: &[u32]);
    /// A tree of at most `budget` nodes and `max_depth` levels continuing `context` (every
    /// committed token of the request; the last one is the tree's root).
    fn propose(&mut self, context: &[u32], budget: usize, max_depth: usize) -> TokenTree;
    /// How the target picks this round's tokens (`draw`: the index of the generated token the
    /// root's row produces). A drafter with a distribution of its own can draw each draft as the
    /// target will, with the same uniform for the same position (accept.wgsl draw_rows): where the
    /// two distributions agree, so do the draws, and sampled drafts are accepted as often as
    /// greedy ones.
    fn set_sampling(&mut self, _s: crate::model::gpu::Sampling) {}
    /// Leave out drafts whose estimated acceptance is below `c` (0..1).
    fn set_min_confidence(&mut self, _c: f32) {}
    /// A speculator that drafts level by level in passes of its own: expand a node into the
    /// next level only if its estimated acceptance is at least `c`, the price of a level's
    /// pass and a verification row (a level paid for by its top node alone, at best).
    fn set_expand_confidence(&mut self, _c: f32) {}
    /// What one of its drafting levels (a pass over the expanded nodes) costs, as measured over
    /// its recent levels (None: it drafts in no passes, or has drafted no level past the first).
    fn level_ms(&self) -> Option<f64> {
        None
    }
    /// The request ended with these tokens (prompt and output): learn from them.
    fn finish(&mut self, context: &[u32], prompt_len: usize);
    /// Of the last `propose`, the milliseconds spent feeding committed tokens that earlier rounds
    /// would have fed had it drafted in them (a speculator with its own cache, asked after
    /// sitting out).
    fn idle_catch_up_ms(&self) -> f64 {
        0.0
    }
    /// What feeding one committed token into its own cache costs, as last measured (a
    /// speculator that keeps a cache: the price of catching up after sitting out).
    fn feed_ms_per_token(&self) -> Option<f64> {
        None
    }
    /// Of the last `propose`: the deepest level it drafted and what the pass that drafted that
    /// level took (None: it drafted nothing, or drafts in no passes).
    fn deepest_level(&self) -> Option<(usize, f64)> {
        None
    }
    /// Runs each kind and size of pass it will run once, so that a driver that compiles a
    /// kernel's code at its first dispatch does so here and not in a timed round (lavapipe with
    /// a cold shader cache took 2-4 s on a 0.5B draft model's first 2- and 3-row levels). For
    /// benchmarks; what it leaves in its cache is dropped, and the next request feeds its prompt.
    fn warm_up(&mut self) -> crate::error::Result<()> {
        Ok(())
    }
}
