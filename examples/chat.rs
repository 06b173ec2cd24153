//! A chat loop on stdin, as an app embedding augur would write one: each line is a user turn,
//! answered with the conversation so far (`augur::chat::Chat`; the engine reuses the earlier
//! turns' KV entries). Generation runs on a worker thread and streams pieces back over a
//! channel; Ctrl-D quits. (`augur chat` is the same loop in the command line tool.)
//! cargo run --release --example chat -- [model]

use augur::engine::{CancelToken, Engine, EngineOptions, GenerateParams};
use std::io::{BufRead, Write};

fn main() -> augur::Result<()> {
    let model = std::env::args().nth(1).unwrap_or_else(|| "smollm2-135m".into());
    let path = augur::pull::resolve_model(&model, true)?;
    let mut engine = Engine::load(&path, &EngineOptions::default())?;
    let (tx_prompt, rx_prompt) = flume::unbounded::<String>();
    let (tx_text, rx_text) = flume::unbounded::<Option<String>>();
    let cancel = CancelToken::default();
    let worker_cancel = cancel.clone();
    let worker = std::thread::spawn(move || {
        let params = GenerateParams { max_tokens: 256, temperature: 0.7, top_p: 0.9, chat: true, ..Default::default() };
        let mut chat = augur::chat::Chat::new(None);
        for prompt in rx_prompt {
            let tokenizer = engine.tokenizer.clone();
            let ids = match chat.prompt(&engine, &prompt, params.max_tokens) {
                Ok((ids, _forgotten)) => ids,
                Err(e) => {
                    let _ = tx_text.send(Some(format!("[error: {e}]")));
                    let _ = tx_text.send(None);
                    continue;
                }
            };
            let mut dec = augur::model::tokenizer::StreamDecoder::new();
            let res = engine.generate_tokens(&ids, &params, &worker_cancel, |id| {
                tx_text.send(Some(dec.push(&tokenizer, id))).is_ok()
            });
            match res {
                Ok(out) => chat.record(&prompt, &out.text),
                Err(e) => {
                    let _ = tx_text.send(Some(format!("[error: {e}]")));
                }
            }
            let _ = tx_text.send(None);
        }
    });
    print!("> ");
    std::io::stdout().flush().ok();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if line.trim().is_empty() {
            print!("> ");
            std::io::stdout().flush().ok();
            continue;
        }
        tx_prompt.send(line).expect("worker alive");
        while let Ok(Some(piece)) = rx_text.recv() {
            print!("{piece}");
            std::io::stdout().flush().ok();
        }
        print!("\n> ");
        std::io::stdout().flush().ok();
    }
    cancel.cancel();
    drop(tx_prompt);
    let _ = worker.join();
    Ok(())
}
