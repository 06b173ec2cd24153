//! `augur bench`: prefill and decode speed (median, min, max over runs), a per-kernel time table
//! from timestamp queries, the cost of an M-token pass relative to one token (the curve that
//! speculative verification lives on), and the fixed cost of one submitted round.

use crate::engine::{CancelToken, Engine, GenerateParams};
use crate::error::Result;
use crate::gpu::map_read;
use crate::gpu::profile::Profiler;
use crate::model::gpu::PassSpec;
use std::time::Instant;

pub fn median_min_max(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

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
    println!("device: {}", gpu.describe());
    println!("model:  {}", engine.source);
    let prompt = prompt_of(engine, prompt_tokens)?;
    let params = GenerateParams { max_tokens: gen_tokens, stop_at_eos: false, ..Default::default() };
    engine.generate_tokens(&prompt, &params, &CancelToken::default(), |_| true)?; // warm-up (shader compilation)
    let (mut pre, mut dec) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let out = engine.generate_tokens(&prompt, &params, &CancelToken::default(), |_| true)?;
        pre.push(out.stats.prefill_tok_s());
        dec.push(out.stats.decode_tok_s());
    }
    let (pm, pmin, pmax) = median_min_max(&mut pre);
    let (dm, dmin, dmax) = median_min_max(&mut dec);
    println!("\n{runs} runs, prompt {prompt_tokens} tokens, {gen_tokens} generated (greedy)");
    println!("| phase | median tok/s | min | max |\n|---|---|---|---|");
    println!("| prefill-{prompt_tokens} | {pm:.2} | {pmin:.2} | {pmax:.2} |");
    println!("| decode | {dm:.2} | {dmin:.2} | {dmax:.2} |");

    // the M-token pass curve at the context the prompt left
    let model = &engine.model;
    let n_past = prompt_tokens.min(model.max_ctx.saturating_sub(17));
    let time_pass = |m: usize, reps: usize| -> Result<f64> {
        let spec = PassSpec { m, n_past, tree: None, logits_rows: 0..m, sample: None, accept: false };
        model.set_tokens(&prompt[..m.min(prompt.len())]);
        model.run(&spec)?;
        let mut t = Vec::new();
        for _ in 0..reps {
            let t0 = Instant::now();
            model.run(&spec)?;
            t.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        Ok(median_min_max(&mut t).0)
    };
    println!("\nforward pass of M tokens (all M rows through the LM head), context {n_past}:");
    println!("| M | ms | x M=1 |\n|---|---|---|");
    let base = time_pass(1, 5)?;
    for m in [1usize, 2, 4, 8, 16] {
        if m > model.max_batch || m > prompt.len() {
            break;
        }
        let t = if m == 1 { base } else { time_pass(m, 5)? };
        println!("| {m} | {t:.2} | {:.2} |", t / base);
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
        enc.copy_buffer_to_buffer(&model.sampled, 0, &staging, 0, 4);
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
            for (name, m) in [("decode step (M=1)", 1usize), ("prefill pass", prompt_tokens.min(model.max_batch))] {
                let spec = PassSpec {
                    m,
                    n_past: if m == 1 { n_past } else { 0 },
                    tree: None,
                    logits_rows: m - 1..m,
                    sample: None,
                    accept: false,
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

/// Matmul kernel speed on this device for the shapes that matter, in both weight formats: the
/// roofline that whole-model decode speed is compared with.
pub fn matmul_table(gpu: &crate::gpu::Gpu) {
    use crate::model::weights::{MatData, Matrix};
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    println!("\nmatmul kernel alone (20 dispatches per submission), ms per dispatch and weights/s:");
    println!("| K x N | format | M | ms | Gweights/s |\n|---|---|---|---|---|");
    for (k, n) in [(576usize, 1536usize), (2048, 2048), (576, 49152)] {
        for q8 in [true, false] {
            let data = if q8 {
                MatData::Q8 {
                    q: (0..k * n).map(|_| (rnd() % 31) as i8 - 15).collect(),
                    scale: (0..k * n / 32).map(|_| 0.01).collect(),
                    offset: (0..k * n / 32).map(|_| 0.001).collect(),
                }
            } else {
                MatData::F16((0..k * n).map(|_| half::f16::from_f32((rnd() % 100) as f32 / 1000.0)).collect())
            };
            let m = Matrix { k, n, data };
            for rows in [1usize, 8] {
                let ms = crate::model::gpu::bench_matmul(gpu, &m, rows, 20);
                let fmt = if q8 { "Q8" } else { "F16" };
                println!("| {k} x {n} | {fmt} | {rows} | {ms:.3} | {:.2} |", (k * n) as f64 / ms / 1e6);
            }
        }
    }
}
