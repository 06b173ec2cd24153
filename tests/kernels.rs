//! Every WGSL kernel against its plain-Rust reference, on random inputs, on the GPU wgpu finds
//! (lavapipe in CI). The forward-pass kernels (embed, matmul in all five weight formats with every epilogue,
//! RoPE and the KV cache writes among them, attention) are checked through a tiny random transformer against the CPU forward; the
//! acceptance kernel's sampling directly against its CPU twin.

mod common;
use augur::gpu::kernels::{AcceptParams, PassUniform};
use augur::model::config::RopeStyle;
use augur::model::cpu::{CpuModel, argmax};
use augur::model::gpu::{GpuModel, PassSpec};
use common::*;

fn gpu_logits(m: &GpuModel, spec: &PassSpec) -> Vec<f32> {
    m.run(spec).unwrap();
    m.read_logits(spec.logits_rows.len())
}

/// Prefill as one multi-row pass, then single-token steps; logits agree with the CPU forward.
#[test]
fn tiny_model_matches_cpu_reference() {
    for gpu in gpus_both_plans() {
        tiny_model_matches_cpu_reference_on(&gpu);
    }
}

fn tiny_model_matches_cpu_reference_on(gpu: &std::sync::Arc<augur::gpu::Gpu>) {
    // (query heads, KV heads, head size); 16 query heads on one KV head make a 7-row prefill 112
    // attention lanes, 14 workgroups of 8 in attention.wgsl
    for (seed, q8, rope, bias, heads) in [
        (1, true, RopeStyle::Interleaved, false, (4, 2, 16)),
        (2, false, RopeStyle::Neox, true, (4, 2, 16)),
        (3, true, RopeStyle::Neox, true, (4, 2, 16)),
        (4, true, RopeStyle::Neox, false, (4, 2, 16)),
        (5, true, RopeStyle::Interleaved, true, (4, 2, 32)),
        (6, false, RopeStyle::Neox, true, (4, 2, 48)),
        (8, true, RopeStyle::Neox, false, (4, 2, 128)),
        (9, true, RopeStyle::Neox, false, (16, 1, 32)),
    ] {
        let (cfg, w) = tiny_model_shaped(seed, q8, rope, bias, heads);
        let gm = GpuModel::new(gpu.clone(), &cfg, &w, 64, 16).unwrap();
        let mut cpu = CpuModel::new(&cfg, &w, 64);
        let prompt = [5u32, 17, 300, 42, 9, 250, 77];
        gm.set_tokens(&prompt);
        let got = gpu_logits(
            &gm,
            &PassSpec { m: prompt.len(), n_past: 0, tree: None, logits_rows: 0..prompt.len(), ..Default::default() },
        );
        for (i, &t) in prompt.iter().enumerate() {
            let want = cpu.step(t);
            let row = &got[i * cfg.vocab..(i + 1) * cfg.vocab];
            let e = rel_l2(row, &want);
            assert!(e < 1e-4, "seed {seed} prefill row {i}: rel L2 {e}");
        }
        for (n_past, t) in (prompt.len()..).zip([11u32, 12, 13]) {
            gm.set_tokens(&[t]);
            let got = gpu_logits(&gm, &PassSpec { m: 1, n_past, tree: None, logits_rows: 0..1, ..Default::default() });
            let want = cpu.step(t);
            let e = rel_l2(&got, &want);
            assert!(e < 1e-4, "seed {seed} decode at {n_past}: rel L2 {e}");
        }
    }
}

/// Rows that see more than 64 slots: the split attention deals them over several workgroups
/// (parts) and merges those; the logits still match the CPU forward, in prefill chunks and in
/// single steps, with 2 to 5 parts.
#[test]
fn long_rows_match_cpu_reference() {
    for gpu in gpus_both_plans() {
        let (cfg, w) = tiny_model_with_heads(21, true, RopeStyle::Neox, true, 32);
        let gm = GpuModel::new(gpu.clone(), &cfg, &w, 320, 16).unwrap();
        let mut cpu = CpuModel::new(&cfg, &w, 320);
        let mut rng = Rng(9);
        let prompt: Vec<u32> = (0..280).map(|_| (rng.next() % 320) as u32).collect();
        for (i, chunk) in prompt.chunks(16).enumerate() {
            gm.set_tokens(chunk);
            let m = chunk.len();
            let spec = PassSpec { m, n_past: i * 16, logits_rows: 0..m, ..Default::default() };
            let got = gpu_logits(&gm, &spec);
            for (j, &t) in chunk.iter().enumerate() {
                let want = cpu.step(t);
                let e = rel_l2(&got[j * cfg.vocab..(j + 1) * cfg.vocab], &want);
                assert!(e < 1e-4, "{:?} kernels: prefill row {}: rel L2 {e}", gpu.plan, i * 16 + j);
            }
        }
        for (n_past, t) in [(280, 7u32), (281, 99)] {
            gm.set_tokens(&[t]);
            let got = gpu_logits(&gm, &PassSpec { m: 1, n_past, logits_rows: 0..1, ..Default::default() });
            let e = rel_l2(&got, &cpu.step(t));
            assert!(e < 1e-4, "{:?} kernels: decode at {n_past}: rel L2 {e}", gpu.plan);
        }
    }
}

