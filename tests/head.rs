//! The draft head's WGSL passes (shaders/head.wgsl) against the plain-Rust reference
//! (src/train/head.rs) on random inputs: forward values, losses and two AdamW training steps,
//! with the LM head in both of the engine's weight formats.

mod common;
use augur::model::gpu::GpuMatrix;
use augur::train::gpu::GpuHead;
use augur::train::head::{self, AdamW, CANDIDATES, HeadDims, NO_TOKEN, OutputHead, Sample};
use common::*;

/// The LM-head matrix as plain floats, [k][c] (hidden index k, token c).
fn dense_kc(w: &augur::model::weights::Matrix, d: usize, vocab: usize) -> Vec<f32> {
    let mut dense = vec![0f32; d * vocab];
    let mut col = vec![0f32; d];
    for c in 0..vocab {
        w.row(c, &mut col);
        for (k, v) in col.iter().enumerate() {
            dense[k * vocab + c] = *v;
        }
    }
    dense
}

#[test]
fn head_forward_and_training_steps_match_cpu_reference() {
    let gpu = gpu();
    for (seed, kind) in [(5, Kind::Q8), (6, Kind::F16), (7, Kind::Q8x16), (8, Kind::Q8Sym)] {
        let dims = HeadDims { d: 64, r: 96 };
        let vocab = 512;
        let mut rng = Rng(seed);
        let wout = random_matrix_of(&mut rng, dims.d, vocab, kind);
        let dense = dense_kc(&wout, dims.d, vocab);
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
                    // the last row learns by regression alone (a prompt sample: no token target)
                    *t = if b == 4 { 0.0 } else { *t / total };
                }
                Sample {
                    h: rng.vec(dims.d, 3.0),
                    e: rng.vec(dims.d, 0.05),
                    h_next: rng.vec(dims.d, 2.0),
                    cands,
                    target,
                }
            })
            .collect();
        let n = batch.len();

        let gm = GpuMatrix::upload_wide(&gpu, &wout, "wout");
        let gamma_b = gpu.storage("gamma", &gamma);
        let gh = GpuHead::new(gpu.clone(), dims, &p, &gm, vocab, &gamma_b, 1e-5, 8).unwrap();
        let flat = |f: &dyn Fn(&Sample) -> Vec<f32>| batch.iter().flat_map(f).collect::<Vec<f32>>();
        gpu.queue.write_buffer(&gh.h, 0, bytemuck::cast_slice(&flat(&|s| s.h.clone())));
        gpu.queue.write_buffer(&gh.e, 0, bytemuck::cast_slice(&flat(&|s| s.e.clone())));
        gpu.queue.write_buffer(&gh.h_next, 0, bytemuck::cast_slice(&flat(&|s| s.h_next.clone())));
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
            assert!(e < 1e-5, "{kind:?} row {b}: forward rel L2 {e}");
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
            gh.encode_train_step(&mut enc, n, &opt, step, None);
            gpu.queue.submit([enc.finish()]);
            let act = gpu.read_f32(&gh.act, gh.loss_offset(n) + n);
            let gpu_loss: f32 = act[gh.loss_offset(n)..].iter().sum::<f32>() / n as f32;
            assert!(
                (gpu_loss - loss).abs() < 1e-4 * loss.abs().max(1.0),
                "{kind:?} step {step}: loss {gpu_loss} vs {loss}"
            );
            let got = gpu.read_f32(&gh.params, dims.n_params());
            for (name, range) in [("w1", dims.w1()), ("b1", dims.b1()), ("w2", dims.w2()), ("b2", dims.b2())] {
                for i in range {
                    let (dg, dc) = (got[i] - before[i], cpu[i] - before[i]);
                    assert!(
                        (dg - dc).abs() <= 0.02 * opt.lr + 1e-6 * before[i].abs(),
                        "{kind:?} step {step} {name}[{i}]: GPU moved {dg}, CPU {dc}"
                    );
                }
            }
            // the GPU's own parameters carry on to the next step; keep the CPU copy identical
            cpu.copy_from_slice(&got);
        }
    }
}

