//! `augur bench`: prefill and decode speed (median, min, max over runs), a per-kernel time table
//! from timestamp queries, the cost of an M-token pass relative to one token (the curve that
//! speculative verification lives on), and the fixed cost of one submitted round.

pub mod adapt;
pub mod lockstep;
pub mod plot;

use crate::engine::{CancelToken, Engine, GenerateParams};
use crate::error::Result;
use crate::gpu::map_read;
use crate::gpu::profile::Profiler;
use crate::model::gpu::PassSpec;
use crate::model::tokenizer::ChatMessage;
use std::time::Instant;

pub use crate::util::median_min_max;

/// A prompt of exactly `n` tokens of ordinary text.
pub fn prompt_of(engine: &Engine, n: usize) -> Result<Vec<u32>> {
    let text = "The history of computing is a story of people, ideas and machines. Early mechanical calculators gave way to electronic computers, ";
    let mut ids = Vec::new();
    while ids.len() < n {
        ids.extend(engine.tokenizer.encode(text)?);
    }
    ids.truncate(n);
    Ok(ids)
}

pub fn run(engine: &mut Engine, runs: usize, prompt_tokens: usize, gen_tokens: usize) -> Result<()> {
    let gpu = engine.gpu().clone();
    gpu.kernels.build_row_blocks(); // passes of every size are timed below
    println!("device: {}", gpu.describe());
    println!("model:  {}", engine.source);
    let prompt = prompt_of(engine, prompt_tokens)?;
    // plain decoding: speculation is measured side by side by `augur bench-spec`
    let params = GenerateParams {
        max_tokens: gen_tokens,
        stop_at_eos: false,
        speculate: crate::spec::SpecMode::Off,
        ..Default::default()
    };
    engine.generate_tokens(&prompt, &params, &CancelToken::default(), |_| true)?; // warm-up (shader compilation)
    let (mut pre, mut dec) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        // the whole prompt each run: the last run's KV entries would otherwise be reused
        engine.forget_cached_prompt();
        let out = engine.generate_tokens(&prompt, &params, &CancelToken::default(), |_| true)?;
        pre.push(out.stats.prefill_tok_s());
        dec.push(out.stats.decode_tok_s());
    }
    let (pm, pmin, pmax) = median_min_max(&mut pre);
    let (dm, dmin, dmax) = median_min_max(&mut dec);
    println!("\n{runs} runs, prompt {prompt_tokens} tokens, {gen_tokens} generated (greedy, --speculate off)");
    println!("| phase | median tok/s | min | max |\n|---|---|---|---|");
    println!("| prefill-{prompt_tokens} | {pm:.2} | {pmin:.2} | {pmax:.2} |");
    println!("| decode | {dm:.2} | {dmin:.2} | {dmax:.2} |");

    // the M-token pass curve at the context the prompt left
    let model = &engine.model;
    let n_past = prompt_tokens.min(model.max_ctx.saturating_sub(17));
    // a verification round: a chain of m - 1 drafts after the root and greedy acceptance (a
    // chain needs no KV compaction): what a speculation round costs besides drafting
    let time_pass = |m: usize, verify: bool| -> Result<f64> {
        let tree =
            verify.then(|| crate::spec::TokenTree::chain(&prompt[1..m], crate::spec::Drafter::Suffix).rows(n_past));
        let spec = PassSpec {
            m,
            n_past,
            tree,
            logits_rows: 0..m,
            accept: verify.then(Default::default),
            ..Default::default()
        };
        model.set_tokens(&prompt[..m.min(prompt.len())]);
        let t0 = Instant::now();
        model.run(&spec)?;
        Ok(t0.elapsed().as_secs_f64() * 1e3)
    };
    // Every size once per round, rounds repeated: this machine's speed drifts within a minute,
    // so each round's ratios are taken side by side and the median over rounds is reported.
    const ROUNDS: usize = 9;
    let sizes: Vec<usize> = [1usize, 2, 3, 4, 5, 6, 7, 8, 9, 16]
        .into_iter()
        .filter(|&m| m <= model.max_batch && m <= prompt.len())
        .collect();
    for &m in &sizes {
        time_pass(m, false)?;
        time_pass(m, true)?;
    }
    let mut forward = vec![Vec::new(); sizes.len()];
    let mut verify = vec![Vec::new(); sizes.len()];
    for _ in 0..ROUNDS {
        for (i, &m) in sizes.iter().enumerate() {
            forward[i].push(time_pass(m, false)?);
            verify[i].push(time_pass(m, true)?);
        }
    }
    println!("\nforward pass of M tokens (all M rows through the LM head), context {n_past}; {ROUNDS} rounds, each");
    println!("timing every M once; ms is the median, 'x M=1' the median of each round's ratio to its M=1 pass;");
    println!("'verify' adds greedy acceptance (a speculation round of a chain of M-1 drafts):");
    println!("| M | forward ms | x M=1 | verify ms | x M=1 forward |\n|---|---|---|---|---|");
    for (i, &m) in sizes.iter().enumerate() {
        let mut fr: Vec<f64> = forward[i].iter().zip(&forward[0]).map(|(t, b)| t / b).collect();
        let mut vr: Vec<f64> = verify[i].iter().zip(&forward[0]).map(|(t, b)| t / b).collect();
        let (t, v) = (median_min_max(&mut forward[i].clone()).0, median_min_max(&mut verify[i].clone()).0);
        println!("| {m} | {t:.2} | {:.2} | {v:.2} | {:.2} |", median_min_max(&mut fr).0, median_min_max(&mut vr).0);
    }

    // fixed cost of a round: submit a 4-byte copy and map it back
    let staging = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("bench staging"),
        size: 16,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut rt = Vec::new();
    for _ in 0..50 {
        let t0 = Instant::now();
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(&model.result, 0, &staging, 0, 4);
        gpu.queue.submit([enc.finish()]);
        map_read(&gpu, &staging, 4);
        rt.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let (rm, rmin, _) = median_min_max(&mut rt);
    println!("\nfixed cost of one submitted round (submit, wait, read 4 bytes): median {rm:.3} ms, min {rmin:.3} ms");

    matmul_table(&gpu);

    // per-kernel GPU time
    match Profiler::new(&gpu, 1024) {
        None => println!("\nper-kernel times: this device has no timestamp queries"),
        Some(mut prof) => {
            let passes = [
                ("decode step (M=1)", 1usize, false),
                ("verification round, chain of 4 drafts (M=5)", 5, true),
                ("prefill pass", prompt_tokens.min(model.max_batch), false),
            ];
            for (name, m, verify) in passes {
                if m > prompt.len() {
                    continue;
                }
                let tree = verify
                    .then(|| crate::spec::TokenTree::chain(&prompt[1..m], crate::spec::Drafter::Suffix).rows(n_past));
                let spec = PassSpec {
                    m,
                    n_past: if m == 1 || verify { n_past } else { 0 },
                    tree,
                    logits_rows: if verify { 0..m } else { m - 1..m },
                    accept: verify.then(Default::default),
                    ..Default::default()
                };
                model.set_tokens(&prompt[..m]);
                let mut enc = gpu.device.create_command_encoder(&Default::default());
                model.encode(&mut enc, &spec, Some(&mut prof))?;
                prof.resolve(&mut enc);
                gpu.queue.submit([enc.finish()]);
                gpu.wait()?;
                let t = prof.read(&gpu);
                let total: f64 = t.values().sum();
                println!("\nper-kernel GPU time, {name}, total {total:.2} ms (each dispatch timed in its own pass):");
                println!("| kernel | ms | share |\n|---|---|---|");
                let mut rows: Vec<_> = t.into_iter().collect();
                rows.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap());
                for (k, v) in rows {
                    println!("| {k} | {v:.3} | {:.1}% |", 100.0 * v / total);
                }
            }
        }
    }
    Ok(())
}