/// A token's logits are bit-identical whether it runs alone or as one of M rows in a pass, for
/// every M that picks another row block of the matmul and attention (1 to 9 rows per
/// invocation, and several blocks), with heads held by one lane and by two, and with a block's
/// attention lanes in one workgroup of 8 and in many.
#[test]
fn forward_is_batch_invariant() {
    for gpu in gpus_both_plans() {
        forward_is_batch_invariant_on(&gpu);
    }
}

fn forward_is_batch_invariant_on(gpu: &std::sync::Arc<augur::gpu::Gpu>) {
    // odd seeds: gate/up Q4 with f16 scales, even: with f32 scales
    for (seed, heads) in [(7, (4, 2, 16)), (8, (4, 2, 128)), (7, (16, 1, 16))] {
        let (cfg, w) = tiny_model_shaped(seed, true, RopeStyle::Interleaved, true, heads);
        let gm = GpuModel::new(gpu.clone(), &cfg, &w, 64, 16).unwrap();
        let prompt: Vec<u32> = (0..11).map(|i| (i * 29 + 3) % 320).collect();
        let alone: Vec<Vec<f32>> = prompt
            .iter()
            .enumerate()
            .map(|(i, &t)| {
                gm.set_tokens(&[t]);
                gpu_logits(&gm, &PassSpec { m: 1, n_past: i, tree: None, logits_rows: 0..1, ..Default::default() })
            })
            .collect();
        for m in [2, 3, 5, 8, 9, 11] {
            gm.set_tokens(&prompt[..m]);
            let batched =
                gpu_logits(&gm, &PassSpec { m, n_past: 0, tree: None, logits_rows: 0..m, ..Default::default() });
            for (i, alone) in alone.iter().enumerate().take(m) {
                let row = &batched[i * cfg.vocab..(i + 1) * cfg.vocab];
                assert!(
                    row.iter().zip(alone).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "heads {heads:?}: row {i} differs between M={m} and M=1"
                );
            }
        }
    }
}

/// The matmul and attention read the values every lane needs (x, q, scores) shared across a
/// subgroup where the device has subgroups and lane by lane where it has not; the arithmetic is
/// the same, so the logits are bit-identical, in every weight format and for prefill rows as well
/// as single tokens.
#[test]
fn forward_is_the_same_with_and_without_subgroups() {
    let (with, without) = (gpu(), gpu_without_features());
    assert!(!without.subgroups);
    if !with.subgroups {
        eprintln!("note: this adapter has no subgroups of 8+ lanes; both runs take the lane-by-lane path");
    }
    for (seed, q8, rope, bias, head_dim) in [
        (11, true, RopeStyle::Interleaved, false, 16),
        (12, false, RopeStyle::Neox, true, 32),
        (14, true, RopeStyle::Neox, false, 128),
    ] {
        let (cfg, w) = tiny_model_with_heads(seed, q8, rope, bias, head_dim);
        let prompt = [5u32, 17, 300, 42, 9, 250, 77];
        let logits = |g: &std::sync::Arc<augur::gpu::Gpu>| {
            let gm = GpuModel::new(g.clone(), &cfg, &w, 64, 16).unwrap();
            gm.set_tokens(&prompt);
            let spec = |m, n_past| PassSpec { m, n_past, tree: None, logits_rows: 0..m, ..Default::default() };
            let mut out = gpu_logits(&gm, &spec(prompt.len(), 0));
            gm.set_tokens(&[11]);
            out.extend(gpu_logits(&gm, &spec(1, prompt.len())));
            out
        };
        let (a, b) = (logits(&with), logits(&without));
        assert_eq!(a.len(), b.len());
        let differ = a.iter().zip(&b).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
        assert_eq!(differ, 0, "seed {seed}: {differ} of {} logits differ", a.len());
    }
}

