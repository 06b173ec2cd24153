//! The attention dispatch alone against the rows of a pass (M = 1..9) at
//! one context length, for a model's head shape, three rounds in one process: the kernel-level
//! view of what attention adds to a verification pass. Inputs are random; nothing is checked.
//!
//!     cargo run --release --example attn_curve -- 9 3 64 320 20   # HEADS KV_HEADS HEAD_DIM CONTEXT REPS
use augur::gpu::{Gpu, GpuOptions};
use augur::model::config::{Config, RopeStyle};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg =
        |i: usize, default: &str| -> usize { args.get(i).map_or(default, |s| s.as_str()).parse().expect("a number") };
    let cfg = Config {
        arch: "bench".into(),
        dim: 0,
        n_layers: 1,
        n_heads: arg(1, "9"),
        n_kv_heads: arg(2, "3"),
        head_dim: arg(3, "64"),
        ffn_dim: 0,
        vocab: 0,
        rms_eps: 1e-5,
        rope_base: 1e4,
        rope: RopeStyle::Neox,
        qkv_bias: false,
        tied_output: false,
        train_ctx: 0,
    };
    let (ctx, reps) = (arg(4, "320"), arg(5, "20"));
    let gpu = Gpu::new(&GpuOptions::default()).expect("a GPU adapter");
    for round in 0..3 {
        let mut line = format!("heads {}/{} x {} ctx {ctx} round {round}:", cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
        for rows in 1..=9usize {
            let ms = augur::model::gpu::bench_attention(&gpu, &cfg, ctx, rows, reps);
            line += &format!(" M{rows} {ms:.3}");
        }
        println!("{line}");
    }
}