/// Spec-Bench's questions, where the project's shared data puts them (relative to the checkout).
pub const SPEC_BENCH_QUESTIONS: &str = "../shared/data/spec_bench/question.jsonl";

/// The weight formats the matmul benchmarks cover.
pub const BENCH_FORMATS: [&str; 5] = ["Q4", "Q4Half", "Q8", "Q8Sym", "F16"];

/// A random k x n matrix that GpuMatrix::best_format uploads as `format` (one of BENCH_FORMATS),
/// for timing the matmul kernel alone; the same values for the same arguments.
pub fn bench_matrix(k: usize, n: usize, format: &str) -> crate::model::weights::Matrix {
    use crate::model::weights::{MatData, Matrix};
    let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ (k * 31 + n) as u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    // value range and offset: what each GPU format is chosen for
    let (lo, hi, offset) = match format {
        "Q4" => (0i32, 16i32, 0.001f32),
        // f16 values (0.01 and 0.001 are not): Q4 with its scales in f16 pairs
        "Q4Half" => (0, 16, 0.0009765625),
        "Q8" => (-127, 128, 0.001),
        "Q8Sym" | "F16" => (-127, 128, 0.0),
        other => panic!("unknown bench format {other}"),
    };
    let scale = if format == "Q4Half" { 0.009765625 } else { 0.01 };
    let data = if format == "F16" {
        MatData::F16((0..k * n).map(|_| half::f16::from_f32((rnd() % 100) as f32 / 1000.0)).collect())
    } else {
        MatData::Q8 {
            q: (0..k * n).map(|_| (lo + (rnd() % (hi - lo) as u64) as i32) as i8).collect(),
            scale: vec![scale; k * n / 32],
            offset: vec![offset; k * n / 32],
        }
    };
    Matrix { k, n, data }
}