/// Kernels are compiled without naga's loop counters (`Gpu::loop_bounds`); taking the counters
/// out must change no arithmetic: logits bit-identical to a device whose kernels keep them, for
/// passes of 1, 3 and 9 rows (the written-out one-row walk, the rolled one, a full block) over a
/// cached prefix, with Q8, Q4 and f16-paired Q4 weights, the LM head on every row. (One model
/// and three row blocks: the second device compiles every kernel it runs again.)
#[test]
fn kernels_without_loop_counters_give_the_same_bits() {
    let fast = gpu();
    assert!(!fast.loop_bounds, "AUGUR_LOOP_BOUNDS is set");
    let counted = augur::gpu::Gpu::shared(&augur::gpu::GpuOptions { loop_bounds: Some(true), ..Default::default() })
        .expect("a GPU adapter");
    assert!(counted.loop_bounds);
    // Q8 QKV, Q4 attention output, f16-paired Q4 gate/up (odd seeds), with QKV bias
    let (cfg, w) = tiny_model(31, true, RopeStyle::Neox, true);
    let prompt: Vec<u32> = (0..9).map(|i| (i * 53 + 7) % 320).collect();
    let logits = |gpu: &std::sync::Arc<augur::gpu::Gpu>| {
        let gm = GpuModel::new(gpu.clone(), &cfg, &w, 64, 16).unwrap();
        let mut out = Vec::new();
        let mut n_past = 0;
        for m in [1, 3, 9] {
            gm.set_tokens(&prompt[..m]);
            out.extend(gpu_logits(&gm, &PassSpec { m, n_past, logits_rows: 0..m, ..Default::default() }));
            n_past += m;
        }
        out
    };
    let (a, b) = (logits(&fast), logits(&counted));
    assert_eq!(a.len(), b.len());
    assert!(a.iter().all(|v| v.is_finite()) && a.iter().any(|&v| v != 0.0));
    let differ = a.iter().zip(&b).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
    assert_eq!(differ, 0, "{differ} of {} logits differ with loop counters", a.len());
}

/// The serial matmul reads x through a uniform binding in passes whose rows fit one and through
/// a storage binding otherwise; the arithmetic is the same, so the logits are bit-identical
/// whichever each matmul of a pass takes: all uniform, all storage, or a mix (a limit of 3 rows
/// of 64 inputs puts 1-3 row passes on uniform, the down projection's 96 inputs only 2).
#[test]
fn matmul_x_uniform_or_storage_gives_the_same_bits() {
    let gpu = gpu();
    assert_eq!(gpu.uniform_x, gpu.plan == augur::gpu::KernelPlan::Serial, "AUGUR_UNIFORM_X is set");
    if !gpu.uniform_x {
        eprintln!("note: this device runs the split kernels, which read x from storage only");
    }
    for (seed, q8) in [(31, true), (30, true), (32, false), (33, false)] {
        let (cfg, w) = tiny_model(seed, q8, RopeStyle::Neox, seed % 2 == 1);
        let prompt = [5u32, 17, 300, 42, 9, 250, 77];
        let logits = |limit: u64| {
            let mut gm = GpuModel::new(gpu.clone(), &cfg, &w, 64, 16).unwrap();
            gm.limit_uniform_x(limit);
            let mut out = Vec::new();
            for (n_past, m) in [(0, 3), (3, 4), (7, 1), (8, 2)] {
                gm.set_tokens(&prompt[n_past % 7..][..m]);
                out.extend(gpu_logits(&gm, &PassSpec { m, n_past, logits_rows: 0..m, ..Default::default() }));
            }
            // the LM head over its last row only: a pass's top row of x, not its row count, decides
            gm.set_tokens(&prompt[..5]);
            out.extend(gpu_logits(&gm, &PassSpec { m: 5, n_past: 10, logits_rows: 4..5, ..Default::default() }));
            out
        };
        let uniform = logits(u64::MAX);
        for (limit, what) in [(0, "storage"), (3 * 64 * 4, "mixed")] {
            let other = logits(limit);
            let differ = uniform.iter().zip(&other).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
            assert_eq!(differ, 0, "seed {seed}: {differ} of {} logits differ between uniform and {what}", other.len());
        }
    }
}

/// At the edge of the uniform binding: with 2048 hidden values, 8 rows fill the down
/// projection's 64 KiB of x exactly (its last vec4 the array's last) and 9 do not (storage).
/// Both passes match the CPU forward, and their common rows are bit-identical.
#[test]
fn matmul_x_at_the_uniform_limit_matches_cpu_reference() {
    let gpu = gpu();
    assert!(augur::gpu::kernels::uniform_x_fits(2048, 8) && !augur::gpu::kernels::uniform_x_fits(2048, 9));
    let (cfg, w) = tiny_model_wide(41, true, RopeStyle::Neox, false, (4, 2, 16), 2048);
    let prompt: Vec<u32> = (0..9).map(|i| (i * 37 + 11) % 320).collect();
    let mut cpu = CpuModel::new(&cfg, &w, 64);
    let want: Vec<Vec<f32>> = prompt.iter().map(|&t| cpu.step(t)).collect();
    let gm = GpuModel::new(gpu.clone(), &cfg, &w, 64, 16).unwrap();
    let mut passes = Vec::new();
    for m in [8, 9] {
        gm.set_tokens(&prompt[..m]);
        let got = gpu_logits(&gm, &PassSpec { m, n_past: 0, logits_rows: 0..m, ..Default::default() });
        for (i, want) in want.iter().enumerate().take(m) {
            let e = rel_l2(&got[i * cfg.vocab..(i + 1) * cfg.vocab], want);
            assert!(e < 1e-4, "{m}-row pass, row {i}: rel L2 {e}");
        }
        passes.push(got);
    }
    let common = 8 * cfg.vocab;
    assert!(
        passes[0][..common].iter().zip(&passes[1][..common]).all(|(a, b)| a.to_bits() == b.to_bits()),
        "rows 0..8 differ between the uniform (8-row) and storage (9-row) passes"
    );
}