/// Guard rails: a batch with a non-finite value leaves every weight as it was (and the host sees
/// the non-finite loss to count it); a snapshot and a roll-back restore parameters exactly.
#[test]
fn non_finite_steps_change_nothing_and_roll_back_restores() {
    let gpu = gpu();
    let dims = HeadDims { d: 64, r: 96 };
    let vocab = 512;
    let mut rng = Rng(41);
    let wout = random_matrix(&mut rng, dims.d, vocab, true);
    let gm = GpuMatrix::upload_wide(&gpu, &wout, "wout");
    let gamma_b = gpu.storage("gamma", &vec![1f32; dims.d]);
    let n = 4;
    let init = head::init(dims, 3);
    let gh = GpuHead::new(gpu.clone(), dims, &init, &gm, vocab, &gamma_b, 1e-5, n).unwrap();
    let q = &gpu.queue;
    let mut h = rng.vec(n * dims.d, 1.0);
    q.write_buffer(&gh.h, 0, bytemuck::cast_slice(&h));
    q.write_buffer(&gh.e, 0, bytemuck::cast_slice(&rng.vec(n * dims.d, 1.0)));
    q.write_buffer(&gh.h_next, 0, bytemuck::cast_slice(&rng.vec(n * dims.d, 1.0)));
    let cands: Vec<u32> = (0..n * CANDIDATES).map(|i| (i * 7 % vocab) as u32).collect();
    let target: Vec<f32> = (0..n * CANDIDATES).map(|i| if i % CANDIDATES == 0 { 1.0 } else { 0.0 }).collect();
    q.write_buffer(&gh.cands, 0, bytemuck::cast_slice(&cands));
    q.write_buffer(&gh.target, 0, bytemuck::cast_slice(&target));
    let step = |s: u32| {
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        gh.encode_train_step(&mut enc, n, &AdamW::default(), s, None);
        q.submit([enc.finish()]);
        gh.read_losses(n)
    };
    let params = || gpu.read_f32(&gh.params, dims.n_params());
    assert!(step(1).iter().all(|l| l.is_finite()));
    let after_one = params();
    assert_ne!(after_one, init, "a finite step trains");
    h[5] = f32::NAN;
    q.write_buffer(&gh.h, 0, bytemuck::cast_slice(&h));
    let losses = step(2);
    assert!(!losses[0].is_finite(), "the poisoned row's loss shows it: {losses:?}");
    assert_eq!(params(), after_one, "a step with NaN in its batch changed the weights");
    // the snapshot taken at creation holds the initial weights
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    gh.encode_roll_back(&mut enc);
    q.submit([enc.finish()]);
    assert_eq!(params(), init);
    assert!(gpu.read_f32(&gh.adam_m, dims.n_params()).iter().all(|&m| m == 0.0), "moments rolled back too");
}

