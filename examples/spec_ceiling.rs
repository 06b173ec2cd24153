//! The most any controller could make of the suffix speculator on a workload: each prompt is
//! decoded plainly (greedy), then its rounds are replayed against the suffix speculator as
//! `--speculate auto` runs it (learning each finished request, trees of up to 8 nodes, none
//! past max_tokens), and priced with this device's cost calibration (the one `--speculate auto`
//! keeps in $AUGUR_HOME/cost/, made here if there is none) at each round's context. Knowing the
//! output, an oracle controller verifies exactly the proposed nodes that would be accepted and
//! nothing else: its speedup over plain decoding is the ceiling of every tree choice over these
//! proposals, and `bench-spec`'s measured ratio over it is how much of that the real controller
//! gets. Verifying every proposed node, a controller that never declines, is printed beside it.
//!
//!     cargo run --release --example spec_ceiling -- smollm2-135m rewrite 17 64
//!     # MODEL WORKLOAD (rewrite or spec-bench: first turns) PER_CATEGORY MAX_TOKENS
//!
//! Prices come from the calibration, not from timing these rounds, so they carry its errors (a
//! 9-row pass at long contexts ran ~15% dearer than priced in session 29's traces); the same
//! calibration prices the plain steps, so the ratio is what the controller itself believes.
use augur::engine::{CancelToken, Engine, EngineOptions, GenerateParams};
use augur::spec::cost::SimulatedDevice;
use augur::spec::suffix::SuffixSpeculator;
use augur::spec::{SpecMode, Speculator};
use std::collections::BTreeMap;

/// Milliseconds and tokens of one way of running a category.
#[derive(Default)]
struct Tally {
    plain_ms: f64,
    oracle_ms: f64,
    all_ms: f64,
    tokens: usize,
    rounds: usize,
    /// Rounds in which nothing proposed was accepted (text the speculator had not seen).
    novel: usize,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("spec_ceiling: {e}");
        std::process::exit(1);
    }
}

fn run() -> augur::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.to_string());
    let (model, workload) = (arg(1, "smollm2-135m"), arg(2, "rewrite"));
    let per_category: usize = arg(3, "17").parse().map_err(|_| augur::Error::msg("PER_CATEGORY is a number"))?;
    let max_tokens: usize = arg(4, "64").parse().map_err(|_| augur::Error::msg("MAX_TOKENS is a number"))?;
    let path = augur::pull::resolve_model(&model, true)?;
    let cost_path = augur::pull::state_path(&path, "cost", "json");
    let mut engine = Engine::load(&path, &EngineOptions::default())?;
    let items = match workload.as_str() {
        "rewrite" => augur::bench::fixed_rewrite_workload(per_category)?,
        "spec-bench" => augur::bench::spec_bench_workload(augur::bench::SPEC_BENCH_QUESTIONS.as_ref(), per_category)?,
        other => return Err(augur::Error::msg(format!("unknown workload '{other}'; use rewrite or spec-bench"))),
    };
    let mut cost = augur::spec::cost::calibrated(
        &engine.model,
        &engine.fingerprint,
        Some(&cost_path),
        SimulatedDevice::default(),
    )?;
    let mut suffix = SuffixSpeculator::in_memory();
    suffix.set_min_confidence(0.0);
    let params = GenerateParams { max_tokens, chat: true, speculate: SpecMode::Off, ..Default::default() };
    let mut by_category: BTreeMap<String, Tally> = BTreeMap::new();
    for item in &items {
        let prompt = engine.encode_prompt(&item.prompt, true)?;
        let mut out = Vec::new();
        engine.generate_tokens(&prompt, &params, &CancelToken::default(), |t| {
            out.push(t);
            true
        })?;
        let tally = by_category.entry(item.category.clone()).or_default();
        suffix.begin(&prompt);
        let mut context = prompt.clone();
        let mut t = 0;
        while t < out.len() {
            let useful = out.len() - t - 1; // the round's bonus token is never drafted
            let tree = suffix.propose(&context, useful.min(8), useful.min(8));
            let k = tree.accepted_along(&out[t..]);
            cost.at_context(context.len() - 1);
            let step = cost.verify_ms(1);
            tally.plain_ms += step * (k + 1) as f64;
            tally.oracle_ms += cost.verify_ms(k + 1);
            tally.all_ms += cost.verify_ms(tree.len() + 1);
            tally.rounds += 1;
            tally.novel += usize::from(k == 0);
            context.extend_from_slice(&out[t..t + k + 1]);
            t += k + 1;
        }
        tally.tokens += out.len();
        suffix.finish(&context, prompt.len());
    }
    println!(
        "{} prompts, {max_tokens} tokens each, greedy, chat template; suffix speculator, trees of up to 8 nodes",
        items.len()
    );
    println!("priced by the calibration in {}", cost_path.display());
    println!();
    println!(
        "| category | tokens | rounds | tau | ceiling (oracle) | verify all proposed | rounds accepting nothing |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut ceilings = Vec::new();
    for (category, s) in &by_category {
        let ceiling = s.plain_ms / s.oracle_ms;
        ceilings.push(ceiling);
        println!(
            "| {category} | {} | {} | {:.2} | {ceiling:.2}x | {:.2}x | {:.0}% |",
            s.tokens,
            s.rounds,
            s.tokens as f64 / s.rounds.max(1) as f64,
            s.plain_ms / s.all_ms,
            100.0 * s.novel as f64 / s.rounds.max(1) as f64,
        );
    }
    let mean = ceilings.iter().sum::<f64>() / ceilings.len().max(1) as f64;
    println!();
    println!("mean ceiling over categories: {mean:.2}x");
    Ok(())
}
