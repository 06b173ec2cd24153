//! The least an app needs: load a model, stream a generation, read the statistics.
//! cargo run --release --example embed -- <model.gguf or catalog id> "prompt"

use augur::engine::{Engine, EngineOptions, GenerateParams};
use std::io::Write;

fn main() -> augur::Result<()> {
    let mut args = std::env::args().skip(1);
    let model = args.next().unwrap_or_else(|| "smollm2-135m".into());
    let prompt = args.next().unwrap_or_else(|| "Once upon a time,".into());
    let path = augur::pull::resolve_model(&model, true)?;
    let mut engine = Engine::load(&path, &EngineOptions::default())?;
    let params = GenerateParams { max_tokens: 64, ..Default::default() };
    let out = engine.generate(&prompt, &params, |piece| {
        print!("{piece}");
        let _ = std::io::stdout().flush();
        true // return false to stop early
    })?;
    println!("\n[{} tokens, {:.1} tok/s]", out.stats.generated_tokens, out.stats.decode_tok_s());
    Ok(())
}
