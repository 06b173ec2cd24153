//! Sampled speculation keeps the target's distribution. With a fixed context on a small random
//! model (temperature 1, top-k 8), thousands of seeded runs draw the first three tokens plainly
//! and with speculation (a deterministic tree with siblings and a child, and a probabilistic
//! drafter that samples its proposals); a chi-square test of homogeneity at significance 0.001
//! must not tell them apart, and with equal seeds the tokens are plain decoding's. A deliberately
//! broken rule (accept any kept draft) must be caught.

mod common;
use augur::model::config::RopeStyle;
use augur::model::cpu::CpuModel;
use augur::model::gpu::{GpuModel, PassSpec, RESULT_BONUS, RESULT_LEN, RESULT_TOKENS, Sampling};
use augur::spec::{Drafter, TokenTree};
use common::*;
use std::collections::HashMap;

const CONTEXT: [u32; 3] = [5, 17, 42];
const RUNS: u32 = 3000;

#[derive(Clone, Copy, PartialEq)]
enum Drafts {
    None,
    /// Siblings: the reference's top 3 after t1; under the first, the reference's top token.
    FixedTree,
    /// Two siblings sampled from a flattened reference distribution with the drafter's own RNG.
    Sampled,
}

struct Rig {
    gm: GpuModel,
    /// reference top tokens after (context, t1) and after (context, t1, top1)
    tops: HashMap<u32, (Vec<u32>, u32, Vec<f32>)>,
    /// Drafted tokens accepted so far (the test must exercise acceptance, not only rejection).
    accepted: std::cell::Cell<usize>,
}

fn read_result(gm: &GpuModel) -> Vec<u32> {
    bytemuck::pod_collect_to_vec(&gm.gpu.read(&gm.result, (RESULT_LEN * 4) as u64))
}

impl Rig {
    fn new() -> Rig {
        let (cfg, w) = tiny_model(21, true, RopeStyle::Neox, true);
        let gm = GpuModel::new(gpu(), &cfg, &w, 32, 16).unwrap();
        // reference predictions for every possible t1 (the drafter's knowledge, fixed up front)
        let mut tops = HashMap::new();
        for t1 in 0..cfg.vocab as u32 {
            let mut cpu = CpuModel::new(&cfg, &w, 32);
            let mut l = Vec::new();
            for &t in CONTEXT.iter().chain([t1].iter()) {
                l = cpu.step(t);
            }
            let mut order: Vec<u32> = (0..cfg.vocab as u32).collect();
            order.sort_by(|&a, &b| l[b as usize].partial_cmp(&l[a as usize]).unwrap());
            let l2 = cpu.step(order[0]);
            let next = augur::model::cpu::argmax(&l2);
            tops.insert(t1, (order[..3].to_vec(), next, l));
        }
        Rig { gm, tops, accepted: std::cell::Cell::new(0) }
    }

    /// The first three tokens after CONTEXT for one seed.
    fn run(&self, seed: u32, drafts: Drafts) -> [u32; 3] {
        let s = |draw| Sampling { temperature: 1.0, top_k: 8, top_p: 1.0, seed, draw };
        let gm = &self.gm;
        gm.set_tokens(&CONTEXT);
        let n = CONTEXT.len();
        gm.run(&PassSpec {
            m: n,
            n_past: 0,
            tree: None,
            logits_rows: n - 1..n,
            accept: Some(s(0)),
            ..Default::default()
        })
        .unwrap();
        let t1 = read_result(gm)[RESULT_BONUS];
        let mut out = vec![t1];
        let mut n_past = n;
        while out.len() < 3 {
            let root = *out.last().unwrap();
            let mut tree = TokenTree::default();
            if drafts != Drafts::None && out.len() == 1 {
                let (top3, next, logits) = &self.tops[&root];
                match drafts {
                    Drafts::FixedTree => {
                        let a = tree.push(None, top3[0], 1.0, Drafter::Draft);
                        tree.push(None, top3[1], 1.0, Drafter::Draft);
                        tree.push(None, top3[2], 1.0, Drafter::Draft);
                        tree.push(Some(a), *next, 1.0, Drafter::Draft);
                    }
                    Drafts::Sampled => {
                        // q = softmax(logits / 0.5), sampled with the drafter's own generator
                        let mut rng = Rng(0x5eed ^ (seed as u64 * 7919 + 1));
                        let mx = logits.iter().cloned().fold(f32::MIN, f32::max) as f64;
                        let q: Vec<f64> = logits.iter().map(|&l| ((l as f64 - mx) / 0.5).exp()).collect();
                        let total: f64 = q.iter().sum();
                        for _ in 0..2 {
                            let mut u = (rng.next() >> 11) as f64 / (1u64 << 53) as f64 * total;
                            let mut pick = 0;
                            for (i, &qi) in q.iter().enumerate() {
                                pick = i;
                                if u < qi {
                                    break;
                                }
                                u -= qi;
                            }
                            tree.push(None, pick as u32, (q[pick] / total) as f32, Drafter::Draft);
                        }
                    }
                    Drafts::None => {}
                }
            }
            let mut input = vec![root];
            input.extend(tree.nodes.iter().map(|x| x.token));
            let m = input.len();
            gm.set_tokens(&input);
            let branches = tree.nodes.iter().enumerate().any(|(i, x)| x.parent != i.checked_sub(1));
            gm.run(&PassSpec {
                m,
                n_past,
                tree: Some(tree.rows(n_past)),
                logits_rows: 0..m,
                // the root samples the token with index out.len()
                accept: Some(s(out.len() as u32)),
                compact: branches,
                coupled: None,
            })
            .unwrap();
            let r = read_result(gm);
            let k = r[0] as usize;
            self.accepted.set(self.accepted.get() + k);
            out.extend_from_slice(&r[RESULT_TOKENS..RESULT_TOKENS + k]);
            out.push(r[RESULT_BONUS]);
            n_past += 1 + k;
        }
        [out[0], out[1], out[2]]
    }
}

