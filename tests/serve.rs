//! `augur serve` over real sockets: answers, whole and streamed, are what plain decoding gives;
//! bad requests get a status and a one-line reason and the server keeps serving; a client that
//! leaves mid-stream stops its generation.

mod common;

use augur::engine::{CancelToken, Engine, EngineOptions, GenerateParams};
use augur::model::tokenizer::ChatMessage;
use augur::serve::{ServeOptions, spawn};
use augur::spec::SpecMode;
use common::model_path;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Mutex, OnceLock};

const CTX: usize = 256;

/// The server under test, with `auto` speculation (the default users get), and a second engine
/// that decodes plainly: the reference.
fn server() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        common::setup_env();
        let engine =
            Engine::load(&model_path("smollm2-135m"), &EngineOptions { max_ctx: CTX, ..Default::default() }).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let defaults = GenerateParams { max_tokens: 24, ..Default::default() };
        spawn(listener, engine, ServeOptions { defaults, ..ServeOptions::new("smollm2-135m") }).unwrap().addr()
    })
}

/// One test at a time: the last test checks what the engine's KV cache kept from a request, which
/// another test's request would replace.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static ONE: Mutex<()> = Mutex::new(());
    ONE.lock().unwrap_or_else(|e| e.into_inner())
}

fn reference() -> std::sync::MutexGuard<'static, Engine> {
    static ENGINE: OnceLock<Mutex<Engine>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            common::setup_env();
            let opts = EngineOptions { max_ctx: CTX, ..Default::default() };
            Mutex::new(Engine::load(&model_path("smollm2-135m"), &opts).unwrap())
        })
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

fn plain(max_tokens: usize) -> GenerateParams {
    GenerateParams { max_tokens, speculate: SpecMode::Off, ..Default::default() }
}

/// Sends one raw request; returns the status and the body.
fn raw(request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(server()).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a response head");
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("a status code");
    (status, body.to_string())
}

fn post(path: &str, body: &Value) -> (u16, Value) {
    let body = body.to_string();
    let (status, text) =
        raw(&format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}", body.len()));
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}")))
}

/// A streamed request's events, each `data:` payload in order.
fn post_stream(path: &str, body: &Value) -> Vec<String> {
    let (status, text) = {
        let body = body.to_string();
        raw(&format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}", body.len()))
    };
    assert_eq!(status, 200, "{text}");
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").expect("a data event").to_string())
        .collect()
}

/// The text of a streamed answer, and its last JSON event (finish reason and usage).
fn streamed_text(events: &[String], chat: bool) -> (String, Value) {
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let text = chunks
        .iter()
        .map(|c| {
            let choice = &c["choices"][0];
            let piece = if chat { &choice["delta"]["content"] } else { &choice["text"] };
            piece.as_str().unwrap_or_default().to_string()
        })
        .collect();
    for c in &chunks[..chunks.len() - 1] {
        assert!(c["choices"][0]["finish_reason"].is_null(), "only the last event finishes: {c}");
    }
    (text, chunks.last().unwrap().clone())
}

const PROMPTS: [&str; 3] = [
    "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n",
    "The three primary colours are",
    "Q: What is the capital of France?\nA:",
];

#[test]
fn completions_answer_what_plain_decoding_gives_whole_and_streamed() {
    let _one = serial();
    for prompt in PROMPTS {
        let want = reference().generate(prompt, &plain(24), |_| true).unwrap();
        let (status, got) = post("/v1/completions", &json!({ "prompt": prompt, "model": "any" }));
        assert_eq!(status, 200, "{got}");
        assert_eq!(got["object"], "text_completion");
        assert_eq!(got["model"], "smollm2-135m");
        assert_eq!(got["choices"][0]["text"], want.text.as_str(), "{prompt:?}");
        assert_eq!(got["choices"][0]["finish_reason"], if want.tokens.len() == 24 { "length" } else { "stop" });
        assert_eq!(got["usage"]["completion_tokens"], want.tokens.len());
        assert_eq!(got["usage"]["prompt_tokens"], want.stats.prompt_tokens);
        assert_eq!(got["augur"]["spec"]["mode"], "auto");

        let events = post_stream("/v1/completions", &json!({ "prompt": prompt, "stream": true }));
        let (text, last) = streamed_text(&events, false);
        assert_eq!(text, want.text, "{prompt:?} streamed");
        assert_eq!(last["choices"][0]["finish_reason"], got["choices"][0]["finish_reason"]);
        assert_eq!(last["usage"], got["usage"]);
    }
}

