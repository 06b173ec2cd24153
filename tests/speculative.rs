//! Speculative decoding is lossless: greedy output with speculation (and sampled output, for a
//! seed) is token for token the output of plain decoding, for the suffix speculator, for random tree shapes (widths, depths, right
//! and wrong branches) and for a draft model, on 24-28 prompts (Spec-Bench categories and code)
//! with SmolLM2-135M. The draft model in CI is SmolLM2 with 4 of its 30 layers skipped (layer
//! skipping, as in self-speculative decoding): same vocabulary, cheaper, and right about half
//! the time, so both acceptance and rejection are exercised.

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
                let tok = match right.filter(|_| w == 0 && self.rng.next() % 10 < 8) {
                    Some(r) => r,
                    None => (self.rng.next() % 49152) as u32,
                };
                let i = t.push(parent, tok, 1.0, Drafter::Draft);
                if Some(tok) == right {
                    next_parent = Some(i);
                }
            }
            // continue under the right token, or under a wrong one now and then
            parent = match next_parent {
                Some(p) => Some(p),
                None if self.rng.next().is_multiple_of(2) => Some(t.len() - 1),
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
        let saved = e.suffix.take();
        e.suffix =
            Some(Box::new(RandomTrees { reference: want.tokens.clone(), prompt_len: 0, rng: Rng(i as u64 + 1) }));
        let budget = [1, 3, 8, 15][i % 4];
        let got = e
            .generate_tokens(&ids, &GenerateParams { tree_budget: budget, max_depth: 5, ..suffix.clone() }, &c, |_| {
                true
            })
            .unwrap();
        e.suffix = saved;
        assert_eq!(got.tokens, want.tokens, "[{cat}] random trees (budget {budget}) changed the output of {p:?}");
        accepted_random += got.spec.unwrap().accepted;
    }
    // the test must exercise acceptance, not only rejection
    assert!(accepted_suffix > 100, "suffix speculation accepted only {accepted_suffix} tokens in {rounds} rounds");
    assert!(accepted_random > 100, "random trees accepted only {accepted_random} tokens");
}

/// Plain sampled decoding of 32 tokens of a chat prompt at (temperature, top-k, top-p).
fn plain_sampling((temperature, top_k, top_p): (f32, u32, f32), seed: u64) -> GenerateParams {
    GenerateParams {
        max_tokens: 32,
        chat: true,
        temperature,
        top_k,
        top_p,
        seed,
        speculate: SpecMode::Off,
        ..Default::default()
    }
}

/// Sampling with speculation gives, for a seed, plain sampling's very tokens: each position draws
/// with its own noise whichever pass samples it, and a drafted child is accepted only when it
/// carries that draw (accept.wgsl). For the suffix speculator, random trees and the controller,
/// with temperature, top-k and top-p.
#[test]
fn sampled_speculation_gives_plain_samplings_tokens_for_a_seed() {
    let mut e =
        Engine::load(&model_path("smollm2-135m"), &EngineOptions { max_ctx: 512, ..Default::default() }).unwrap();
    let c = CancelToken::default();
    let (mut accepted, mut rounds) = (0, 0);
    for (i, (cat, p)) in prompts().iter().step_by(4).enumerate() {
        let plain = plain_sampling([(0.7, 0, 1.0), (1.0, 40, 0.95), (0.5, 0, 0.9)][i % 3], 1000 + i as u64);
        let ids = e.encode_prompt(p, true).unwrap();
        let want = e.generate_tokens(&ids, &plain, &c, |_| true).unwrap();
        for mode in [SpecMode::Suffix, SpecMode::Auto] {
            let spec = GenerateParams { speculate: mode, tree_budget: 6, max_depth: 6, ..plain.clone() };
            let got = e.generate_tokens(&ids, &spec, &c, |_| true).unwrap();
            assert_eq!(got.tokens, want.tokens, "[{cat}] {mode:?} changed the sampled output of {p:?}");
            let s = got.spec.unwrap();
            (accepted, rounds) = (accepted + s.accepted, rounds + s.rounds);
        }
        let saved = e.suffix.take();
        e.suffix =
            Some(Box::new(RandomTrees { reference: want.tokens.clone(), prompt_len: 0, rng: Rng(i as u64 + 7) }));
        let random = GenerateParams { speculate: SpecMode::Suffix, tree_budget: 8, max_depth: 5, ..plain.clone() };
        let got = e.generate_tokens(&ids, &random, &c, |_| true).unwrap();
        e.suffix = saved;
        assert_eq!(got.tokens, want.tokens, "[{cat}] random trees changed the sampled output of {p:?}");
        let s = got.spec.unwrap();
        (accepted, rounds) = (accepted + s.accepted, rounds + s.rounds);
    }
    assert!(accepted > 100, "only {accepted} drafts accepted in {rounds} rounds: acceptance went unexercised");
}