/// Chi-square statistic of homogeneity between two samples, and its degrees of freedom; cells
/// expected below 5 in either sample are pooled.
fn chi_square(a: &HashMap<Vec<u32>, u32>, b: &HashMap<Vec<u32>, u32>) -> (f64, usize) {
    let (na, nb) = (a.values().sum::<u32>() as f64, b.values().sum::<u32>() as f64);
    let mut keys: Vec<&Vec<u32>> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut cells: Vec<(f64, f64)> = Vec::new();
    let mut pooled = (0.0, 0.0);
    for k in keys {
        let (x, y) = (*a.get(k).unwrap_or(&0) as f64, *b.get(k).unwrap_or(&0) as f64);
        let t = x + y;
        if t * na.min(nb) / (na + nb) < 5.0 {
            pooled.0 += x;
            pooled.1 += y;
        } else {
            cells.push((x, y));
        }
    }
    if pooled.0 + pooled.1 > 0.0 {
        cells.push(pooled);
    }
    let stat = cells
        .iter()
        .map(|&(x, y)| {
            let t = x + y;
            let (ea, eb) = (t * na / (na + nb), t * nb / (na + nb));
            (x - ea).powi(2) / ea + (y - eb).powi(2) / eb
        })
        .sum();
    (stat, cells.len().saturating_sub(1))
}

/// Upper 0.001 quantile of chi-square with `dof` degrees of freedom (Wilson-Hilferty).
fn critical_0001(dof: usize) -> f64 {
    let k = dof as f64;
    let z = 3.090_232; // standard normal 0.999 quantile
    k * (1.0 - 2.0 / (9.0 * k) + z * (2.0 / (9.0 * k)).sqrt()).powi(3)
}

fn histogram(
    rig: &Rig,
    drafts: Drafts,
    seeds: std::ops::Range<u32>,
    key: impl Fn(&[u32; 3]) -> Vec<u32>,
) -> HashMap<Vec<u32>, u32> {
    let mut h = HashMap::new();
    for seed in seeds {
        *h.entry(key(&rig.run(seed, drafts))).or_insert(0) += 1;
    }
    h
}

#[test]
fn speculative_sampling_keeps_the_distribution_and_a_broken_rule_is_caught() {
    let mut rig = Rig::new();
    let plain = histogram(&rig, Drafts::None, 0..RUNS, |t| t.to_vec());
    // the context is not degenerate: several first tokens and many sequences occur
    assert!(plain.keys().map(|k| k[0]).collect::<std::collections::HashSet<_>>().len() >= 4);
    for (name, drafts) in [("fixed tree with siblings", Drafts::FixedTree), ("sampled drafts", Drafts::Sampled)] {
        // other seeds than the plain runs: the samples must be independent
        rig.accepted.set(0);
        let spec = histogram(&rig, drafts, RUNS..2 * RUNS, |t| t.to_vec());
        let accepted = rig.accepted.get();
        assert!(accepted > RUNS as usize / 10, "{name}: only {accepted} drafts accepted in {RUNS} runs");
        for (what, key) in [("first two tokens", 2usize), ("all three tokens", 3)] {
            let pa: HashMap<Vec<u32>, u32> = fold(&plain, key);
            let pb: HashMap<Vec<u32>, u32> = fold(&spec, key);
            let (stat, dof) = chi_square(&pa, &pb);
            assert!(dof >= 5, "{name}: too few cells ({dof}) for a meaningful test");
            eprintln!("{name}, {what}: chi-square {stat:.1}, {dof} dof, critical {:.1}", critical_0001(dof));
            assert!(
                stat < critical_0001(dof),
                "{name}, {what}: chi-square {stat:.1} with {dof} dof exceeds {:.1}",
                critical_0001(dof)
            );
        }
    }
    // more: with the same seed, speculation gives plain decoding's very tokens, since each
    // position draws with its own noise whatever pass samples it
    for drafts in [Drafts::FixedTree, Drafts::Sampled] {
        for seed in 0..100 {
            assert_eq!(rig.run(seed, drafts), rig.run(seed, Drafts::None), "seed {seed}");
        }
    }
    // the broken rule shifts mass to drafted tokens: the same test must reject it
    rig.gm.use_broken_acceptance_rule();
    let broken = histogram(&rig, Drafts::FixedTree, 2 * RUNS..3 * RUNS, |t| t.to_vec());
    let (stat, dof) = chi_square(&fold(&plain, 2), &fold(&broken, 2));
    eprintln!("broken rule: chi-square {stat:.1}, {dof} dof, critical {:.1}", critical_0001(dof));
    assert!(stat > critical_0001(dof), "the broken rule went unnoticed: chi-square {stat:.1} with {dof} dof");
}

fn fold(h: &HashMap<Vec<u32>, u32>, len: usize) -> HashMap<Vec<u32>, u32> {
    let mut out = HashMap::new();
    for (k, v) in h {
        *out.entry(k[..len].to_vec()).or_insert(0) += v;
    }
    out
}