/// Matmul kernel speed on this device for the shapes that matter, in four weight formats: the
/// roofline that whole-model decode speed is compared with.
pub fn matmul_table(gpu: &crate::gpu::Gpu) {
    println!("\nmatmul kernel alone (20 dispatches per submission), ms per dispatch and weights/s:");
    println!("| K x N | format | M | ms | Gweights/s |\n|---|---|---|---|---|");
    for (k, n) in [(576usize, 1536usize), (2048, 2048), (576, 49152)] {
        for fmt in BENCH_FORMATS {
            let m = bench_matrix(k, n, fmt);
            for rows in [1usize, 8] {
                let ms = crate::model::gpu::bench_matmul(gpu, &m, rows, 20);
                println!("| {k} x {n} | {fmt} | {rows} | {ms:.3} | {:.2} |", (k * n) as f64 / ms / 1e6);
            }
        }
    }
}

/// Every pipeline compiled, a pass of every size run (the target's verifications and a draft
/// model's levels: llvmpipe compiles a kernel's code at its first dispatch) and a few plain
/// tokens first, so that shader compilation lands in no measurement (the suffix store is held
/// out: it learns nothing from it).
pub fn warm_up(engine: &mut Engine) -> Result<()> {
    engine.gpu().kernels.build_row_blocks();
    crate::spec::cost::warm_up(&engine.model)?;
    if let Some(d) = engine.draft.as_mut() {
        d.warm_up()?;
    }
    let warm = engine.encode_prompt("Hello", true)?;
    let saved = engine.suffix.take();
    let params =
        GenerateParams { max_tokens: 4, chat: true, speculate: crate::spec::SpecMode::Off, ..Default::default() };
    let out = engine.generate_tokens(&warm, &params, &CancelToken::default(), |_| true);
    engine.suffix = saved;
    out.map(|_| ())
}

/// One prompt of a speculation workload, and the user's later turns of its conversation.
#[derive(Debug, Clone)]
pub struct WorkItem {
    pub category: String,
    pub prompt: String,
    /// Turns after the first, each asked after the model's answer to the one before (Spec-Bench's
    /// MT-bench questions have a second turn, often "rewrite your previous answer ...").
    pub follow_ups: Vec<String>,
}

impl WorkItem {
    fn single(category: &str, prompt: String) -> WorkItem {
        WorkItem { category: category.to_string(), prompt, follow_ups: Vec::new() }
    }
}

/// Spec-Bench questions (jsonl with `category` and `turns`): up to `per_category` questions per
/// category, with all their turns.
pub fn spec_bench_workload(path: &std::path::Path, per_category: usize) -> Result<Vec<WorkItem>> {
    spec_bench_slice(path, 0, per_category)
}