/// The same with the kernels real GPUs get (matmul_split.wgsl, attention_split.wgsl, which split
/// each reduction across lanes and deal attention's slots by rank), on every sixth prompt: a tree
/// pass must give the logits plain decoding gives there too.
#[test]
fn greedy_speculation_with_split_kernels_is_identical_to_plain_decoding() {
    let split = augur::gpu::GpuOptions { plan: Some(augur::gpu::KernelPlan::Split), ..Default::default() };
    let opts = EngineOptions { max_ctx: 512, gpu: split, ..Default::default() };
    let mut e = Engine::load(&model_path("smollm2-135m"), &opts).unwrap();
    assert_eq!(e.model.gpu.plan, augur::gpu::KernelPlan::Split);
    let c = CancelToken::default();
    let plain = GenerateParams { max_tokens: 24, chat: true, speculate: SpecMode::Off, ..Default::default() };
    let suffix = GenerateParams { speculate: SpecMode::Suffix, tree_budget: 6, max_depth: 6, ..plain.clone() };
    let mut accepted = 0;
    for (i, (cat, p)) in prompts().iter().enumerate().step_by(6) {
        let ids = e.encode_prompt(p, true).unwrap();
        let want = e.generate_tokens(&ids, &plain, &c, |_| true).unwrap();
        let got = e.generate_tokens(&ids, &suffix, &c, |_| true).unwrap();
        assert_eq!(got.tokens, want.tokens, "[{cat}] suffix speculation changed the output of {p:?}");
        accepted += got.spec.unwrap().accepted;
        let saved = e.suffix.take();
        e.suffix =
            Some(Box::new(RandomTrees { reference: want.tokens.clone(), prompt_len: 0, rng: Rng(i as u64 + 7) }));
        let trees = GenerateParams { tree_budget: 8, max_depth: 5, ..suffix.clone() };
        let got = e.generate_tokens(&ids, &trees, &c, |_| true).unwrap();
        e.suffix = saved;
        assert_eq!(got.tokens, want.tokens, "[{cat}] random trees changed the output of {p:?}");
        accepted += got.spec.unwrap().accepted;
    }
    assert!(accepted > 50, "only {accepted} drafted tokens accepted: the test must exercise acceptance");
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
    for mode in [SpecMode::Suffix, SpecMode::Auto] {
        for (budget, depth) in [(0, 8), (1000, 1000), (5, 0), (15, 3)] {
            let p = GenerateParams { speculate: mode, tree_budget: budget, max_depth: depth, ..plain.clone() };
            let got = e.generate_tokens(&ids, &p, &c, |_| true).unwrap();
            assert_eq!(got.tokens, want.tokens, "{mode:?} budget {budget} depth {depth}");
            assert_eq!(got.stats.finish_reason, "length");
        }
    }
}

/// A round drafts no more than the request can still take: near `max_tokens` the tree shrinks to
/// the drafts that, with the bonus token, finish it, so no verified row is thrown away. Every
/// token a round commits (the first comes from the prompt's pass) is then one the request keeps.
#[test]
fn speculation_drafts_no_further_than_max_tokens() {
    let mut e =
        Engine::load(&model_path("smollm2-135m"), &EngineOptions { max_ctx: 256, ..Default::default() }).unwrap();
    let c = CancelToken::default();
    let ids = e.encode_prompt("Repeat after me: the quick brown fox jumps over the lazy dog.", true).unwrap();
    let plain = GenerateParams { max_tokens: 12, stop_at_eos: false, speculate: SpecMode::Off, ..Default::default() };
    let want = e.generate_tokens(&ids, &plain, &c, |_| true).unwrap().tokens;
    let mut accepted = 0;
    for n in [2, 4, 7, 12] {
        let p = GenerateParams {
            max_tokens: n,
            speculate: SpecMode::Suffix,
            tree_budget: 8,
            max_depth: 8,
            ..plain.clone()
        };
        let got = e.generate_tokens(&ids, &p, &c, |_| true).unwrap();
        assert_eq!(got.tokens, want[..n], "max_tokens {n}");
        let s = got.spec.unwrap();
        assert_eq!(1 + s.rounds + s.accepted, n, "max_tokens {n}: rounds committed tokens past the end ({s:?})");
        if n == 2 {
            assert_eq!(s.drafted, 0, "the last token's round drafted");
        }
        accepted += s.accepted;
    }
    assert!(accepted > 5, "only {accepted} drafts accepted: the test must exercise acceptance near the end");
}