/// The GPU trainer learns a simple deterministic mapping: from the embedding of token a (with a
/// noisy hidden state beside it) the head must predict token f(a) = 7a + 3 (mod vocab), judged
/// by the argmax over the whole vocabulary, not just the training candidates.
#[test]
fn head_learns_a_deterministic_mapping() {
    let gpu = gpu();
    let dims = HeadDims { d: 64, r: 96 };
    let vocab = 256;
    let mut rng = Rng(31);
    let wout = random_matrix(&mut rng, dims.d, vocab, false);
    let dense = dense_kc(&wout, dims.d, vocab);
    let gamma = vec![1f32; dims.d];
    let n = 16;
    let inputs: Vec<usize> = (0..n).map(|i| i * 13 + 5).collect();
    let f = |a: usize| (7 * a + 3) % vocab;
    let e: Vec<f32> = (0..n).flat_map(|_| rng.vec(dims.d, 1.0)).collect();
    let h: Vec<f32> = (0..n).flat_map(|_| rng.vec(dims.d, 1.0)).collect();
    // the regression target points at f(a)'s output column
    let h_next: Vec<f32> =
        inputs.iter().flat_map(|&a| (0..dims.d).map(move |k| (k, a))).map(|(k, a)| dense[k * vocab + f(a)]).collect();
    let gm = GpuMatrix::upload_wide(&gpu, &wout, "wout");
    let gamma_b = gpu.storage("gamma", &gamma);
    let gh = GpuHead::new(gpu.clone(), dims, &head::init(dims, 2), &gm, vocab, &gamma_b, 1e-5, n).unwrap();
    let q = &gpu.queue;
    q.write_buffer(&gh.h, 0, bytemuck::cast_slice(&h));
    q.write_buffer(&gh.e, 0, bytemuck::cast_slice(&e));
    q.write_buffer(&gh.h_next, 0, bytemuck::cast_slice(&h_next));
    let opt = AdamW { lr: 5e-3, ..Default::default() };
    for step in 1..=200u32 {
        // f(a) against 31 fresh random negatives each step
        let mut cands = Vec::new();
        let mut target = Vec::new();
        for &a in &inputs {
            cands.push(f(a) as u32);
            target.push(1.0f32);
            for _ in 1..CANDIDATES {
                let mut neg = (rng.next() % vocab as u64) as u32;
                if neg == f(a) as u32 {
                    neg = NO_TOKEN;
                }
                cands.push(neg);
                target.push(0.0);
            }
        }
        q.write_buffer(&gh.cands, 0, bytemuck::cast_slice(&cands));
        q.write_buffer(&gh.target, 0, bytemuck::cast_slice(&target));
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        gh.encode_train_step(&mut enc, n, &opt, step, None);
        q.submit([enc.finish()]);
    }
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    gh.encode_forward(&mut enc, n);
    q.submit([enc.finish()]);
    let act = gpu.read_f32(&gh.act, gh.y_offset(n) + n * dims.d);
    let mut right = 0;
    for (b, &a) in inputs.iter().enumerate() {
        let y = &act[gh.y_offset(n) + b * dims.d..gh.y_offset(n) + (b + 1) * dims.d];
        let best = (0..vocab)
            .max_by(|&u, &v| {
                let l = |c: usize| (0..dims.d).map(|k| y[k] * dense[k * vocab + c]).sum::<f32>();
                l(u).total_cmp(&l(v))
            })
            .unwrap();
        right += (best == f(a)) as usize;
    }
    assert!(right >= n - 1, "the head predicts f(a) for only {right} of {n} inputs after 200 steps");
}

/// replay.wgsl against its reference: `record` stores the accepted path's samples (hidden state
/// before each node, the node, the teacher's top tokens after it, what came next) and moves
/// prev_h; `gather` builds training rows (embedding, candidates, target distribution);
/// `embed_tokens` looks embeddings up.
#[test]
fn replay_record_and_gather_match_cpu_reference() {
    // odd seed: Q8 embedding; even: Q8x16 (see tiny_model)
    replay_matches_cpu_reference(21);
    replay_matches_cpu_reference(22);
}