/// Tree-masked attention: each node of a random token tree, verified in one pass, gets the
/// logits the CPU forward gives for the prefix followed by that node's root-to-node path. (Head
/// size 32: attention's subgroup path where the device has one; the next test takes the other.)
#[test]
fn tree_mask_attention_matches_path_reference() {
    for gpu in gpus_both_plans() {
        tree_mask_attention_matches_path_reference_on(&gpu);
    }
}

fn tree_mask_attention_matches_path_reference_on(gpu: &std::sync::Arc<augur::gpu::Gpu>) {
    let (cfg, w) = tiny_model_with_heads(11, false, RopeStyle::Neox, true, 32);
    let gm = GpuModel::new(gpu.clone(), &cfg, &w, 64, 32).unwrap();
    let mut rng = Rng(99);
    for trial in 0..3 {
        let prefix: Vec<u32> = (0..5).map(|_| (rng.next() % 320) as u32).collect();
        // random tree: node 0 is the root, every other node's parent comes before it
        let n = 6 + trial * 5;
        let parents: Vec<usize> = (0..n).map(|i| if i == 0 { usize::MAX } else { (rng.next() as usize) % i }).collect();
        let tokens: Vec<u32> = (0..n).map(|_| (rng.next() % 320) as u32).collect();
        let path = |i: usize| {
            let mut p = vec![i];
            while parents[*p.last().unwrap()] != usize::MAX {
                p.push(parents[*p.last().unwrap()]);
            }
            p.reverse();
            p
        };
        let mut masks = vec![[0u32; 2]; n];
        let mut positions = vec![0u32; n];
        for i in 0..n {
            let p = path(i);
            for &j in &p {
                masks[i][j / 32] |= 1 << (j % 32);
            }
            positions[i] = (prefix.len() + p.len() - 1) as u32;
        }
        gm.set_tokens(&prefix);
        gm.run(&PassSpec { m: prefix.len(), n_past: 0, tree: None, logits_rows: 0..0, ..Default::default() }).unwrap();
        gm.set_tokens(&tokens);
        let got = gpu_logits(
            &gm,
            &PassSpec {
                m: n,
                n_past: prefix.len(),
                tree: Some(augur::model::gpu::TreeRows {
                    base: prefix.len(),
                    masks,
                    positions,
                    parents: vec![u32::MAX; n],
                }),
                logits_rows: 0..n,
                ..Default::default()
            },
        );
        for i in 0..n {
            let mut cpu = CpuModel::new(&cfg, &w, 64);
            let mut want = Vec::new();
            for &t in prefix.iter().chain(path(i).iter().map(|&j| &tokens[j])) {
                want = cpu.step(t);
            }
            let e = rel_l2(&got[i * cfg.vocab..(i + 1) * cfg.vocab], &want);
            assert!(e < 1e-4, "trial {trial} node {i}: rel L2 {e}");
        }
    }
}

/// What makes speculation lossless: a tree node's logits are bit-identical to those plain
/// decoding gives the same tokens one at a time, for every node on a path of a branching tree,
/// after a prefix long enough (100 slots) that attention_split.wgsl deals several slots to each
/// lane and the tree's slots wrap round its 64 lanes.
#[test]
fn tree_rows_match_plain_decoding_bit_for_bit() {
    for gpu in gpus_both_plans() {
        let (cfg, w) = tiny_model_with_heads(17, true, RopeStyle::Neox, true, 32);
        let gm = GpuModel::new(gpu.clone(), &cfg, &w, 256, 16).unwrap();
        let mut rng = Rng(5);
        let prefix: Vec<u32> = (0..100).map(|_| (rng.next() % 320) as u32).collect();
        let prefill = |gm: &GpuModel| {
            for (i, chunk) in prefix.chunks(16).enumerate() {
                gm.set_tokens(chunk);
                let spec = PassSpec { m: chunk.len(), n_past: i * 16, logits_rows: 0..0, ..Default::default() };
                gm.run(&spec).unwrap();
            }
        };
        // a tree of 12 nodes: a chain 0-1-2-3-4 with side branches hung off it
        let parents = [usize::MAX, 0, 1, 2, 3, 0, 1, 1, 2, 5, 7, 3];
        let tokens: Vec<u32> = (0..parents.len()).map(|_| (rng.next() % 320) as u32).collect();
        let path = |i: usize| {
            let mut p = vec![i];
            while parents[*p.last().unwrap()] != usize::MAX {
                p.push(parents[*p.last().unwrap()]);
            }
            p.reverse();
            p
        };
        // the side branches sit between chain nodes, so the chain's slots have gaps
        let order = [0usize, 5, 1, 6, 7, 2, 9, 8, 3, 10, 11, 4];
        let row_of = |node: usize| order.iter().position(|&n| n == node).unwrap();
        let mut rows = augur::model::gpu::TreeRows { base: prefix.len(), ..Default::default() };
        for &node in &order {
            let mut mask = [0u32; 2];
            for j in path(node) {
                let r = row_of(j);
                mask[r / 32] |= 1 << (r % 32);
            }
            rows.masks.push(mask);
            rows.positions.push((prefix.len() + path(node).len() - 1) as u32);
            rows.parents.push(u32::MAX);
        }
        prefill(&gm);
        gm.set_tokens(&order.iter().map(|&n| tokens[n]).collect::<Vec<u32>>());
        let n = order.len();
        let spec = PassSpec { m: n, n_past: prefix.len(), tree: Some(rows), logits_rows: 0..n, ..Default::default() };
        let tree = gpu_logits(&gm, &spec);
        // plain decoding of the chain 0-1-2-3-4 after the same prefix
        prefill(&gm);
        for (depth, node) in path(4).into_iter().enumerate() {
            gm.set_tokens(&[tokens[node]]);
            let spec = PassSpec { m: 1, n_past: prefix.len() + depth, logits_rows: 0..1, ..Default::default() };
            let plain = gpu_logits(&gm, &spec);
            let r = row_of(node);
            let row = &tree[r * cfg.vocab..(r + 1) * cfg.vocab];
            let differ = row.iter().zip(&plain).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
            assert_eq!(differ, 0, "{:?} kernels: node {node} at depth {depth}: {differ} logits differ", gpu.plan);
        }
    }
}