#[test]
fn sampled_answers_repeat_with_a_seed_and_vary_without_one() {
    let _one = serial();
    let ask = |seed: Option<u64>| {
        let mut body = json!({ "prompt": "My favourite animal is", "max_tokens": 12, "temperature": 1.5 });
        if let Some(s) = seed {
            body["seed"] = json!(s);
        }
        let (status, got) = post("/v1/completions", &body);
        assert_eq!(status, 200, "{got}");
        got["choices"][0]["text"].as_str().unwrap().to_string()
    };
    assert_eq!(ask(Some(7)), ask(Some(7)));
    let unseeded: std::collections::HashSet<String> = (0..4).map(|_| ask(None)).collect();
    assert!(unseeded.len() > 1, "four unseeded answers were all {unseeded:?}");
}

#[test]
fn chat_completions_answer_the_conversation_in_the_chat_template() {
    let _one = serial();
    let messages = [
        ChatMessage::system("You answer in one short sentence."),
        ChatMessage::user("Name a fruit."),
        ChatMessage::assistant("An apple."),
        ChatMessage::user("Name another one."),
    ];
    let want = {
        let mut e = reference();
        let ids = e.encode_conversation(&messages).unwrap();
        e.generate_text(&ids, &plain(16), &CancelToken::default(), |_| true).unwrap()
    };
    let body = json!({
        "messages": [
            { "role": "system", "content": "You answer in one short sentence." },
            { "role": "user", "content": "Name a fruit." },
            { "role": "assistant", "content": [{ "type": "text", "text": "An apple." }] },
            { "role": "user", "content": "Name another one." },
        ],
        "max_tokens": 16,
    });
    let (status, got) = post("/v1/chat/completions", &body);
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["object"], "chat.completion");
    assert_eq!(got["choices"][0]["message"]["role"], "assistant");
    assert_eq!(got["choices"][0]["message"]["content"], want.text.as_str());
    assert_eq!(got["usage"]["prompt_tokens"], want.stats.prompt_tokens);

    let mut stream_body = body.clone();
    stream_body["stream"] = json!(true);
    let events = post_stream("/v1/chat/completions", &stream_body);
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    let (text, last) = streamed_text(&events, true);
    assert_eq!(text, want.text);
    assert_eq!(last["usage"], got["usage"]);
}

#[test]
fn a_stop_string_ends_whole_and_streamed_answers_before_it() {
    let _one = serial();
    let prompt = PROMPTS[0];
    let full = reference().generate(prompt, &plain(24), |_| true).unwrap().text;
    // a stop string from the middle of the answer
    let words: Vec<&str> = full.split_whitespace().collect();
    assert!(words.len() >= 4, "the answer is too short to stop inside: {full:?}");
    let stop = words[words.len() / 2];
    let want =
        reference().generate(prompt, &GenerateParams { stop: vec![stop.into()], ..plain(24) }, |_| true).unwrap();
    assert!(want.text.len() < full.len() && !want.text.contains(stop));
    let (status, got) = post("/v1/completions", &json!({ "prompt": prompt, "stop": [stop, "never appears"] }));
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["choices"][0]["text"], want.text.as_str());
    assert_eq!(got["choices"][0]["finish_reason"], "stop");
    let events = post_stream("/v1/completions", &json!({ "prompt": prompt, "stop": stop, "stream": true }));
    assert_eq!(streamed_text(&events, false).0, want.text);
}