fn replay_matches_cpu_reference(seed: u64) {
    use augur::gpu::kernels::CANDIDATES as TEACH;
    use augur::model::gpu::{GpuModel, RESULT_BONUS, RESULT_LEN};
    use augur::train::replay::{META, Replay, gather_cpu, record_cpu, record_prompt_cpu};
    let gpu = gpu();
    let (cfg, w) = tiny_model(seed, true, augur::model::config::RopeStyle::Neox, false);
    let gm = GpuModel::new(gpu.clone(), &cfg, &w, 64, 16).unwrap();
    let d = cfg.dim;
    let dims = HeadDims { d, r: 32 };
    let head =
        GpuHead::new(gpu.clone(), dims, &head::init(dims, 1), &gm.output, cfg.vocab, &gm.out_gamma, 1e-5, 8).unwrap();
    let capacity = 7; // small, so the ring wraps
    let expansions: Vec<u32> = (0..4 * TEACH).flat_map(|i| [((i * 37) % cfg.vocab) as u32, 0.1f32.to_bits()]).collect();
    let exp_b = gpu.storage("expansions", &expansions);
    let mut replay = Replay::new(&gm, &head, &exp_b, capacity).unwrap();
    let mut rng = Rng(8);
    let mut ring_h = vec![0f32; capacity * 2 * d];
    let mut ring_meta = vec![0u32; capacity * META];
    let mut prev_h = vec![0f32; d];
    for (round, (k, have_prev)) in [(2usize, false), (0, true), (3, true), (4, true)].into_iter().enumerate() {
        let rows = 6;
        let mut result = vec![0u32; RESULT_LEN];
        result[0] = k as u32;
        let mut path: Vec<u32> = (1..rows as u32).collect();
        path.rotate_left(round);
        result[1..=k].copy_from_slice(&path[..k]);
        result[RESULT_BONUS] = (rng.next() % cfg.vocab as u64) as u32;
        let x = rng.vec(rows * d, 2.0);
        let tokens: Vec<u32> = (0..rows).map(|_| (rng.next() % cfg.vocab as u64) as u32).collect();
        let topk: Vec<u32> = (0..rows * TEACH)
            .flat_map(|_| [(rng.next() % cfg.vocab as u64) as u32, (0.05 + 0.1 * rng.f().abs()).to_bits()])
            .collect();
        let q = &gpu.queue;
        q.write_buffer(&gm.result, 0, bytemuck::cast_slice(&result));
        q.write_buffer(&gm.x, 0, bytemuck::cast_slice(&x));
        q.write_buffer(&gm.tokens, 0, bytemuck::cast_slice(&tokens));
        q.write_buffer(&gm.candidates, 0, bytemuck::cast_slice(&topk));
        // the head drafted at some rows (expansion slots 0..4), not at others
        let row_slot: Vec<u32> =
            (0..rows as u32).map(|r| if (r + round as u32).is_multiple_of(3) { u32::MAX } else { r % 4 }).collect();
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        // acceptance has overwritten tokens[0] with the bonus; the root comes separately
        let root = (rng.next() % cfg.vocab as u64) as u32;
        replay.encode_record(&mut enc, have_prev, root, &row_slot);
        q.submit([enc.finish()]);
        let (samples, new_prev) = record_cpu(
            &result,
            &x,
            &tokens,
            &topk,
            &prev_h,
            have_prev,
            replay.write_pos,
            capacity,
            &row_slot,
            &expansions,
            root,
        );
        assert_eq!(samples.len(), k + have_prev as usize);
        for (slot, h, meta) in samples {
            ring_h[slot * 2 * d..(slot + 1) * 2 * d].copy_from_slice(&h);
            ring_meta[slot * META..(slot + 1) * META].copy_from_slice(&meta);
        }
        prev_h = new_prev;
        replay.advance(k, have_prev);
        assert_eq!(gpu.read_f32(&replay.ring_h, capacity * 2 * d), ring_h, "round {round}: ring hidden states");
        let got_meta: Vec<u32> =
            bytemuck::pod_collect_to_vec(&gpu.read(&replay.ring_meta, (capacity * META * 4) as u64));
        assert_eq!(got_meta, ring_meta, "round {round}: ring metadata");
        assert_eq!(gpu.read_f32(&replay.prev_h, d), prev_h, "round {round}: prev_h");
    }
    assert_eq!(replay.filled, capacity);

    // prompt rows from prefill passes: one followed by more prompt, one at the prompt's end
    for (pass, (rows, next)) in [(4usize, Some(11u32)), (3, None)].into_iter().enumerate() {
        let x = rng.vec(rows * d, 2.0);
        let tokens: Vec<u32> = (0..rows).map(|_| (rng.next() % cfg.vocab as u64) as u32).collect();
        gpu.queue.write_buffer(&gm.x, 0, bytemuck::cast_slice(&x));
        gpu.queue.write_buffer(&gm.tokens, 0, bytemuck::cast_slice(&tokens));
        let samples = record_prompt_cpu(&x, &tokens, next, d, replay.write_pos, capacity);
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        let n = replay.encode_record_prompt(&mut enc, rows, next);
        gpu.queue.submit([enc.finish()]);
        assert_eq!((n, samples.len()), (rows + next.is_some() as usize - 2, n), "prompt pass {pass}");
        for (slot, h, meta) in samples {
            ring_h[slot * 2 * d..(slot + 1) * 2 * d].copy_from_slice(&h);
            ring_meta[slot * META..(slot + 1) * META].copy_from_slice(&meta);
        }
        assert_eq!(gpu.read_f32(&replay.ring_h, capacity * 2 * d), ring_h, "prompt pass {pass}: hidden states");
        let got_meta: Vec<u32> =
            bytemuck::pod_collect_to_vec(&gpu.read(&replay.ring_meta, (capacity * META * 4) as u64));
        assert_eq!(got_meta, ring_meta, "prompt pass {pass}: metadata");
    }
    // the last 4 slots written hold prompt samples (no teacher), the other 3 verified ones
    let slot = |back: usize| ((replay.write_pos + capacity - back) % capacity) as u32;
    assert_eq!(ring_meta[slot(1) as usize * META + 2], u32::MAX);
    assert_ne!(ring_meta[slot(5) as usize * META + 2], u32::MAX);

    // gather a batch of slots
    let slots = [slot(7), slot(6), slot(5), slot(1), slot(4), slot(7)];
    let (seed, alpha) = (77, 0.6);
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    replay.encode_gather(&mut enc, &slots, seed, alpha);
    gpu.queue.submit([enc.finish()]);
    let n = slots.len();
    let h = gpu.read_f32(&head.h, n * d);
    let hn = gpu.read_f32(&head.h_next, n * d);
    let e = gpu.read_f32(&head.e, n * d);
    let c: Vec<u32> = bytemuck::pod_collect_to_vec(&gpu.read(&head.cands, (n * CANDIDATES * 4) as u64));
    let t = gpu.read_f32(&head.target, n * CANDIDATES);
    let mut row = vec![0f32; d];
    for (b, &slot) in slots.iter().enumerate() {
        let s = slot as usize;
        assert_eq!(&h[b * d..(b + 1) * d], &ring_h[s * 2 * d..s * 2 * d + d], "gather row {b}: hidden");
        assert_eq!(&hn[b * d..(b + 1) * d], &ring_h[s * 2 * d + d..(s + 1) * 2 * d], "gather row {b}: next hidden");
        let meta: [u32; META] = ring_meta[s * META..(s + 1) * META].try_into().unwrap();
        w.embed.row(meta[0] as usize, &mut row);
        assert!(rel_l2(&e[b * d..(b + 1) * d], &row) < 1e-6, "gather row {b}: embedding");
        let (wc, wt) = gather_cpu(&meta, b, seed, alpha, cfg.vocab);
        assert_eq!(&c[b * CANDIDATES..(b + 1) * CANDIDATES], &wc, "gather row {b}: candidates");
        for i in 0..CANDIDATES {
            assert!((t[b * CANDIDATES + i] - wt[i]).abs() < 1e-6, "gather row {b} slot {i}: target");
        }
        // verified samples: a distribution; prompt samples: regression only, no token target
        let total: f32 = wt.iter().sum();
        let want = if meta[2] == u32::MAX { 0.0 } else { 1.0 };
        assert!((total - want).abs() < 1e-5, "gather row {b}: targets sum to {total}");
    }

    // embeddings for drafting
    let toks = [5u32, 300, 17];
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    replay.encode_embed(&mut enc, &toks);
    gpu.queue.submit([enc.finish()]);
    let e = gpu.read_f32(&head.e, toks.len() * d);
    for (b, &tk) in toks.iter().enumerate() {
        w.embed.row(tk as usize, &mut row);
        assert!(rel_l2(&e[b * d..(b + 1) * d], &row) < 1e-6, "embed row {b}");
    }
}