/// Spec-Bench questions after the first `skip` of each category: up to `per_category` more per
/// category (`bench-spec --history` answers these before measuring the first ones).
pub fn spec_bench_slice(path: &std::path::Path, skip: usize, per_category: usize) -> Result<Vec<WorkItem>> {
    let text = std::fs::read_to_string(path).map_err(|e| crate::Error::io(path, e))?;
    jsonl_workload(&text, path, skip, per_category)
}

/// The fixed rewrite workload (`tests/data/rewrite.jsonl`, built into the binary so that it runs
/// from anywhere): up to `count` of its prompts.
pub fn fixed_rewrite_workload(count: usize) -> Result<Vec<WorkItem>> {
    let text = include_str!("../../tests/data/rewrite.jsonl");
    jsonl_workload(text, std::path::Path::new("tests/data/rewrite.jsonl"), 0, count)
}

/// Prompts from jsonl text (`path` names it in errors): of each category, the `per_category`
/// after the first `skip`.
fn jsonl_workload(text: &str, path: &std::path::Path, skip: usize, per_category: usize) -> Result<Vec<WorkItem>> {
    let mut counts = std::collections::HashMap::new();
    let mut items = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| crate::Error::msg(format!("{}:{}: not JSON ({e})", path.display(), i + 1)))?;
        let cat = v["category"].as_str().unwrap_or("uncategorised").to_string();
        let Some(prompt) = v["turns"].get(0).and_then(|t| t.as_str()).or(v["prompt"].as_str()) else { continue };
        let follow_ups = match v["turns"].as_array() {
            Some(turns) => turns.iter().skip(1).filter_map(|t| t.as_str().map(String::from)).collect(),
            None => Vec::new(),
        };
        let n = counts.entry(cat.clone()).or_insert(0);
        *n += 1;
        if *n > skip && *n - skip <= per_category {
            items.push(WorkItem { category: cat, prompt: prompt.to_string(), follow_ups });
        }
    }
    Ok(items)
}

/// The rewrite workload's instructions, taken in turn.
const REWRITE_CHANGES: [&str; 4] = [
    "rename the variable `i` to `idx`",
    "add a comment line at the top",
    "rename `self` to `this` in comments only",
    "change every `usize` to `u64`",
];

/// "Rewrite this code with a small change": the code in a fence, then the instruction. (Asked the
/// other way round, instruction first, SmolLM2-135M mostly answered with code of its own instead
/// of the code it was given, and the workload stopped being input-grounded.)
pub fn rewrite_prompt(code: &str, change: &str) -> String {
    format!(
        "```rust\n{code}\n```\n\nRewrite the code above and {change}; change nothing else and output only the code."
    )
}

/// The rewrite workload from the source files directly under `dir` (sorted by name): 25 lines
/// from a third of the way into each. `tests/data/rewrite.jsonl` holds the same prompts made
/// from a fixed commit of this repository, so that runs stay comparable as the code changes.
pub fn rewrite_workload(dir: &std::path::Path, count: usize) -> Result<Vec<WorkItem>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| crate::Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "rs" || x == "py" || x == "c" || x == "js"))
        .collect();
    files.sort();
    let mut items = Vec::new();
    for (i, f) in files.iter().enumerate().take(count) {
        let text = std::fs::read_to_string(f).map_err(|e| crate::Error::io(f, e))?;
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len() / 3;
        let chunk = lines[start..(start + 25).min(lines.len())].join("\n");
        let prompt = rewrite_prompt(&chunk, REWRITE_CHANGES[i % REWRITE_CHANGES.len()]);
        items.push(WorkItem::single("rewrite", prompt));
    }
    Ok(items)
}

#[derive(Default)]
struct CatTotals {
    off_tokens: usize,
    off_ms: f64,
    spec_tokens: usize,
    spec_ms: f64,
    stats: crate::spec::stats::SpecStats,
    prompts: usize,
    identical: usize,
    /// The controller's tree depths summed over rounds (auto only).
    tree_depth: u64,
    /// ln(spec tok/s / off tok/s) of each prompt.
    log_ratios: Vec<f64>,
}

