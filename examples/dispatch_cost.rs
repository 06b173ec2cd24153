//! What a dispatch costs on this device whatever it computes: N dispatches of a trivial kernel
//! (1, 2 or 8 workgroups of 8 lanes) in one compute pass, one submission, best of 15. On
//! lavapipe most of it is its thread pool waking and waiting (futexes), 15-40 us a dispatch on
//! the 2-core development machine, which is why the norms live inside the matmuls.
//!
//!     cargo run --release --example dispatch_cost
use augur::gpu::{Bind, Gpu, GpuOptions};
use std::time::Instant;

const SRC: &str = r#"
@group(0) @binding(0) var<storage, read_write> buf: array<f32>;
@compute @workgroup_size(8)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    buf[id.x] = buf[id.x] * 0.5 + 1.0;
}
"#;

fn main() {
    let gpu = Gpu::new(&GpuOptions::default()).expect("a GPU adapter");
    let p = gpu.pipeline("t", SRC, "main", &[Bind::ReadWrite], &[]);
    let data: Vec<f32> = (0..4096).map(|i| i as f32).collect();
    let b = gpu.storage("b", &data);
    let bind = gpu.bind(&p, &[&b]);
    for wgs in [1u32, 2, 8] {
        for n in [1usize, 10, 100, 300] {
            let mut best = f64::MAX;
            let mut best_enc = f64::MAX;
            for _ in 0..15 {
                let t = Instant::now();
                let mut enc = gpu.device.create_command_encoder(&Default::default());
                {
                    let mut pass = enc.begin_compute_pass(&Default::default());
                    pass.set_pipeline(&p.pipeline);
                    pass.set_bind_group(0, &bind, &[]);
                    for _ in 0..n {
                        pass.dispatch_workgroups(wgs, 1, 1);
                    }
                }
                let cb = enc.finish();
                best_enc = best_enc.min(t.elapsed().as_secs_f64() * 1e3);
                gpu.queue.submit([cb]);
                gpu.wait().unwrap();
                best = best.min(t.elapsed().as_secs_f64() * 1e3);
            }
            println!(
                "workgroups {wgs} dispatches {n}: best {best:.3} ms, {:.1} us a dispatch (encoding {:.1} us)",
                best * 1e3 / n as f64,
                best_enc * 1e3 / n as f64
            );
        }
    }
}