#[test]
fn bad_requests_get_a_status_and_a_reason_and_the_server_keeps_serving() {
    let _one = serial();
    let long = "word ".repeat(CTX * 2);
    for (path, body, status, says) in [
        ("/v1/completions", json!({ "prompt": "a", "max_tokens": 0 }), 400, "at least 1"),
        ("/v1/completions", json!({ "prompt": "a", "n": 2 }), 400, "`n`"),
        ("/v1/completions", json!({ "prompt": "" }), 400, "empty"),
        ("/v1/completions", json!({ "prompt": long }), 400, "context"),
        ("/v1/completions", json!({ "prompt": "a", "speculate": "draft" }), 400, "draft"),
        ("/v1/chat/completions", json!({ "messages": "hi" }), 400, "messages"),
        (
            "/v1/chat/completions",
            json!({ "messages": [{ "role": "user", "content": long }], "stream": true }),
            400,
            "context",
        ),
    ] {
        let (got, answer) = post(path, &body);
        assert_eq!(got, status, "{body} -> {answer}");
        let msg = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(says), "{body}: {msg:?} should say {says:?}");
        assert!(!msg.contains('\n'), "one line: {msg:?}");
    }
    for (request, status) in [
        ("POST /v1/completions HTTP/1.1\r\nContent-Length: 5\r\n\r\n{oops", 400),
        ("POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411),
        ("GET /v1/completions HTTP/1.1\r\n\r\n", 405),
        ("GET /v2/engines HTTP/1.1\r\n\r\n", 404),
        ("NONSENSE\r\n\r\n", 400),
    ] {
        let (got, body) = raw(request);
        assert_eq!(got, status, "{request:?} -> {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert!(v["error"]["message"].is_string(), "{body}");
    }
    // and it still answers
    let (status, models) = raw("GET /v1/models HTTP/1.1\r\n\r\n");
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<Value>(&models).unwrap()["data"][0]["id"], "smollm2-135m");
    let (status, got) = post("/v1/completions", &json!({ "prompt": PROMPTS[1], "max_tokens": 2 }));
    assert_eq!((status, got["usage"]["completion_tokens"].as_u64()), (200, Some(2)));
}

#[test]
fn a_client_that_leaves_mid_stream_stops_its_generation() {
    let _one = serial();
    let prompt = "Once upon a time, in a small village by the sea,";
    let params = plain(200);
    let want = reference().generate(prompt, &params, |_| true).unwrap();
    assert_eq!(want.tokens.len(), 200);
    // the engine's next request reuses the KV entries its last generation left: how many of a
    // prompt's tokens come from the cache says how far the abandoned generation went
    let body = json!({ "prompt": prompt, "max_tokens": 200, "stream": true }).to_string();
    {
        let mut s = TcpStream::connect(server()).unwrap();
        write!(s, "POST /v1/completions HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        while !line.starts_with("data: ") {
            line.clear();
            assert!(r.read_line(&mut line).unwrap() > 0, "the stream ended before its first event");
        }
    } // the client leaves
    let resumed = format!("{prompt}{}", want.text);
    let (status, got) = post("/v1/completions", &json!({ "prompt": resumed, "max_tokens": 1 }));
    assert_eq!(status, 200, "{got}");
    let cached = got["augur"]["cached_prompt_tokens"].as_u64().unwrap() as usize;
    let prompt_tokens = want.stats.prompt_tokens;
    assert!(cached >= prompt_tokens, "the abandoned request's prompt should be cached ({cached} < {prompt_tokens})");
    assert!(
        cached < prompt_tokens + 100,
        "the abandoned request generated {} of its 200 tokens: it did not stop when its client left",
        cached - prompt_tokens
    );
}

#[test]
fn with_an_api_key_only_health_answers_without_it_and_shutdown_returns_the_engine() {
    common::setup_env();
    let engine =
        Engine::load(&model_path("smollm2-135m"), &EngineOptions { max_ctx: 64, ..Default::default() }).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let opts = ServeOptions { api_key: Some("s3cret".into()), ..ServeOptions::new("smollm2-135m") };
    let server = spawn(listener, engine, opts).unwrap();
    let addr = server.addr();
    let ask = |auth: &str, path: &str| {
        let mut s = TcpStream::connect(addr).unwrap();
        let (method, body) = if path.ends_with("completions") { ("POST", r#"{"prompt": "Hi"}"#) } else { ("GET", "") };
        write!(s, "{method} {path} HTTP/1.1\r\n{auth}Content-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).unwrap();
        response.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok()).unwrap()
    };
    assert_eq!(ask("", "/v1/models"), 401);
    assert_eq!(ask("Authorization: Bearer wrong\r\n", "/v1/models"), 401);
    assert_eq!(ask("Authorization: s3cret\r\n", "/v1/models"), 401);
    assert_eq!(ask("Authorization: Bearer s3cret\r\n", "/v1/models"), 200);
    assert_eq!(ask("", "/health"), 200);
    let key = "Authorization: Bearer s3cret\r\n";
    assert_eq!(ask(key, "/v1/completions"), 200);
    // shut down: the engine comes back (to save what it learned) and generation is refused
    let engine = server.shutdown();
    assert_eq!(engine.model.max_ctx, 64);
    assert_eq!(ask(key, "/v1/completions"), 503);
    assert_eq!(ask(key, "/v1/models"), 200);
}
