//! The draft head's training step on this device, per batch size: wall time per step and per
//! sample (median of 8 after a warm-up), then GPU time per kernel from timestamp queries (each
//! kernel in its own pass, so those steps are not the ones timed above). SmolLM2-135M's head
//! (d = r = 576); inputs are whatever the fresh buffers hold, which does not change the cost.
//!
//!     cargo run --release --example head_step_time

use augur::engine::{Engine, EngineOptions};
use augur::gpu::profile::Profiler;
use augur::spec::head::HeadOptions;
use std::time::Instant;

fn main() -> augur::Result<()> {
    let path = augur::pull::resolve_model("smollm2-135m", true)?;
    let mut engine = Engine::load(&path, &EngineOptions { max_ctx: 512, ..Default::default() })?;
    println!("device: {}", engine.gpu().describe());
    for batch in [16usize, 32, 64, 128] {
        engine.attach_head(None, HeadOptions { batch, ..Default::default() })?;
        let h = &engine.head.as_ref().expect("attached").head;
        let g = &h.gpu;
        let opt = HeadOptions::default().opt;
        let mut step = 0;
        let mut run = |prof: Option<&mut Profiler>| {
            step += 1;
            let t = Instant::now();
            let mut enc = g.device.create_command_encoder(&Default::default());
            h.encode_train_step(&mut enc, batch, &opt, step, prof);
            g.queue.submit([enc.finish()]);
            h.read_losses(batch);
            t.elapsed().as_secs_f64() * 1e3
        };
        run(None); // warm-up: pipeline compilation
        let mut times: Vec<f64> = (0..8).map(|_| run(None)).collect();
        times.sort_by(|a, b| a.total_cmp(b));
        let median = (times[3] + times[4]) / 2.0;
        print!("batch {batch:>3}: {median:6.1} ms/step, {:.2} ms/sample", median / batch as f64);
        if let Some(mut prof) = Profiler::new(g, 16) {
            let mut per = std::collections::BTreeMap::new();
            for _ in 0..4 {
                run(Some(&mut prof));
                for (k, v) in prof.read(g) {
                    *per.entry(k).or_insert(0.0) += v / 4.0;
                }
            }
            let parts: Vec<String> = per.iter().map(|(k, v)| format!("{k} {v:.1}")).collect();
            print!("  | GPU ms: {}", parts.join(", "));
        }
        println!();
    }
    Ok(())
}