/// Stop strings with speculation: a round that accepted tokens past a stop string commits none
/// of them. The text ends just before the stop, what `generate` streams is that text and no
/// piece of the stop, the tokens are plain decoding's up to there, and the KV entries the
/// dropped tokens left behind do not leak into the next generation.
#[test]
fn stop_strings_end_speculative_rounds_where_plain_decoding_ends() {
    let mut e =
        Engine::load(&model_path("smollm2-135m"), &EngineOptions { max_ctx: 512, ..Default::default() }).unwrap();
    let prompt = "Repeat this line five times: the quick brown fox jumps over the lazy dog.";
    let plain = GenerateParams {
        max_tokens: 48,
        chat: true,
        stop_at_eos: false,
        speculate: SpecMode::Off,
        ..Default::default()
    };
    let full = e.generate(prompt, &plain, |_| true).unwrap();
    let chars: Vec<(usize, char)> = full.text.char_indices().collect();
    assert!(chars.len() > 40, "the plain answer is too short to cut: {:?}", full.text);
    let mut dropped = 0;
    for (k, frac) in [0.3, 0.5, 0.7, 0.9].iter().enumerate() {
        // a 4-character stop string from this far into the answer; it ends the text where it
        // first occurs
        let i = (chars.len() as f64 * frac) as usize;
        let (at, end) = (chars[i].0, chars.get(i + 4).map_or(full.text.len(), |c| c.0));
        let stop = full.text[at..end].to_string();
        let want = &full.text[..full.text.find(&stop).unwrap()];
        for mode in [SpecMode::Off, SpecMode::Suffix, SpecMode::Auto] {
            let p = GenerateParams {
                speculate: mode,
                tree_budget: 8,
                max_depth: 8,
                stop: vec![stop.clone(), "never in this answer: \u{1F980}".to_string()],
                ..plain.clone()
            };
            let mut streamed = String::new();
            let got = e
                .generate(prompt, &p, |piece| {
                    streamed.push_str(piece);
                    true
                })
                .unwrap();
            let what = format!("{mode:?}, stop {stop:?} (cut {k})");
            assert_eq!(got.text, want, "{what}");
            assert_eq!(streamed, want, "{what}: streamed text");
            assert_eq!(got.stats.finish_reason, "stop", "{what}");
            assert_eq!(got.tokens[..], full.tokens[..got.tokens.len()], "{what}: tokens");
            if let Some(s) = got.spec {
                // tokens the rounds committed: the prefill's, then each round's accepted and bonus
                dropped += 1 + s.rounds + s.accepted - got.tokens.len();
            }
        }
        // the next generation starts from the KV entries of what was given out only
        let again = e.generate(prompt, &plain, |_| true).unwrap();
        assert_eq!(again.tokens, full.tokens, "after stop {stop:?}");
    }
    assert!(dropped > 0, "no round accepted tokens past a stop string: the test must exercise that");
}