/// A draft model grows its tree over several passes above one base slot: each level's rows see
/// the committed prefix and the tree slots of their ancestors written by earlier passes. Every
/// node gets the logits the CPU forward gives for the prefix followed by its path.
#[test]
fn tree_grown_over_several_passes_matches_path_reference() {
    for gpu in gpus_both_plans() {
        tree_grown_over_several_passes_matches_path_reference_on(&gpu);
    }
}

fn tree_grown_over_several_passes_matches_path_reference_on(gpu: &std::sync::Arc<augur::gpu::Gpu>) {
    let (cfg, w) = tiny_model(13, true, RopeStyle::Interleaved, false);
    let gm = GpuModel::new(gpu.clone(), &cfg, &w, 64, 16).unwrap();
    let mut rng = Rng(31);
    let prefix: Vec<u32> = (0..6).map(|_| (rng.next() % 320) as u32).collect();
    gm.set_tokens(&prefix);
    gm.run(&PassSpec { m: prefix.len(), n_past: 0, tree: None, logits_rows: 0..0, ..Default::default() }).unwrap();
    let base = prefix.len();
    // nodes: (token, parent node, tree slot, mask); level 0 hangs off the last prefix token
    let mut paths: Vec<Vec<u32>> = Vec::new();
    let mut masks: Vec<[u32; 2]> = Vec::new();
    let mut prev_level: Vec<usize> = Vec::new();
    for (level, width) in [3usize, 2, 4].into_iter().enumerate() {
        let first = paths.len();
        let mut rows = augur::model::gpu::TreeRows { base, ..Default::default() };
        let mut tokens = Vec::new();
        for r in 0..width {
            let slot = first + r;
            let (mut path, mut mask) = match prev_level.is_empty() {
                true => (Vec::new(), [0u32; 2]),
                false => {
                    let p = prev_level[(rng.next() as usize) % prev_level.len()];
                    (paths[p].clone(), masks[p])
                }
            };
            let t = (rng.next() % 320) as u32;
            path.push(t);
            mask[slot / 32] |= 1 << (slot % 32);
            paths.push(path);
            masks.push(mask);
            tokens.push(t);
            rows.masks.push(mask);
            rows.positions.push((base + level) as u32);
            rows.parents.push(u32::MAX);
        }
        gm.set_tokens(&tokens);
        let got = gpu_logits(
            &gm,
            &PassSpec { m: width, n_past: base + first, tree: Some(rows), logits_rows: 0..width, ..Default::default() },
        );
        for r in 0..width {
            let mut cpu = CpuModel::new(&cfg, &w, 64);
            let mut want = Vec::new();
            for &t in prefix.iter().chain(&paths[first + r]) {
                want = cpu.step(t);
            }
            let e = rel_l2(&got[r * cfg.vocab..(r + 1) * cfg.vocab], &want);
            assert!(e < 1e-4, "level {level} row {r}: rel L2 {e}");
        }
        prev_level = (first..first + width).collect();
    }
}