impl CatTotals {
    /// Adds one run of a prompt: the speculative arm's output and the plain arm's.
    fn add(&mut self, spec: &crate::engine::Output, off: &crate::engine::Output) {
        self.prompts += 1;
        self.identical += (spec.tokens == off.tokens) as usize;
        self.off_tokens += off.stats.generated_tokens.saturating_sub(1);
        self.off_ms += off.stats.decode_ms;
        self.spec_tokens += spec.stats.generated_tokens.saturating_sub(1);
        self.spec_ms += spec.stats.decode_ms;
        let rate =
            |o: &crate::engine::Output| o.stats.generated_tokens.saturating_sub(1) as f64 / o.stats.decode_ms.max(1e-9);
        // a prompt answered in one token (an immediate end of text) has no decode speed
        if rate(spec) > 0.0 && rate(off) > 0.0 {
            self.log_ratios.push((rate(spec) / rate(off)).ln());
        }
        if let Some(s) = &spec.spec {
            if let Some(c) = &s.controller {
                self.tree_depth += c.depth_sum;
            }
            let st = &mut self.stats;
            st.rounds += s.rounds;
            st.drafted += s.drafted;
            st.accepted += s.accepted;
            for (d, (a, b)) in s.attempted_by_depth.iter().zip(&s.accepted_by_depth).enumerate() {
                if st.attempted_by_depth.len() <= d {
                    st.attempted_by_depth.push(0);
                    st.accepted_by_depth.push(0);
                }
                st.attempted_by_depth[d] += a;
                st.accepted_by_depth[d] += b;
            }
        }
    }

    /// Prints the table row labelled `label`; returns the speedup when both arms decoded.
    fn print_row(&self, label: &str) -> Option<f64> {
        let (off, sp) = (self.off_rate(), self.spec_rate());
        let measured = self.off_tokens > 0 && self.spec_tokens > 0;
        let by_depth: Vec<String> =
            self.stats.acceptance_by_depth().iter().take(4).map(|a| format!("{a:.2}")).collect();
        println!(
            "| {label} | {} | {:.0} | {off:.2} | {sp:.2} | {} | {} | {:.2} | {}/{} | {} | {:.2} ({}) | {}/{} |",
            self.prompts,
            // the plain arm's answers: how long they ran (to --max-tokens, or the model's end)
            self.off_tokens as f64 / self.prompts.max(1) as f64,
            if measured { format!("{:.2}x", sp / off) } else { "-".into() },
            ratio_interval(&self.log_ratios).map_or("-".into(), |(lo, hi)| format!("{lo:.2}-{hi:.2}")),
            self.stats.tau(),
            self.stats.accepted,
            self.stats.drafted,
            by_depth.join(" "),
            self.stats.drafted as f64 / self.stats.rounds.max(1) as f64,
            if self.tree_depth > 0 {
                format!("{:.2}", self.tree_depth as f64 / self.stats.rounds.max(1) as f64)
            } else {
                "-".into()
            },
            self.identical,
            self.prompts
        );
        measured.then(|| sp / off)
    }

    fn off_rate(&self) -> f64 {
        self.off_tokens as f64 / (self.off_ms / 1e3).max(1e-9)
    }

    fn spec_rate(&self) -> f64 {
        self.spec_tokens as f64 / (self.spec_ms / 1e3).max(1e-9)
    }
}

/// exp(mean -/+ 2 standard errors) of per-prompt log speedups: the range the category's
/// speedup is known to within, given how much prompts (and the machine) scatter.
fn ratio_interval(logs: &[f64]) -> Option<(f64, f64)> {
    let n = logs.len() as f64;
    if logs.len() < 2 {
        return None;
    }
    let mean = logs.iter().sum::<f64>() / n;
    let var = logs.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let se = (var / n).sqrt();
    Some(((mean - 2.0 * se).exp(), (mean + 2.0 * se).exp()))
}

