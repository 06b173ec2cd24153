use augur::model::gpu::{GpuModel, PassSpec, SampleSpec};
fn main() {
    let path = std::env::args().nth(1).unwrap();
    let m = augur::model::LoadedModel::load(std::path::Path::new(&path)).unwrap();
    let prompt = std::env::args().nth(2).unwrap_or("Once upon a time,".into());
    let ids = m.tokenizer.encode(&prompt).unwrap();
    let gpu = augur::gpu::Gpu::shared(&Default::default()).unwrap();
    println!("{}", gpu.describe());
    let t = std::time::Instant::now();
    let gm = GpuModel::new(gpu.clone(), &m, 512, 16).unwrap();
    println!("upload {:?}", t.elapsed());
    gm.set_tokens(&ids);
    let spec = PassSpec { m: ids.len(), n_past: 0, tree: None, logits_rows: ids.len()-1..ids.len(), sample: Some(SampleSpec{ out_index: 0, ..Default::default()}) };
    let t = std::time::Instant::now();
    gm.run(&spec).unwrap();
    println!("prefill {:?}", t.elapsed());
    let lg = gm.read_logits(1);
    let mut cpu = augur::model::cpu::CpuModel::new(&m.config, &m.weights, 256);
    let mut cl = vec![];
    for &t in &ids { cl = cpu.step(t); }
    let num: f32 = lg.iter().zip(&cl).map(|(a,b)| (a-b)*(a-b)).sum::<f32>().sqrt();
    let den: f32 = cl.iter().map(|b| b*b).sum::<f32>().sqrt();
    println!("rel l2 {} argmax {} {}", num/den, augur::model::cpu::argmax(&lg), augur::model::cpu::argmax(&cl));
    let mut out = vec![];
    let mut n_past = ids.len();
    let t = std::time::Instant::now();
    for i in 0..32 {
        let spec = PassSpec { m: 1, n_past, tree: None, logits_rows: 0..1, sample: Some(SampleSpec{ out_index: i, ..Default::default()}) };
        gm.run(&spec).unwrap();
        n_past += 1;
    }
    let dt = t.elapsed();
    let s: Vec<u32> = bytemuck::pod_collect_to_vec(&gpu.read(&gm.sampled, 4*33));
    out.extend_from_slice(&s[..33]);
    println!("decode {:?} per tok {:?}", dt, dt/32);
    println!("{:?}\n{}", out, m.tokenizer.decode(&out));
}