/// topk.wgsl against a CPU sort on random rows (with ties, which go to the lower id): the same
/// ids in the same order, and softmax probabilities of the whole row.
#[test]
fn topk_matches_cpu_reference() {
    use augur::gpu::kernels::{CANDIDATES, Kernels, TopkParams};
    let gpu = gpu();
    let mut rng = Rng(77);
    for vocab in [300usize, 49152, 151936] {
        let rows = 3;
        let mut logits = rng.vec(rows * vocab, 6.0);
        // ties among the top: copy row maxima onto higher ids
        for r in 0..rows {
            let row = &mut logits[r * vocab..(r + 1) * vocab];
            let best = argmax(row) as usize;
            let v = row[best];
            row[vocab - 1] = v;
            row[best / 2] = v;
        }
        let pipeline = Kernels::default().topk(&gpu);
        let pass = gpu.uniform("pass", &PassUniform { m: rows as u32, lm_rows: rows as u32, ..Default::default() });
        let prm = gpu.uniform("p", &TopkParams { vocab: vocab as u32, row_stride: vocab as u32, _p: [0; 2] });
        let lb = gpu.storage("logits", &logits);
        let out = gpu.storage_zeroed("out", (rows * CANDIDATES * 8) as u64);
        let bind = gpu.bind(&pipeline, &[&pass, &prm, &lb, &out]);
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        {
            let mut cp = enc.begin_compute_pass(&Default::default());
            cp.set_pipeline(&pipeline.pipeline);
            cp.set_bind_group(0, &bind, &[]);
            cp.dispatch_workgroups(rows as u32, 1, 1);
        }
        gpu.queue.submit([enc.finish()]);
        let got: Vec<u32> = bytemuck::pod_collect_to_vec(&gpu.read(&out, (rows * CANDIDATES * 8) as u64));
        for r in 0..rows {
            let row = &logits[r * vocab..(r + 1) * vocab];
            let mut ids: Vec<usize> = (0..vocab).collect();
            ids.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            let mx = row[ids[0]] as f64;
            let z: f64 = row.iter().map(|&v| (v as f64 - mx).exp()).sum();
            for i in 0..CANDIDATES {
                let (id, p) = (got[(r * CANDIDATES + i) * 2], f32::from_bits(got[(r * CANDIDATES + i) * 2 + 1]));
                assert_eq!(id as usize, ids[i], "vocab {vocab} row {r} rank {i}");
                let want = ((row[ids[i]] as f64 - mx).exp() / z) as f32;
                assert!((p - want).abs() <= 1e-4 * want.max(1e-3), "vocab {vocab} row {r} rank {i}: p {p} vs {want}");
            }
        }
    }
}

/// Runs the acceptance kernel alone on one row of logits (a plain pass: no drafts), which is
/// how every token is sampled.
struct SamplerRig {
    gpu: std::sync::Arc<augur::gpu::Gpu>,
    pipeline: std::sync::Arc<augur::gpu::Pipeline>,
    row_best: std::sync::Arc<augur::gpu::Pipeline>,
    pass: wgpu::Buffer,
    tokens: wgpu::Buffer,
    result: wgpu::Buffer,
    bind: wgpu::BindGroup,
    row_best_bind: wgpu::BindGroup,
    _keep: Vec<wgpu::Buffer>,
}

impl SamplerRig {
    fn new(logits: &[f32]) -> SamplerRig {
        let gpu = gpu();
        let kernels = augur::gpu::kernels::Kernels::default();
        let (pipeline, row_best) = (kernels.accept(&gpu, false), kernels.row_best(&gpu));
        let pass = gpu.uniform("pass", &PassUniform::default());
        let prm =
            gpu.uniform("p", &AcceptParams { vocab: logits.len() as u32, row_stride: logits.len() as u32, _p: [0; 2] });
        let lb = gpu.storage("logits", logits);
        let parents = gpu.storage_zeroed("parents", 16);
        let tokens = gpu.storage_zeroed("tokens", 16);
        let result = gpu.storage_zeroed("result", (augur::model::gpu::RESULT_LEN * 4) as u64);
        let best = gpu.storage_zeroed("best", 8);
        let binds = [&pass, &prm, &lb, &parents, &tokens, &result, &best];
        let (bind, row_best_bind) = (gpu.bind(&pipeline, &binds), gpu.bind(&row_best, &binds));
        SamplerRig {
            gpu,
            pipeline,
            row_best,
            pass,
            tokens,
            result,
            bind,
            row_best_bind,
            _keep: vec![prm, lb, parents, best],
        }
    }
    fn sample(&self, temperature: f32, top_k: u32, top_p: f32, seed: u32, draw: u32) -> u32 {
        self.sample_path(temperature, top_k, top_p, seed, draw).0
    }
    /// The token, and whether the filters' threshold took the bisection over the whole vocabulary.
    fn sample_path(&self, temperature: f32, top_k: u32, top_p: f32, seed: u32, draw: u32) -> (u32, bool) {
        let u = PassUniform { m: 1, lm_rows: 1, temperature, top_k, top_p, seed, draw, ..Default::default() };
        self.gpu.queue.write_buffer(&self.pass, 0, bytemuck::bytes_of(&u));
        let mut enc = self.gpu.device.create_command_encoder(&Default::default());
        {
            let mut cp = enc.begin_compute_pass(&Default::default());
            cp.set_pipeline(&self.row_best.pipeline);
            cp.set_bind_group(0, &self.row_best_bind, &[]);
            cp.dispatch_workgroups(1, 1, 1);
            cp.set_pipeline(&self.pipeline.pipeline);
            cp.set_bind_group(0, &self.bind, &[]);
            cp.dispatch_workgroups(1, 1, 1);
        }
        self.gpu.queue.submit([enc.finish()]);
        let r: Vec<u32> =
            bytemuck::pod_collect_to_vec(&self.gpu.read(&self.result, (augur::model::gpu::RESULT_LEN * 4) as u64));
        let b = u32::from_le_bytes(self.gpu.read(&self.tokens, 4).try_into().unwrap());
        assert_eq!(r[0], 0, "no drafts, nothing accepted");
        assert_eq!(r[augur::model::gpu::RESULT_BONUS], b, "chosen and next-input token differ");
        (b, r[augur::model::gpu::RESULT_SLOW_FILTERS] != 0)
    }
}