/// How `spec_run` generates.
#[derive(Debug, Clone, Copy)]
pub struct SpecRun {
    /// Tokens per answer.
    pub max_tokens: usize,
    pub mode: crate::spec::SpecMode,
    /// Tree budget and depth.
    pub budget: usize,
    pub depth: usize,
    /// Turns of each conversation run.
    pub max_turns: usize,
    /// Sampling (temperature 0: greedy). Both arms sample with the same seed, so a lossless run
    /// gives identical outputs here too.
    pub temperature: f32,
    pub top_k: u32,
    pub top_p: f32,
    pub seed: u64,
}

/// A conversation's next prompt, cut to half the context so that the answer fits.
fn turn_prompt(engine: &Engine, conversation: &[ChatMessage]) -> Result<Vec<u32>> {
    let mut ids = engine.encode_conversation(conversation)?;
    ids.truncate(engine.model.max_ctx / 2);
    Ok(ids)
}

/// Runs every prompt with `--speculate off` on `plain` (the same model loaded a second time, on
/// the same GPU) and with `mode` on `engine`, in lockstep round by round (`lockstep.rs`; which
/// arm starts alternates from run to run), and prints per category: tokens/s of each,
/// speedup with its uncertainty, tau and acceptance per depth. A question with follow-up turns
/// is a conversation, as Spec-Bench runs it: each of its first `max_turns` turns is asked after
/// the answers to the ones before, and every turn counts towards its category; a table by turn
/// follows. The suffix store starts empty and learns only from the speculative runs, as a fresh
/// install would; or, with `history`, from those conversations first, answered by the
/// speculative engine alone and not measured, as the store of a user who asked them earlier
/// would (the controller then starts afresh, as in a new process).
///
/// `without`: the target loaded a third time with the suffix index alone, run with `mode` in the
/// same lockstep when `engine` also has a draft model: what attaching the draft model gains or
/// costs `auto` (on a device where drafting with a model does not pay, `auto` must not lose by
/// having one).
pub fn spec_run(
    engine: &mut Engine,
    plain: &mut Engine,
    mut without: Option<&mut Engine>,
    items: &[WorkItem],
    history: &[WorkItem],
    run: &SpecRun,
) -> Result<()> {
    use crate::spec::SpecMode;
    let SpecRun { max_tokens, mode, budget, depth, max_turns, temperature, top_k, top_p, seed } = *run;
    let gpu = engine.gpu().clone();
    let decoding = match temperature > 0.0 {
        false => "greedy".to_string(),
        true => format!("sampled (temperature {temperature}, top-k {top_k}, top-p {top_p}, seed {seed})"),
    };
    println!(
        "device: {}\nmodel:  {}\n{} prompts, {max_tokens} tokens each, {decoding}, chat template, --speculate {mode:?} (tree budget {budget}, depth {depth})",
        gpu.describe(),
        engine.source,
        items.len()
    );
    engine.suffix = Some(Box::new(crate::spec::suffix::SuffixSpeculator::in_memory()));
    let base = GenerateParams {
        max_tokens,
        chat: true,
        tree_budget: budget,
        max_depth: depth,
        temperature,
        top_k,
        top_p,
        seed,
        ..Default::default()
    };
    base.check()?;
    let mut cats: Vec<(String, CatTotals)> = Vec::new();
    // over the whole run: verified and accepted nodes per speculator, and (auto) the rounds in
    // which each expensive speculator was asked to draft
    let mut by_drafter: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
    let mut drafted_rounds: std::collections::BTreeMap<String, u64> = Default::default();
    let mut all_rounds = 0;
    plain.suffix = None; // plain runs teach the store nothing
    warm_up(engine)?;
    warm_up(plain)?;
    if let Some(w) = without.as_deref_mut() {
        w.suffix = Some(Box::new(crate::spec::suffix::SuffixSpeculator::in_memory()));
        w.draft = None;
        w.head = None;
        warm_up(w)?;
    }
    // per category: the arm without the draft model against plain decoding
    let mut cats_without: Vec<(String, CatTotals)> = Vec::new();
    let (spec_params, off_params) =
        (GenerateParams { speculate: mode, ..base.clone() }, GenerateParams { speculate: SpecMode::Off, ..base });
    if !history.is_empty() {
        let t = std::time::Instant::now();
        let mut answered = 0;
        // (the arm without the draft model answers them too: its store must hold the same)
        for e in std::iter::once(&mut *engine).chain(without.as_deref_mut()) {
            for it in history {
                let mut conversation = Vec::new();
                for ask in std::iter::once(&it.prompt).chain(&it.follow_ups).take(max_turns.max(1)) {
                    conversation.push(ChatMessage::user(ask));
                    let ids = turn_prompt(e, &conversation)?;
                    let out = e.generate_tokens(&ids, &spec_params, &CancelToken::default(), |_| true)?;
                    answered += out.tokens.len();
                    conversation.push(ChatMessage::assistant(&out.text));
                }
            }
            e.controller = None;
        }
        println!(
            "history: {} conversations ({answered} tokens) answered first, unmeasured, in {:.0} s",
            history.len(),
            t.elapsed().as_secs_f64()
        );
    }
    let mut turn_totals: Vec<CatTotals> = Vec::new();
    let mut n = 0;
    for it in items {
        let mut conversation = vec![ChatMessage::user(&it.prompt)];
        let turns = std::iter::once(&it.prompt).chain(&it.follow_ups).take(max_turns.max(1));
        for (turn, ask) in turns.enumerate() {
            if turn > 0 {
                conversation.push(ChatMessage::user(ask));
            }
            let ids = turn_prompt(engine, &conversation)?;
            // which arm starts alternates every run, which thread runs which arm every other
            // run: either order or seat alone tilts a comparison by 1-2% on this machine
            let mut arms = vec![(&mut *engine, &spec_params), (&mut *plain, &off_params)];
            if let Some(w) = without.as_deref_mut() {
                arms.push((w, &spec_params));
            }
            let k = arms.len();
            let seat = (n / k) % k;
            let mut outs = lockstep::side_by_side(arms, &ids, (n + seat) % k, seat)?.into_iter();
            n += 1;
            let (Some(spec), Some(off)) = (outs.next(), outs.next()) else {
                unreachable!("side_by_side returns one output per arm")
            };
            if let Some(w) = outs.next() {
                tally(&mut cats_without, &it.category).add(&w, &off);
            }
            // the next turn follows the plain answer (the speculative one is the same when the
            // run is lossless, which the identical column checks)
            conversation.push(ChatMessage::assistant(&off.text));
            tally(&mut cats, &it.category).add(&spec, &off);
            if turn_totals.len() <= turn {
                turn_totals.push(CatTotals::default());
            }
            turn_totals[turn].add(&spec, &off);
            if let Some(s) = spec.spec {
                if let Some(c) = &s.controller {
                    for (k, v) in &c.drafted_rounds {
                        *drafted_rounds.entry(k.clone()).or_default() += v;
                    }
                }
                all_rounds += s.rounds;
                for (k, v) in &s.per_drafter {
                    let e = by_drafter.entry(k.clone()).or_default();
                    e.0 += v.drafted;
                    e.1 += v.accepted;
                }
            }
        }
    }
    let header = "| category | runs | tokens a run | off tok/s | spec tok/s | speedup | per-prompt range | tau | accepted/drafted | acceptance by depth 1..4 | mean tree (depth) | identical |";
    let rule = "|---".repeat(12) + "|";
    println!("\n{header}\n{rule}");
    let mut speedups = Vec::new();
    for (cat, t) in &cats {
        if let Some(s) = t.print_row(cat) {
            speedups.push(s);
        }
    }
    if turn_totals.len() > 1 {
        println!("\nBy turn, over all categories:\n{}\n{rule}", header.replace("category", "turn"));
        for (i, t) in turn_totals.iter().enumerate() {
            t.print_row(&format!("{}", i + 1));
        }
    }
    let mean = speedups.iter().sum::<f64>() / speedups.len().max(1) as f64;
    let worst = speedups.iter().cloned().fold(f64::MAX, f64::min);
    if !speedups.is_empty() {
        println!("\nmean speedup over categories: {mean:.2}x (worst category {worst:.2}x)");
    }
    println!(
        "per-prompt range: exp(mean -/+ 2 standard errors) of the prompts' log speedups; the arms run in lockstep, round by round"
    );
    let nodes: Vec<String> = by_drafter.iter().map(|(k, (d, a))| format!("{k} {a}/{d}")).collect();
    if !nodes.is_empty() {
        println!("accepted/verified nodes by speculator: {}", nodes.join(", "));
    }
    for (k, r) in &drafted_rounds {
        println!("rounds in which the controller had {k} draft: {r} of {all_rounds}");
    }
    if !cats_without.is_empty() {
        println!(
            "\nThe same {mode:?} without the draft model (suffix index alone), in the same lockstep:\n{header}\n{rule}"
        );
        let mut gains = Vec::new();
        for ((cat, t), (_, with)) in cats_without.iter().zip(&cats) {
            t.print_row(cat);
            if t.spec_tokens > 0 && with.spec_tokens > 0 {
                gains.push(format!("{cat} {:.2}x", with.spec_rate() / t.spec_rate()));
            }
        }
        let sum =
            |c: &[(String, CatTotals)]| c.iter().fold((0, 0.0), |(n, ms), (_, t)| (n + t.spec_tokens, ms + t.spec_ms));
        let ((wn, wms), (on, oms)) = (sum(&cats), sum(&cats_without));
        println!(
            "\nwith the draft model over without it: {:.2}x over all tokens; by category: {}",
            (wn as f64 / wms.max(1e-9)) / (on as f64 / oms.max(1e-9)),
            gains.join(", ")
        );
    }
    Ok(())
}

