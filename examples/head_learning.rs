//! The draft head learning online, request by request, in one process: a fresh head on
//! SmolLM2-135M serves Spec-Bench questions of one category (cycled) with `--speculate head`,
//! and each line shows tau, acceptance, tokens/s, training share and the head's agreement with
//! the target. `augur bench-adapt` (issue 4) will grow out of this.
//!
//!     cargo run --release --example head_learning -- coding 40 [questions.jsonl]
//!
//! HEAD_TRAIN_SHARE and HEAD_BATCH override the training share and batch for experiments.

use augur::engine::{CancelToken, Engine, EngineOptions, GenerateParams};
use augur::spec::SpecMode;
use augur::spec::head::HeadOptions;

fn main() -> augur::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let category = args.get(1).cloned().unwrap_or_else(|| "coding".into());
    let requests: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(40);
    let path = augur::pull::resolve_model("smollm2-135m", true)?;
    let mut engine = Engine::load(&path, &EngineOptions { max_ctx: 512, ..Default::default() })?;
    let mut opts = HeadOptions::default();
    if let Some(share) = std::env::var("HEAD_TRAIN_SHARE").ok().and_then(|s| s.parse().ok()) {
        opts.train_share = share;
    }
    if let Some(batch) = std::env::var("HEAD_BATCH").ok().and_then(|s| s.parse().ok()) {
        opts.batch = batch;
    }
    engine.attach_head(None, opts)?;
    let questions = args.get(3).cloned().unwrap_or_else(|| augur::bench::SPEC_BENCH_QUESTIONS.into());
    let items = augur::bench::spec_bench_workload(questions.as_ref(), usize::MAX)?;
    let prompts: Vec<&str> = items.iter().filter(|i| i.category == category).map(|i| i.prompt.as_str()).collect();
    if prompts.is_empty() {
        return Err(augur::Error::msg(format!("no Spec-Bench questions in category '{category}'")));
    }
    let params = GenerateParams {
        max_tokens: 64,
        chat: true,
        speculate: SpecMode::Head,
        tree_budget: 4,
        max_depth: 3,
        ..Default::default()
    };
    println!("request | tau | accepted/drafted | tok/s | train share | agreement | train steps");
    for (i, prompt) in prompts.iter().cycle().take(requests).enumerate() {
        let ids = engine.encode_prompt(prompt, true)?;
        let out = engine.generate_tokens(&ids, &params, &CancelToken::default(), |_| true)?;
        let s = out.spec.unwrap_or_default();
        let h = &engine.head.as_ref().expect("attached").stats;
        println!(
            "{i} | {:.2} | {}/{} | {:.1} | {:.1}% | {:.2} | {}",
            s.tau(),
            s.accepted,
            s.drafted,
            out.stats.decode_tok_s(),
            100.0 * s.train_ms / out.stats.decode_ms.max(1e-9),
            h.agreement,
            h.train_steps
        );
    }
    Ok(())
}