#[test]
fn sampler_greedy_is_argmax() {
    let mut rng = Rng(5);
    for _ in 0..5 {
        let logits = rng.vec(5000, 8.0);
        let rig = SamplerRig::new(&logits);
        assert_eq!(rig.sample(0.0, 0, 1.0, 1, 0), argmax(&logits));
    }
}

/// With temperature/top-k/top-p the kernel draws the CPU twin's token (the kept token with the
/// largest logit / T plus the same Gumbel noise; f32 against f64 may part on a near tie), and
/// never a token the filters drop. (`sampler`'s own test checks that the twin's draws follow the
/// filtered softmax.)
#[test]
fn sampler_matches_cpu_twin() {
    let mut rng = Rng(17);
    let logits = rng.vec(3000, 4.0);
    let rig = SamplerRig::new(&logits);
    for (temp, top_k, top_p) in [(1.0f32, 0u32, 1.0f32), (0.7, 40, 1.0), (1.3, 0, 0.9), (0.8, 20, 0.5)] {
        let p = augur::sampler::distribution(&logits, temp, top_k, top_p);
        let mut agree = 0;
        let mut distinct = std::collections::HashSet::new();
        for draw in 0..60 {
            let got = rig.sample(temp, top_k, top_p, 1234, draw) as usize;
            assert!(p[got] > 0.0, "temp {temp} top_k {top_k} top_p {top_p}: kernel chose dropped token {got}");
            agree += (got as u32 == augur::sampler::sample_cpu(&logits, temp, top_k, top_p, 1234, draw)) as u32;
            distinct.insert(got);
        }
        assert!(agree >= 58, "only {agree}/60 draws agree with the CPU twin");
        assert!(distinct.len() >= 5, "temp {temp}: 60 draws gave only {} tokens", distinct.len());
    }
}

/// The filters' threshold (top-k's k-th value, top-p's smallest top set) comes from each lane's 8
/// best tokens in one pass wherever the kept set lies among them: there the kernel's draw is the
/// CPU twin's exactly (the twin sorts the whole row), ties at the threshold kept, rows with fewer
/// tokens than candidates included. A kept set reaching below the candidates (top-p over a flat
/// row) takes the bisection over the whole vocabulary and still never draws a dropped token.
#[test]
fn sampling_filters_find_their_threshold_among_candidates() {
    use augur::sampler::{distribution, sample_cpu};
    let mut rng = Rng(23);
    // SmolLM2's vocabulary size, 20 tokens well above the rest
    let mut peaked = rng.vec(49152, 4.0);
    for i in 0..20 {
        peaked[i * 2411 + 7] += 10.0 + i as f32 * 0.25;
    }
    // logits on a grid of 0.5: the k-th value and top-p's last one are tied with others
    let tied: Vec<f32> = rng.vec(2000, 6.0).iter().map(|v| (v * 2.0).round() / 2.0).collect();
    // fewer tokens than the 512 candidates
    let small = rng.vec(300, 3.0);
    type Filters = (f32, u32, f32);
    let cases: [(&str, &Vec<f32>, Vec<Filters>); 3] = [
        ("peaked", &peaked, vec![(0.7, 40, 1.0), (0.7, 0, 0.9), (1.0, 40, 0.8), (1.5, 5, 1.0)]),
        ("tied", &tied, vec![(1.0, 10, 1.0), (1.0, 0, 0.3), (0.5, 7, 0.95)]),
        ("small", &small, vec![(1.0, 50, 1.0), (1.0, 0, 0.9), (2.0, 299, 0.99)]),
    ];
    for (name, logits, filters) in cases {
        let rig = SamplerRig::new(logits);
        for (t, k, p) in filters {
            let mut distinct = std::collections::HashSet::new();
            for draw in 0..30 {
                let (got, bisected) = rig.sample_path(t, k, p, 99, draw);
                assert!(!bisected, "{name} T {t} top-k {k} top-p {p}: the kept set lies among the candidates");
                assert_eq!(got, sample_cpu(logits, t, k, p, 99, draw), "{name} T {t} top-k {k} top-p {p} draw {draw}");
                distinct.insert(got);
            }
            assert!(distinct.len() >= 3, "{name} T {t} top-k {k} top-p {p}: 30 draws gave {distinct:?}");
        }
    }
    let flat = rng.vec(3000, 4.0);
    let rig = SamplerRig::new(&flat);
    let kept = distribution(&flat, 1.3, 0, 0.9);
    for draw in 0..10 {
        let (got, bisected) = rig.sample_path(1.3, 0, 0.9, 99, draw);
        assert!(bisected, "top-p 0.9 at T 1.3 keeps most of a flat row: beyond the candidates");
        assert!(kept[got as usize] > 0.0, "drew dropped token {got}");
    }
}