/// With its cost calibration kept from an earlier run, `auto` starts decoding before its row
/// blocks are compiled (a thread compiles them) and plans only trees whose passes are: the
/// output is still plain decoding's.
#[test]
fn auto_starts_before_its_row_blocks_are_compiled() {
    let dir = std::env::temp_dir().join(format!("augur-auto-start-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cache = dir.join("cost.json");
    let opts = EngineOptions { max_ctx: 256, cost_cache: Some(cache.clone()), ..Default::default() };
    let c = CancelToken::default();
    let plain = GenerateParams { max_tokens: 24, chat: true, speculate: SpecMode::Off, ..Default::default() };
    let auto = GenerateParams { speculate: SpecMode::Auto, ..plain.clone() };
    let prompt = "Repeat after me: the quick brown fox jumps over the lazy dog.";
    // the first engine calibrates (every block compiled first) and keeps the calibration
    let mut first = Engine::load(&model_path("smollm2-135m"), &opts).unwrap();
    let ids = first.encode_prompt(prompt, true).unwrap();
    let want = first.generate_tokens(&ids, &plain, &c, |_| true).unwrap();
    assert_eq!(first.generate_tokens(&ids, &auto, &c, |_| true).unwrap().tokens, want.tokens);
    assert!(cache.exists(), "the calibration was not kept");
    // the second, on a device of its own, has only what loading compiled
    setup_env();
    let gpu = std::sync::Arc::new(augur::gpu::Gpu::new(&Default::default()).unwrap());
    let loaded = augur::model::LoadedModel::load(&model_path("smollm2-135m")).unwrap();
    let mut second = Engine::with_gpu(gpu.clone(), loaded, &opts).unwrap();
    assert!(gpu.kernels.ready_rows() < 9, "loading compiled every row block");
    let got = second.generate_tokens(&ids, &auto, &c, |_| true).unwrap();
    assert_eq!(got.tokens, want.tokens, "auto changed the output while its kernels compiled");
    let t0 = std::time::Instant::now();
    while gpu.kernels.ready_rows() < 9 {
        assert!(t0.elapsed().as_secs() < 300, "the background build stalled at {}", gpu.kernels.ready_rows());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // compiled, and the suffix index knows the answer: it drafts and is accepted
    let got = second.generate_tokens(&ids, &auto, &c, |_| true).unwrap();
    assert_eq!(got.tokens, want.tokens);
    assert!(got.spec.unwrap().accepted > 0, "nothing was accepted once every block was compiled");
    std::fs::remove_dir_all(&dir).ok();
}

/// SmolLM2-135M without layers `skip` (a cheaper drafter with the target's vocabulary).
fn smollm_skipping(skip: std::ops::Range<usize>) -> augur::model::LoadedModel {
    let mut d = augur::model::LoadedModel::load(&model_path("smollm2-135m")).unwrap();
    d.source = format!("SmolLM2-135M without layers {skip:?}");
    d.weights.layers.drain(skip);
    d.config.n_layers = d.weights.layers.len();
    d
}

#[test]
fn draft_model_speculation_is_identical_to_plain_decoding() {
    let mut e =
        Engine::load(&model_path("smollm2-135m"), &EngineOptions { max_ctx: 512, ..Default::default() }).unwrap();
    e.attach_draft(smollm_skipping(12..16)).unwrap();
    let c = CancelToken::default();
    let plain = GenerateParams { max_tokens: 24, chat: true, speculate: SpecMode::Off, ..Default::default() };
    let (mut drafted, mut accepted, mut rejected_rounds) = (0, 0, 0);
    for (i, (cat, p)) in prompts().iter().take(24).enumerate() {
        let ids = e.encode_prompt(p, true).unwrap();
        let want = e.generate_tokens(&ids, &plain, &c, |_| true).unwrap();
        // chains and trees with siblings
        let (budget, depth) = [(6, 4), (3, 3), (10, 5), (1, 1)][i % 4];
        let params =
            GenerateParams { speculate: SpecMode::Draft, tree_budget: budget, max_depth: depth, ..plain.clone() };
        let got = e.generate_tokens(&ids, &params, &c, |_| true).unwrap();
        assert_eq!(
            got.tokens, want.tokens,
            "[{cat}] draft-model speculation (budget {budget}, depth {depth}) changed the output of {p:?}"
        );
        let s = got.spec.unwrap();
        let d = &s.per_drafter["draft"];
        drafted += d.drafted;
        accepted += d.accepted;
        rejected_rounds += s.rounds_with_draft.saturating_sub(s.accepted_by_depth.first().copied().unwrap_or(0));
    }
    // both outcomes must be exercised
    assert!(accepted > 100, "the draft model had only {accepted} of {drafted} drafts accepted");
    assert!(drafted > accepted + 50, "the draft model was almost never wrong ({accepted}/{drafted})");
    assert!(rejected_rounds > 10, "only {rejected_rounds} rounds rejected the first draft");
}

/// When sampling, a draft model draws each draft with the Gumbel noise the target will use at
/// that position (accept.wgsl draw_rows), so where their logits agree so do their draws: with
/// the target itself as the draft model every drafted depth the walk reaches is accepted, at
/// three temperature / top-k / top-p settings, and the output is plain sampling's. A fixed guess
/// (the draft's most likely token, as greedy drafting proposes) would be accepted only at the
/// rate p(x), about half the time here.
#[test]
fn sampled_drafts_coupled_to_the_targets_noise_are_accepted_where_the_models_agree() {
    let mut e =
        Engine::load(&model_path("smollm2-135m"), &EngineOptions { max_ctx: 512, ..Default::default() }).unwrap();
    e.attach_draft(smollm_skipping(0..0)).unwrap();
    let c = CancelToken::default();
    let (mut attempted, mut accepted) = (0, 0);
    for (i, (cat, p)) in prompts().iter().step_by(6).take(3).enumerate() {
        let plain = plain_sampling([(1.0, 0, 1.0), (0.7, 40, 1.0), (0.8, 0, 0.9)][i], 500 + i as u64);
        let (temperature, top_k, top_p) = (plain.temperature, plain.top_k, plain.top_p);
        let ids = e.encode_prompt(p, true).unwrap();
        let want = e.generate_tokens(&ids, &plain, &c, |_| true).unwrap();
        let params = GenerateParams { speculate: SpecMode::Draft, tree_budget: 6, max_depth: 6, ..plain.clone() };
        let got = e.generate_tokens(&ids, &params, &c, |_| true).unwrap();
        assert_eq!(got.tokens, want.tokens, "[{cat}] coupled drafts changed the sampled output of {p:?}");
        let s = got.spec.unwrap();
        assert_eq!(
            s.accepted_by_depth, s.attempted_by_depth,
            "[{cat}] T={temperature} top-k {top_k} top-p {top_p}: a draft drawn with the target's own noise from the target's own logits was rejected"
        );
        attempted += s.attempted_by_depth.iter().sum::<usize>();
        accepted += s.accepted;
    }
    assert!(
        attempted >= 30 && accepted >= 60,
        "too little was drafted to tell ({accepted} accepted at {attempted} depths)"
    );
}

/// A draft model with another vocabulary is refused with a message that says what to do, and
/// `--speculate draft` without one is a clear error.
#[test]
fn draft_model_with_another_vocabulary_is_refused() {
    let mut e =
        Engine::load(&model_path("smollm2-135m"), &EngineOptions { max_ctx: 128, ..Default::default() }).unwrap();
    let ids = e.encode_prompt("Hello", false).unwrap();
    let params = GenerateParams { max_tokens: 4, speculate: SpecMode::Draft, ..Default::default() };
    let err = e.generate_tokens(&ids, &params, &CancelToken::default(), |_| true).unwrap_err().to_string();
    assert!(err.contains("--draft"), "{err}");

    // same size, two tokens' ids swapped
    let mut d = smollm_skipping(2..30);
    let mut json: serde_json::Value = serde_json::from_str(&d.tokenizer.to_json().unwrap()).unwrap();
    let vocab = json["model"]["vocab"].as_object_mut().unwrap();
    let find = |v: &serde_json::Map<String, serde_json::Value>, id: u64| {
        v.iter().find(|(_, x)| x.as_u64() == Some(id)).map(|(k, _)| k.clone()).unwrap()
    };
    let (a, b) = (find(vocab, 1000), find(vocab, 1001));
    vocab.insert(a, 1001.into());
    vocab.insert(b, 1000.into());
    let dir = std::env::temp_dir().join(format!("augur-vocab-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, json.to_string()).unwrap();
    d.tokenizer = augur::model::tokenizer::Tokenizer::from_file(&path).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let err = e.attach_draft(d).unwrap_err().to_string();
    assert!(err.contains("another vocabulary") && err.contains("1000"), "{err}");

    // another vocabulary size
    let mut d = smollm_skipping(2..30);
    d.config.vocab -= 1;
    let err = e.attach_draft(d).unwrap_err().to_string();
    assert!(err.contains("vocabulary entries"), "{err}");
    assert!(e.draft.is_none());
}

/// The adaptive head drafts, records and trains between rounds without changing the output:
/// greedy tokens stay those of plain decoding while it learns, and its training stays within
/// its time budget.
#[test]
fn head_speculation_with_online_learning_is_identical_to_plain_decoding() {
    let mut e =
        Engine::load(&model_path("smollm2-135m"), &EngineOptions { max_ctx: 512, ..Default::default() }).unwrap();
    let opts = augur::spec::head::HeadOptions { batch: 8, ..Default::default() };
    e.attach_head(None, opts).unwrap();
    let c = CancelToken::default();
    let plain = GenerateParams { max_tokens: 24, chat: true, speculate: SpecMode::Off, ..Default::default() };
    let head = GenerateParams { speculate: SpecMode::Head, tree_budget: 4, max_depth: 3, ..plain.clone() };
    let (mut train_ms, mut decode_ms) = (0.0, 0.0);
    for (cat, p) in prompts().iter().step_by(3) {
        let ids = e.encode_prompt(p, true).unwrap();
        let want = e.generate_tokens(&ids, &plain, &c, |_| true).unwrap();
        let got = e.generate_tokens(&ids, &head, &c, |_| true).unwrap();
        assert_eq!(got.tokens, want.tokens, "[{cat}] head speculation changed the output of {p:?}");
        train_ms += got.spec.as_ref().unwrap().train_ms;
        decode_ms += got.stats.decode_ms;
    }
    // sampled, the head draws its drafts with the target's noise (coupled): still plain sampling
    let mut coupled_drafts = 0;
    for (i, (cat, p)) in prompts().iter().step_by(5).take(2).enumerate() {
        let sampled = GenerateParams { temperature: 0.8, top_p: 0.95, seed: 40 + i as u64, ..plain.clone() };
        let ids = e.encode_prompt(p, true).unwrap();
        let want = e.generate_tokens(&ids, &sampled, &c, |_| true).unwrap();
        let got =
            e.generate_tokens(&ids, &GenerateParams { speculate: SpecMode::Head, ..sampled }, &c, |_| true).unwrap();
        assert_eq!(got.tokens, want.tokens, "[{cat}] sampled head speculation changed the output of {p:?}");
        coupled_drafts += got.spec.unwrap().drafted;
    }
    assert!(coupled_drafts > 0, "the head drafted nothing when sampling");
    let h = e.head.as_ref().unwrap();
    assert!(h.stats.train_steps > 0, "the head never trained");
    assert!(h.stats.loss.is_finite());
    // the budget is 10% of decoding; one step may overshoot it at the end of a request
    assert!(train_ms < 0.2 * decode_ms, "training took {train_ms:.0} ms of {decode_ms:.0} ms");
    // its state can be saved and is keyed to this model
    let f = e.head_file().unwrap();
    assert_eq!(f.meta.target, e.fingerprint);
    assert_eq!(f.meta.step as u64, h.stats.train_steps);
    // a head restored from it continues with the same step, statistics and replay ring
    let (filled, pos, agreement) = (h.replay.filled, h.replay.write_pos, h.stats.agreement);
    assert!(filled > 0);
    e.attach_head(Some(f), augur::spec::head::HeadOptions::default()).unwrap();
    let h = e.head.as_ref().unwrap();
    assert_eq!((h.replay.filled, h.replay.write_pos, h.stats.agreement), (filled, pos, agreement));
    let g = e.head_file().unwrap();
    assert_eq!(g.replay.as_ref().unwrap().meta.len(), h.replay.capacity * augur::train::replay::META);
    // the guard rail: below the static path's agreement (here one it can never reach) the head
    // drafts nothing and only probes, and the output is still plain decoding's
    let floor = augur::spec::head::HeadOptions { min_agreement: 2.0, learn: false, ..Default::default() };
    e.attach_head(Some(g), floor).unwrap();
    let (cat, p) = &prompts()[0];
    let ids = e.encode_prompt(p, true).unwrap();
    let want = e.generate_tokens(&ids, &plain, &c, |_| true).unwrap();
    let got = e.generate_tokens(&ids, &head, &c, |_| true).unwrap();
    assert_eq!(got.tokens, want.tokens, "[{cat}] an untrusted head changed the output");
    assert_eq!(got.spec.unwrap().drafted, 0, "an untrusted head drafted");
    assert!(e.head.as_ref().unwrap().stats.probes > 0, "an untrusted head still probes");
}

/// The controller (`auto`) merges the suffix index's and the learning head's proposals and cuts
/// the tree to what pays on this device: output stays that of plain decoding, it reports its
/// choices, and its own work is a sliver of the round.
#[test]
fn controller_speculation_is_identical_to_plain_decoding() {
    let mut e =
        Engine::load(&model_path("smollm2-135m"), &EngineOptions { max_ctx: 512, ..Default::default() }).unwrap();
    e.attach_head(None, augur::spec::head::HeadOptions { batch: 8, min_agreement: 0.0, ..Default::default() }).unwrap();
    let c = CancelToken::default();
    let plain = GenerateParams { max_tokens: 32, chat: true, speculate: SpecMode::Off, ..Default::default() };
    let auto = GenerateParams { speculate: SpecMode::Auto, tree_budget: 8, max_depth: 6, ..plain.clone() };
    let (mut rounds, mut accepted, mut policy_us, mut decode_ms) = (0, 0, 0.0, 0.0);
    let (mut from, mut asked) = (std::collections::BTreeMap::new(), std::collections::BTreeMap::new());
    for (cat, p) in prompts().iter().skip(1).step_by(4) {
        let ids = e.encode_prompt(p, true).unwrap();
        let want = e.generate_tokens(&ids, &plain, &c, |_| true).unwrap();
        // twice: the second time the suffix store knows the answer and drafts it
        for _ in 0..2 {
            let got = e.generate_tokens(&ids, &auto, &c, |_| true).unwrap();
            assert_eq!(got.tokens, want.tokens, "[{cat}] controller speculation changed the output of {p:?}");
            let s = got.spec.unwrap();
            let ctl = s.controller.expect("auto reports the controller's choices");
            assert_eq!(ctl.rounds as usize, s.rounds);
            rounds += s.rounds;
            accepted += s.accepted;
            policy_us += ctl.policy_us;
            decode_ms += got.stats.decode_ms;
            for (k, v) in ctl.nodes_from {
                *from.entry(k).or_insert(0) += v;
            }
            for (k, v) in ctl.drafted_rounds {
                *asked.entry(k).or_insert(0) += v;
            }
        }
    }
    assert!(accepted > 50, "the controller accepted only {accepted} drafts in {rounds} rounds");
    assert!(from.contains_key("suffix"), "verified nodes came from {from:?}");
    // the head is asked to draft (whether its nodes are worth verifying depends on how far it
    // has learned and on the measured costs, so that is not asserted)
    assert!(asked.get("head").is_some_and(|&n| n > 0), "the head never drafted: {asked:?}");
    assert!(policy_us / 1e3 < 0.02 * decode_ms, "the policy took {policy_us:.0} us of {decode_ms:.0} ms");
}

/// Pathological text for the controller: a very long repeat (the suffix index matches
/// everything, at every length) and random bytes (it matches nothing, and the tokenizer falls
/// back to byte tokens). Sane choices: output identical to plain decoding, no panic, no stall.
#[test]
fn controller_survives_long_repeats_and_random_bytes() {
    let mut e =
        Engine::load(&model_path("smollm2-135m"), &EngineOptions { max_ctx: 1024, ..Default::default() }).unwrap();
    let c = CancelToken::default();
    let mut rng = Rng(0x5eed);
    let bytes: Vec<u8> = (0..400).map(|_| (rng.next() % 256) as u8).collect();
    let random = String::from_utf8_lossy(&bytes).into_owned();
    let repeat = "the cat sat on the mat. ".repeat(60);
    for prompt in [repeat, random] {
        let ids = e.encode_prompt(&prompt, false).unwrap();
        let plain =
            GenerateParams { max_tokens: 40, stop_at_eos: false, speculate: SpecMode::Off, ..Default::default() };
        let want = e.generate_tokens(&ids, &plain, &c, |_| true).unwrap();
        let auto = GenerateParams { speculate: SpecMode::Auto, tree_budget: 16, max_depth: 8, ..plain.clone() };
        let got = e.generate_tokens(&ids, &auto, &c, |_| true).unwrap();
        assert_eq!(
            got.tokens,
            want.tokens,
            "the controller changed the output of {:?}",
            prompt.chars().take(40).collect::<String>()
        );
        assert_eq!(got.stats.finish_reason, "length");
        let s = got.spec.unwrap();
        assert!(s.rounds <= 40, "{} rounds for 40 tokens", s.rounds);
    }
}