/// The totals of `category`, added at the end when it is new.
fn tally<'a>(cats: &'a mut Vec<(String, CatTotals)>, category: &str) -> &'a mut CatTotals {
    let i = match cats.iter().position(|(k, _)| k == category) {
        Some(i) => i,
        None => {
            cats.push((category.to_string(), CatTotals::default()));
            cats.len() - 1
        }
    };
    &mut cats[i].1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_history_takes_the_questions_after_the_measured_ones() {
        let text: String = (0..12)
            .map(|i| format!("{{\"category\": \"{}\", \"turns\": [\"q{i}\", \"f{i}\"]}}\n", ["a", "b"][i % 2]))
            .collect();
        let path = std::path::Path::new("q.jsonl");
        let prompts = |skip, take| -> Vec<String> {
            jsonl_workload(&text, path, skip, take).unwrap().into_iter().map(|w| w.prompt).collect()
        };
        assert_eq!(prompts(0, 2), ["q0", "q1", "q2", "q3"]);
        assert_eq!(prompts(2, 3), ["q4", "q5", "q6", "q7", "q8", "q9"]);
        assert_eq!(prompts(5, 10), ["q10", "q11"]);
        assert!(prompts(6, 10).is_empty());
        assert_eq!(jsonl_workload(&text, path, 0, 1).unwrap()[0].follow_ups, ["f0"]);
    }

    #[test]
    fn the_fixed_rewrite_workload_is_built_in_and_has_the_prompt_format() {
        let items = fixed_rewrite_workload(100).unwrap();
        assert_eq!(items.len(), 17);
        // the same format as prompts made from files now
        let dir = std::env::temp_dir().join(format!("augur-rewrite-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let code: String = (0..60).map(|i| format!("let x{i} = {i};\n")).collect();
        std::fs::write(dir.join("a.rs"), &code).unwrap();
        let made = rewrite_workload(&dir, 5).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(made.len(), 1);
        assert_eq!(
            made[0].prompt,
            rewrite_prompt(&code.lines().skip(20).take(25).collect::<Vec<_>>().join("\n"), REWRITE_CHANGES[0])
        );
        for it in items.iter().chain(&made) {
            assert_eq!(it.category, "rewrite");
            assert!(it.prompt.starts_with("```rust\n"), "{}", it.prompt);
            assert!(it.prompt.ends_with("; change nothing else and output only the code."), "{}", it.prompt);
            assert!(REWRITE_CHANGES.iter().any(|c| it.prompt.contains(c)));
        }
    }
}