/// The controller's cost calibration on a real device: a price for every calibrated size, never
/// falling as rows are added, and a non-negative price per row and key of context.
#[test]
fn cost_calibration_is_a_non_decreasing_curve() {
    let gpu = gpu();
    let (cfg, w) = tiny_model(21, true, RopeStyle::Neox, true);
    let gm = GpuModel::new(gpu.clone(), &cfg, &w, 256, 16).unwrap();
    let cost = augur::spec::cost::calibrate(&gm, Default::default()).unwrap();
    let sizes: Vec<usize> = cost.curve.iter().map(|p| p.0).collect();
    assert_eq!(sizes, augur::spec::cost::CALIBRATION_ROWS.to_vec());
    assert!(cost.curve[0].1 > 0.0, "{:?}", cost.curve);
    assert!(cost.curve.windows(2).all(|p| p[1].1 >= p[0].1), "{:?}", cost.curve);
    assert!(cost.per_row_key_ms >= 0.0 && cost.per_row_key_ms.is_finite());
}

/// Row blocks compile on first use: a fresh device has none of a kernel's, a pass of one row
/// compiles only its block, `ready_rows` counts the sizes every kernel has from one row up, and
/// the background build finishes them all.
#[test]
fn row_blocks_compile_when_first_used() {
    use augur::gpu::kernels::{ALL_ROW_BLOCKS, Epilogue, Format, MatmulKind, ROW_BLOCKS};
    setup_env();
    // a device of its own, so that no other test has compiled anything on it
    let gpu = augur::gpu::Gpu::new(&augur::gpu::GpuOptions::default()).unwrap();
    let kind = MatmulKind {
        format: Format::Q4,
        bias: false,
        norm: false,
        epilogue: Epilogue::Store,
        head_dim: 0,
        workgroup: 8,
        split: 1,
        uniform_x: false,
    };
    let p = gpu.kernels.matmul(&gpu, kind, ALL_ROW_BLOCKS);
    assert_eq!(gpu.kernels.ready_rows(), 0, "nothing is compiled before a pass needs it");
    p.for_rows(1);
    assert_eq!(gpu.kernels.ready_rows(), 1);
    p.for_rows(4);
    assert_eq!(gpu.kernels.ready_rows(), 1, "2 and 3 rows take the 3-row block, not compiled yet, so they wait");
    // matmul.wgsl has no 2-row block (MATMUL_ROW_BLOCKS): a pass of 2 rows compiles the 3-row one
    p.for_rows(2);
    assert_eq!(gpu.kernels.ready_rows(), 4);
    let all_built = || {
        gpu.kernels.build_row_blocks_in_background();
        let t0 = std::time::Instant::now();
        while gpu.kernels.ready_rows() < *ROW_BLOCKS.last().unwrap() {
            assert!(t0.elapsed().as_secs() < 300, "the background build stalled at {}", gpu.kernels.ready_rows());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    all_built();
    // a kernel made afterwards (another model on the device) is compiled by the next call
    gpu.kernels.matmul(&gpu, MatmulKind { epilogue: Epilogue::Add, ..kind }, ALL_ROW_BLOCKS);
    assert_eq!(gpu.kernels.ready_rows(), 0);
    all_built();
}

/// Q4 weights go up with their scales and offsets as f16 pairs (one load a block) only when every
/// one of them is an f16 value, so that no weight changes; the tiny models above take both.
#[test]
fn q4_scales_that_are_f16_values_go_up_as_pairs() {
    use augur::gpu::kernels::Format;
    use augur::model::gpu::GpuMatrix;
    let mut rng = Rng(3);
    assert_eq!(GpuMatrix::best_format(&random_matrix_of(&mut rng, 64, 32, Kind::Q4Half)), Format::Q4Half);
    assert_eq!(GpuMatrix::best_format(&random_matrix_of(&mut rng, 64, 32, Kind::Q4)), Format::Q4);
    // one scale that is not an f16 value keeps the whole matrix's in f32
    let mut m = random_matrix_of(&mut rng, 64, 32, Kind::Q4Half);
    if let augur::model::weights::MatData::Q8 { scale, .. } = &mut m.data {
        scale[5] = 0.1;
    }
    assert_eq!(GpuMatrix::best_format(&m), Format::Q4);
    assert_eq!(GpuMatrix::best_format(&random_matrix_of(&mut rng, 64, 32, Kind::Q8)), Format::Q8);
    for seed in [7, 8] {
        let (_, w) = tiny_model(seed, true, RopeStyle::Neox, false);
        let want = if seed % 2 == 1 { Format::Q4Half } else { Format::Q4 };
        assert_eq!(GpuMatrix::best_format(&w.layers[0].gate_up), want, "seed {seed}");
    }
}
