//! Speculative decoding is lossless: greedy output with speculation is token for token the output
//! of plain decoding, for the suffix speculator and for random tree shapes (widths, depths,
//! right and wrong branches), on 28 prompts (Spec-Bench categories and code) with SmolLM2-135M.

mod common;
use augur::engine::{CancelToken, Engine, EngineOptions, GenerateParams};
use augur::spec::{Drafter, SpecMode, Speculator, TokenTree};
use common::*;

fn prompts() -> Vec<(String, String)> {
    include_str!("data/spec_prompts.jsonl")
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["category"].as_str().unwrap().to_string(), v["prompt"].as_str().unwrap().to_string())
        })
        .collect()
}

/// Proposes random trees around a known continuation: at each level the right token with some
/// probability, plus wrong siblings; sometimes wide, sometimes deep, sometimes empty.
struct RandomTrees {
    reference: Vec<u32>,
    prompt_len: usize,
    rng: Rng,
}

impl Speculator for RandomTrees {
    fn drafter(&self) -> Drafter {
        Drafter::Draft
    }
    fn begin(&mut self, prompt: &[u32]) {
        self.prompt_len = prompt.len();
    }
    fn propose(&mut self, context: &[u32], budget: usize, max_depth: usize) -> TokenTree {
        let mut t = TokenTree::default();
        let done = context.len() - self.prompt_len;
        let mut parent = None;
        for d in 0..max_depth {
            let right = self.reference.get(done + d).copied();
            let width = 1 + (self.rng.next() % 3) as usize;
            let mut next_parent = None;
            for w in 0..width {
                if t.len() >= budget {
                    return t;
                }
                let tok = if w == 0 && right.is_some() && self.rng.next() % 10 < 8 {
                    right.unwrap()
                } else {
                    (self.rng.next() % 49152) as u32
                };
                let i = t.push(parent, tok, 1.0, Drafter::Draft);
                if Some(tok) == right {
                    next_parent = Some(i);
                }
            }
            // continue under the right token, or under a wrong one now and then
            parent = match next_parent {
                Some(p) => Some(p),
                None if self.rng.next() % 2 == 0 => Some(t.len() - 1),
                None => return t,
            };
        }
        t
    }
    fn finish(&mut self, _: &[u32], _: usize) {}
}

#[test]
fn greedy_speculation_is_identical_to_plain_decoding() {
    let mut e =
        Engine::load(&model_path("smollm2-135m"), &EngineOptions { max_ctx: 512, ..Default::default() }).unwrap();
    let c = CancelToken::default();
    let plain = GenerateParams { max_tokens: 32, chat: true, speculate: SpecMode::Off, ..Default::default() };
    let suffix = GenerateParams { speculate: SpecMode::Suffix, tree_budget: 6, max_depth: 6, ..plain.clone() };
    let (mut rounds, mut accepted_suffix, mut accepted_random) = (0, 0, 0);
    for (i, (cat, p)) in prompts().iter().enumerate() {
        let ids = e.encode_prompt(p, true).unwrap();
        let want = e.generate_tokens(&ids, &plain, &c, |_| true).unwrap();
        assert!(want.spec.is_none());
        // the suffix speculator (its store has learned the plain run too: it will draft a lot)
        let got = e.generate_tokens(&ids, &suffix, &c, |_| true).unwrap();
        assert_eq!(got.tokens, want.tokens, "[{cat}] suffix speculation changed the output of {p:?}");
        let s = got.spec.unwrap();
        rounds += s.rounds;
        accepted_suffix += s.accepted;
        // random trees, swapped in for the suffix speculator
        let saved = e.speculator.take();
        e.speculator =
            Some(Box::new(RandomTrees { reference: want.tokens.clone(), prompt_len: 0, rng: Rng(i as u64 + 1) }));
        let budget = [1, 3, 8, 15][i % 4];
        let got = e
            .generate_tokens(&ids, &GenerateParams { tree_budget: budget, max_depth: 5, ..suffix.clone() }, &c, |_| {
                true
            })
            .unwrap();
        e.speculator = saved;
        assert_eq!(got.tokens, want.tokens, "[{cat}] random trees (budget {budget}) changed the output of {p:?}");
        accepted_random += got.spec.unwrap().accepted;
    }
    // the test must exercise acceptance, not only rejection
    assert!(accepted_suffix > 100, "suffix speculation accepted only {accepted_suffix} tokens in {rounds} rounds");
    assert!(accepted_random > 100, "random trees accepted only {accepted_random} tokens");
}

/// Budgets of 0, absurd budgets and depths, and contexts near the end of the KV cache: the tree
/// shrinks, output stays identical, nothing panics.
#[test]
fn speculation_handles_budget_extremes_and_a_full_context() {
    let mut e =
        Engine::load(&model_path("smollm2-135m"), &EngineOptions { max_ctx: 48, max_batch: 16, ..Default::default() })
            .unwrap();
    let c = CancelToken::default();
    let ids = e.encode_prompt("Count from one to twenty: one, two, three,", false).unwrap();
    let plain = GenerateParams { max_tokens: 100, stop_at_eos: false, speculate: SpecMode::Off, ..Default::default() };
    let want = e.generate_tokens(&ids, &plain, &c, |_| true).unwrap();
    assert_eq!(want.stats.finish_reason, "length");
    for (budget, depth) in [(0, 8), (1000, 1000), (5, 0), (15, 3)] {
        let p = GenerateParams { speculate: SpecMode::Suffix, tree_budget: budget, max_depth: depth, ..plain.clone() };
        let got = e.generate_tokens(&ids, &p, &c, |_| true).unwrap();
        assert_eq!(got.tokens, want.tokens, "budget {budget} depth {depth}");
        assert_eq!(got.stats.finish_reason, "length");
    }
}
