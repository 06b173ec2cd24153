//! The draft head's WGSL passes (shaders/head.wgsl) against the plain-Rust reference
//! (src/train/head.rs) on random inputs: forward values, losses and two AdamW training steps,
//! with the LM head in both of the engine's weight formats.

mod common;
use augur::model::gpu::GpuMatrix;
use augur::train::gpu::GpuHead;
use augur::train::head::{self, AdamW, CANDIDATES, HeadDims, NO_TOKEN, OutputHead, Sample};
use common::*;

#[test]
fn head_forward_and_training_steps_match_cpu_reference() {
    let gpu = gpu();
    for q8 in [true, false] {
        let dims = HeadDims { d: 64, r: 96 };
        let vocab = 512;
        let mut rng = Rng(if q8 { 5 } else { 6 });
        let wout = random_matrix(&mut rng, dims.d, vocab, q8);
        let mut dense = vec![0f32; dims.d * vocab]; // [k][c]
        let mut col = vec![0f32; dims.d];
        for c in 0..vocab {
            wout.row(c, &mut col);
            for k in 0..dims.d {
                dense[k * vocab + c] = col[k];
            }
        }
        let gamma: Vec<f32> = (0..dims.d).map(|_| 1.0 + 0.3 * rng.f()).collect();
        let mut p = head::init(dims, 9);
        for v in p.iter_mut() {
            *v += 0.05 * rng.f();
        }
        let batch: Vec<Sample> = (0..5)
            .map(|b| {
                let mut cands = [NO_TOKEN; CANDIDATES];
                let mut target = [0f32; CANDIDATES];
                let used = 20 + b; // some slots stay empty
                let mut total = 0.0;
                for i in 0..used {
                    cands[i] = ((b * 131 + i * 17) % vocab) as u32;
                    target[i] = if i < 9 { 0.5 + rng.f() } else { 0.0 };
                    total += target[i];
                }
                for t in target.iter_mut() {
                    *t /= total;
                }
                Sample { h: rng.vec(dims.d, 3.0), e: rng.vec(dims.d, 0.05), cands, target }
            })
            .collect();
        let n = batch.len();

        let gm = GpuMatrix::upload(&gpu, &wout, "wout");
        let gamma_b = gpu.storage("gamma", &gamma);
        let gh = GpuHead::new(gpu.clone(), dims, &p, &gm, vocab, &gamma_b, 1e-5, 8).unwrap();
        let flat = |f: &dyn Fn(&Sample) -> Vec<f32>| batch.iter().flat_map(f).collect::<Vec<f32>>();
        gpu.queue.write_buffer(&gh.h, 0, bytemuck::cast_slice(&flat(&|s| s.h.clone())));
        gpu.queue.write_buffer(&gh.e, 0, bytemuck::cast_slice(&flat(&|s| s.e.clone())));
        let cands: Vec<u32> = batch.iter().flat_map(|s| s.cands).collect();
        gpu.queue.write_buffer(&gh.cands, 0, bytemuck::cast_slice(&cands));
        gpu.queue.write_buffer(&gh.target, 0, bytemuck::cast_slice(&flat(&|s| s.target.to_vec())));

        // forward
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        gh.encode_forward(&mut enc, n);
        gpu.queue.submit([enc.finish()]);
        let act = gpu.read_f32(&gh.act, gh.loss_offset(n) + n);
        for (b, s) in batch.iter().enumerate() {
            let want = head::forward(dims, &p, &s.h, &s.e).y;
            let got = &act[gh.y_offset(n) + b * dims.d..gh.y_offset(n) + (b + 1) * dims.d];
            let e = rel_l2(got, &want);
            assert!(e < 1e-5, "q8 {q8} row {b}: forward rel L2 {e}");
        }

        // two training steps; eps large enough that Adam's update is linear in tiny gradients
        let opt = AdamW { lr: 1e-3, eps: 1e-4, ..Default::default() };
        let weight = |k: usize, c: usize| dense[k * vocab + c];
        let out = OutputHead { gamma: &gamma, eps: 1e-5, weight: &weight };
        let (mut m, mut v) = (vec![0f32; dims.n_params()], vec![0f32; dims.n_params()]);
        let mut cpu = p.clone();
        for step in 1..=2u32 {
            let before = cpu.clone();
            let (loss, grad) = head::loss_and_grad(dims, &cpu, &batch, &out);
            head::adamw(&opt, &mut cpu, &grad, &mut m, &mut v, step);
            let mut enc = gpu.device.create_command_encoder(&Default::default());
            gh.encode_train_step(&mut enc, n, &opt, step);
            gpu.queue.submit([enc.finish()]);
            let act = gpu.read_f32(&gh.act, gh.loss_offset(n) + n);
            let gpu_loss: f32 = act[gh.loss_offset(n)..].iter().sum::<f32>() / n as f32;
            assert!(
                (gpu_loss - loss).abs() < 1e-4 * loss.abs().max(1.0),
                "q8 {q8} step {step}: loss {gpu_loss} vs {loss}"
            );
            let got = gpu.read_f32(&gh.params, dims.n_params());
            for (name, range) in [("w1", dims.w1()), ("b1", dims.b1()), ("w2", dims.w2()), ("b2", dims.b2())] {
                for i in range {
                    let (dg, dc) = (got[i] - before[i], cpu[i] - before[i]);
                    assert!(
                        (dg - dc).abs() <= 0.02 * opt.lr + 1e-6 * before[i].abs(),
                        "q8 {q8} step {step} {name}[{i}]: GPU moved {dg}, CPU {dc}"
                    );
                }
            }
            // the GPU's own parameters carry on to the next step; keep the CPU copy identical
            cpu.copy_from_slice(&got);
        }
    }
}
