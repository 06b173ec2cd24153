//! Bad input gets a clear one-line error and a non-zero exit, never a panic or a huge allocation.

mod common;
use augur::model::LoadedModel;
use augur::model::gguf::Gguf;
use std::process::Command;

fn gguf_header(n_tensors: u64, n_kv: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(n_tensors.to_le_bytes());
    b.extend(n_kv.to_le_bytes());
    b
}

fn kv_str(b: &mut Vec<u8>, k: &str, v: &str) {
    b.extend((k.len() as u64).to_le_bytes());
    b.extend(k.as_bytes());
    b.extend(8u32.to_le_bytes());
    b.extend((v.len() as u64).to_le_bytes());
    b.extend(v.as_bytes());
}

fn err(bytes: Vec<u8>) -> String {
    match Gguf::parse("test.gguf".into(), bytes) {
        Ok(_) => panic!("parsed"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn gguf_headers_that_lie_are_refused() {
    assert!(err(b"GGU".to_vec()).contains("shorter"));
    assert!(err(b"GGML\0\0\0\0".to_vec()).contains("magic"));
    let mut v1 = gguf_header(0, 0);
    v1[4] = 1;
    assert!(err(v1).contains("version 1"));
    // counts far beyond what the file could hold: refused before allocating
    assert!(err(gguf_header(u64::MAX, 0)).contains("does not fit"));
    assert!(err(gguf_header(0, 1 << 60)).contains("does not fit"));
    // a string length that lies
    let mut b = gguf_header(0, 1);
    b.extend(u64::MAX.to_le_bytes());
    assert!(err(b).contains("does not fit"));
    // an array count that lies
    let mut b = gguf_header(0, 1);
    b.extend(1u64.to_le_bytes());
    b.push(b'a');
    b.extend(9u32.to_le_bytes());
    b.extend(4u32.to_le_bytes());
    b.extend((1u64 << 40).to_le_bytes());
    assert!(err(b).contains("does not fit"));
    // a tensor whose data runs past the end of the file
    let mut b = gguf_header(1, 0);
    b.extend(1u64.to_le_bytes());
    b.push(b'w');
    b.extend(2u32.to_le_bytes());
    b.extend(64u64.to_le_bytes());
    b.extend(64u64.to_le_bytes());
    b.extend(0u32.to_le_bytes()); // F32
    b.extend(0u64.to_le_bytes());
    assert!(err(b).contains("past the end"));
    // an unsupported quantisation type
    let mut b = gguf_header(1, 0);
    b.extend(1u64.to_le_bytes());
    b.push(b'w');
    b.extend(1u32.to_le_bytes());
    b.extend(32u64.to_le_bytes());
    b.extend(10u32.to_le_bytes()); // Q2_K
    b.extend(0u64.to_le_bytes());
    assert!(err(b).contains("does not support"));
}

#[test]
fn unknown_architecture_is_refused() {
    let mut b = gguf_header(0, 1);
    kv_str(&mut b, "general.architecture", "mamba");
    let dir = std::env::temp_dir().join(format!("augur-arch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("m.gguf");
    std::fs::write(&p, b).unwrap();
    let e = LoadedModel::load(&p).err().unwrap().to_string();
    assert!(e.contains("architecture 'mamba' is not supported"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn truncated_real_model_is_refused() {
    let full = std::fs::read(common::model_path("smollm2-135m")).unwrap();
    let e = err(full[..full.len() / 2].to_vec());
    assert!(e.contains("past the end") && e.contains("augur pull"), "{e}");
    let e = err(full[..1000].to_vec());
    assert!(e.contains("not a valid GGUF file"), "{e}");
}

/// Runs the CLI with an AUGUR_HOME of its own, removed afterwards.
fn augur(args: &[&str]) -> (i32, String, String) {
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let home = std::env::temp_dir().join(format!("augur-cli-home-{}-{call}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_augur")).args(args).env("AUGUR_HOME", &home).output().unwrap();
    let _ = std::fs::remove_dir_all(&home);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// `augur chat ARGS` started with AUGUR_HOME `home` and its stdin, stdout and stderr piped.
fn chat_process(args: &[&str], home: &std::path::Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_augur"))
        .arg("chat")
        .args(args)
        .env("AUGUR_HOME", home)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// `augur chat` with `input` on stdin.
fn augur_chat(args: &[&str], input: &str) -> (i32, String, String) {
    use std::io::Write;
    let home = std::env::temp_dir().join(format!("augur-chat-home-{}", std::process::id()));
    let mut child = chat_process(args, &home);
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_dir_all(&home);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// A chat session: a message too long for the context is an error line and the session goes
/// on; the next turn reuses the cached conversation.
#[test]
fn cli_chat_survives_a_message_too_long_and_reuses_the_conversation() {
    let model = common::model_path("smollm2-135m");
    let input = format!("Hi there!\n{}\n\nThanks!\n", "word ".repeat(400));
    let args = [model.to_str().unwrap(), "--ctx", "160", "--max-tokens", "8", "--speculate", "off"];
    let (code, out, err) = augur_chat(&args, &input);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("augur: error: ")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].contains("shorten it or raise --ctx"), "{err}");
    let reports: Vec<&str> = err.lines().filter(|l| l.contains("prompt tokens")).collect();
    assert_eq!(reports.len(), 2, "two answered turns: {err}");
    assert!(!reports[0].contains("cached") && reports[1].contains("cached"), "{err}");
    assert!(out.lines().filter(|l| !l.trim().is_empty()).count() >= 2, "{out}");
}

/// Ctrl-C while an answer streams stops that answer, and the chat goes on with the next turn.
#[cfg(unix)]
#[test]
fn cli_chat_ctrl_c_stops_the_answer_not_the_chat() {
    use std::io::{Read, Write};
    let model = common::model_path("smollm2-135m");
    let home = std::env::temp_dir().join(format!("augur-chat-int-{}", std::process::id()));
    let args = [model.to_str().unwrap(), "--ctx", "1024", "--max-tokens", "200", "--speculate", "off"];
    let mut child = chat_process(&args, &home);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"Write a very long story about a dragon and a knight.\n").unwrap();
    stdin.flush().unwrap();
    // the answer is streaming once its first bytes arrive
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 1];
    stdout.read_exact(&mut first).unwrap();
    let killed = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    stdin.write_all(b"Thanks!\n").unwrap();
    drop(stdin);
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_dir_all(&home);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let reports: Vec<&str> = err.lines().filter(|l| l.contains("prompt tokens")).collect();
    assert_eq!(reports.len(), 2, "{err}");
    assert!(reports[0].ends_with("stop: cancelled"), "{err}");
    assert!(reports[1].contains("cached"), "the next turn follows the stopped answer: {err}");
}

/// `augur serve` as a user runs it: on a free port, a learning draft head, a request answered,
/// then Ctrl-C while a long answer streams: it ends, the head is saved, the exit is clean.
#[cfg(unix)]
#[test]
fn cli_serve_answers_and_stops_on_ctrl_c_saving_the_head() {
    use std::io::{BufRead, Read, Write};
    let model = common::model_path("smollm2-135m");
    let home = std::env::temp_dir().join(format!("augur-serve-{}", std::process::id()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_augur"))
        .args(["serve", model.to_str().unwrap(), "--port", "0", "--ctx", "512", "--speculate", "head"])
        .env("AUGUR_HOME", &home)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut banner = String::new();
    stderr.read_line(&mut banner).unwrap();
    let addr = banner.split("http://").nth(1).and_then(|r| r.split('/').next()).unwrap_or_else(|| panic!("{banner}"));
    let post = |body: &str| {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(s, "POST /v1/completions HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        s
    };
    let mut answer = String::new();
    post(r#"{"prompt": "Once upon a time,", "max_tokens": 8}"#).read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("\"completion_tokens\":8"), "{answer}");
    // a long answer streaming, then Ctrl-C
    let mut long = std::io::BufReader::new(post(r#"{"prompt": "A story:", "max_tokens": 400, "stream": true}"#));
    let mut line = String::new();
    while !line.starts_with("data: ") {
        line.clear();
        assert!(long.read_line(&mut line).unwrap() > 0, "the stream ended before its first event");
    }
    let killed = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let mut rest = String::new();
    long.read_to_string(&mut rest).unwrap(); // the stream ends: its answer was cut short
    assert!(rest.matches("data: ").count() < 390, "the answer ran on after Ctrl-C");
    let mut err = String::new();
    stderr.read_to_string(&mut err).unwrap();
    let status = child.wait().unwrap();
    let saved = home.join("heads").join("SmolLM2-135M-Instruct.Q4_1.safetensors").exists();
    let _ = std::fs::remove_dir_all(&home);
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(err.contains("augur: stopping"), "{err}");
    assert!(saved, "the draft head was not saved: {err}");
}

#[test]
fn cli_errors_are_one_line_with_non_zero_exit() {
    for args in [
        vec!["run", "/nonexistent/model.gguf", "hi"],
        vec!["run", "no-such-model", "hi"],
        vec!["pull", "no-such-model"],
    ] {
        let (code, _, err) = augur(&args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.starts_with("augur: error: "), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // sizes of zero and empty stop strings are refused before any model is looked for
    for (args, start) in [
        (vec!["generate", "no-such-model", "hi", "--ctx", "0"], "--ctx must be"),
        (vec!["bench-spec", "no-such-model", "--per-category", "0"], "--per-category must be"),
        (vec!["run", "no-such-model", "hi", "--stop", ""], "a --stop string is empty"),
        (vec!["serve", "no-such-model", "--top-p", "0"], "--top-p must be"),
        (vec!["bench-spec", "no-such-model", "--temperature=-1"], "--temperature must be"),
    ] {
        let (code, _, err) = augur(&args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.starts_with(&format!("augur: error: {start}")), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    }
    // a file that is not GGUF
    let dir = std::env::temp_dir().join(format!("augur-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("junk.gguf");
    std::fs::write(&p, b"this is not a model").unwrap();
    let (code, _, err) = augur(&["generate", p.to_str().unwrap(), "hi"]);
    assert_eq!(code, 1);
    assert!(err.contains("magic"), "{err}");
    // prompt longer than the context
    let model = common::model_path("smollm2-135m");
    let long = "word ".repeat(100);
    let (code, _, err) = augur(&["generate", model.to_str().unwrap(), &long, "--ctx", "32"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("context"), "{err}");
    // a port already taken, refused before the model loads
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (code, _, err) = augur(&["serve", "no-such-model", "--port", &port]);
    assert_eq!(code, 1, "{err}");
    assert!(err.starts_with("augur: error: could not listen on 127.0.0.1:"), "{err}");
    assert!(err.contains("--port") && err.trim_end().lines().count() == 1, "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cli_generate_json_has_the_documented_fields() {
    let model = common::model_path("smollm2-135m");
    let (code, out, err) = augur(&[
        "generate",
        model.to_str().unwrap(),
        "Once upon a time,",
        "--max-tokens",
        "8",
        "--json",
        "--ctx",
        "64",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    for k in ["text", "tokens", "prompt_tokens", "generated_tokens", "prefill_ms", "decode_ms", "decode_tok_s"] {
        assert!(v.get(k).is_some(), "missing {k} in {out}");
    }
    assert_eq!(v["generated_tokens"], 8);
    assert!(v["text"].as_str().unwrap().starts_with(" the city of Nova Haven"));
    // speculation (auto, the default): counts, tau, and the time split of issue 3
    let spec = &v["spec"];
    for k in ["rounds", "drafted", "accepted", "tau", "acceptance_by_depth", "per_speculator", "controller"] {
        assert!(spec.get(k).is_some(), "missing spec.{k} in {out}");
    }
    for k in ["draft", "verify", "accept", "train", "other"] {
        assert!(spec["time_ms"][k].as_f64().is_some_and(|t| t >= 0.0), "spec.time_ms.{k} in {out}");
    }
    assert!(spec["time_ms"]["verify"].as_f64().unwrap() > 0.0, "{out}");
}

/// Learning's bad input: an empty or malformed corpus is refused in one line; a head that cannot
/// be saved (unwritable place) costs this run's learning, with a warning, not the run.
#[test]
fn cli_learning_bad_input() {
    let dir = std::env::temp_dir().join(format!("augur-cli-learn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = common::model_path("smollm2-135m");
    let m = model.to_str().unwrap();
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "\n\n   \n").unwrap();
    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, "{\"prompt\": \"fine\"}\n{not json\n").unwrap();
    let fields = dir.join("fields.jsonl");
    std::fs::write(&fields, "{\"title\": \"no text here\"}\n").unwrap();
    for (corpus, says) in [(&empty, "no text"), (&bad, "bad.jsonl:2"), (&fields, "field")] {
        let (code, _, err) = augur(&["train-head", m, "--corpus", corpus.to_str().unwrap(), "--ctx", "64"]);
        assert_eq!(code, 1, "{err}");
        assert!(err.starts_with("augur: error: ") && err.contains(says), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
    let (code, _, err) = augur(&["bench-adapt", m, "--arms", "off,warp"]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown arm 'warp'"), "{err}");
    // an unwritable head file: the text still comes, with a warning
    let (code, out, err) = augur(&[
        "generate",
        m,
        "Once upon a time,",
        "--max-tokens",
        "6",
        "--ctx",
        "64",
        "--speculate",
        "head",
        "--head",
        "/proc/augur-no-such-dir/head.safetensors",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with(" the city"), "{out}");
    assert!(err.contains("could not save the draft head"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
