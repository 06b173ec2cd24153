//! `augur serve`: the engine behind an OpenAI-compatible HTTP API, so that apps and editors that
//! speak it (chat front ends, coding assistants, the `openai` client libraries) run on augur.
//!
//! Endpoints: `POST /v1/completions`, `POST /v1/chat/completions` (both with `"stream": true`
//! as server-sent events), `GET /v1/models`, `GET /health`. One engine thread generates; every
//! connection has a thread of its own that reads the request, tokenises it, queues it for the
//! engine and writes the answer as it comes. Requests are answered one at a time in arrival
//! order: one model on one GPU decodes fastest alone, and the engine keeps the KV entries of its
//! last answer, so a chat client that sends the whole conversation each turn prefills only the
//! new message. A client that leaves a streamed answer stops its generation at the next token.
//! `Server::shutdown` ends the answer in progress and hands the engine back.

pub mod http;
pub mod openai;

use crate::engine::{CancelToken, Engine, GenerateParams, Output};
use crate::error::{Error, Result};
use crate::model::tokenizer::Tokenizer;
use openai::{GenerationRequest, Prompt};
use serde_json::{Value, json};
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// How the server answers.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The model's name in responses and `/v1/models` (a request's `model` field is not checked:
    /// one model is served).
    pub model: String,
    /// Generation parameters a request does not set (`max_tokens`, `temperature`, ...,
    /// `speculate`, the tree's budget and depth).
    pub defaults: GenerateParams,
    /// Largest request body in bytes.
    pub max_body: usize,
    /// Connections served at once; more are answered 503.
    pub max_connections: usize,
    /// One line per request on stderr.
    pub log: bool,
    /// When set, every endpoint but /health wants `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// The seed of requests that give none; None: a fresh one each, so that they sample
    /// afresh, as clients of the API expect.
    pub seed: Option<u64>,
}

impl ServeOptions {
    pub fn new(model: impl Into<String>) -> ServeOptions {
        ServeOptions {
            model: model.into(),
            defaults: GenerateParams::default(),
            max_body: 8 << 20,
            max_connections: 64,
            log: false,
            api_key: None,
            seed: None,
        }
    }
}

/// A generation queued for the engine thread.
struct Job {
    ids: Vec<u32>,
    params: GenerateParams,
    events: flume::Sender<Event>,
}

/// What the engine thread sends back: pieces of text, then the end.
enum Event {
    Text(String),
    Done(Result<Box<Output>>),
}

/// What the connection threads share.
struct Shared {
    opts: ServeOptions,
    tokenizer: Arc<Tokenizer>,
    /// Requests for the engine thread; None tells it to stop.
    jobs: flume::Sender<Option<Job>>,
    requests: AtomicU64,
    open: AtomicUsize,
    /// Set by `Server::shutdown`: the answer in progress ends and queued ones are dropped.
    stopping: CancelToken,
}

/// A running server: where it listens, and how to stop it.
pub struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
    engine: std::thread::JoinHandle<Engine>,
}

impl Server {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops generating and hands the engine back (to save what its draft head learned): the
    /// answer in progress ends at its next token, requests still queued and any that come later
    /// are answered 503.
    pub fn shutdown(self) -> Engine {
        self.shared.stopping.cancel();
        let _ = self.shared.jobs.send(None);
        match self.engine.join() {
            Ok(engine) => engine,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

/// Serves on `listener` from background threads (a thread accepting connections, one per
/// connection, one for the engine) and returns at once.
pub fn spawn(listener: TcpListener, mut engine: Engine, opts: ServeOptions) -> Result<Server> {
    let addr = listener.local_addr().map_err(|e| Error::msg(format!("the listener has no address: {e}")))?;
    let (jobs, queue) = flume::unbounded::<Option<Job>>();
    let stopping = CancelToken::default();
    let tokenizer = engine.tokenizer.clone();
    let worker = {
        let stopping = stopping.clone();
        std::thread::spawn(move || {
            for job in queue.iter() {
                let Some(job) = job else { break };
                if stopping.is_cancelled() || job.events.is_disconnected() {
                    continue; // dropped: its client gets a 503, or has left
                }
                let events = job.events.clone();
                let done = engine.generate_text(&job.ids, &job.params, &stopping, |piece| {
                    // false once the connection's thread has gone: the client left
                    events.send(Event::Text(piece.to_string())).is_ok()
                });
                let _ = job.events.send(Event::Done(done.map(Box::new)));
            }
            engine
        })
    };
    let shared =
        Arc::new(Shared { opts, tokenizer, jobs, requests: AtomicU64::new(0), open: AtomicUsize::new(0), stopping });
    let acceptor = shared.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            match stream {
                Ok(s) => accept(&acceptor, s),
                Err(e) => eprintln!("augur: could not accept a connection: {e}"),
            }
        }
    });
    Ok(Server { addr, shared, engine: worker })
}

fn accept(shared: &Arc<Shared>, stream: TcpStream) {
    if shared.open.fetch_add(1, Ordering::SeqCst) >= shared.opts.max_connections {
        shared.open.fetch_sub(1, Ordering::SeqCst);
        let _ = http::write_json(&mut &stream, 503, &http::error_body(503, "too many connections; retry shortly"));
        return;
    }
    let shared = shared.clone();
    std::thread::spawn(move || {
        connection(&shared, stream);
        shared.open.fetch_sub(1, Ordering::SeqCst);
    });
}

/// One request on one connection, answered and closed.
fn connection(shared: &Shared, stream: TcpStream) {
    // a client that stops sending (or reading) does not hold its thread for ever
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(60)));
    let mut w = &stream;
    let req = match http::read_request(&mut BufReader::new(&stream), shared.opts.max_body) {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(r) => {
            let _ = http::write_json(&mut w, r.status, &http::error_body(r.status, &r.message));
            return;
        }
    };
    if let Some(key) = &shared.opts.api_key
        && req.path != "/health"
        && !req.authorization.as_deref().and_then(|a| a.strip_prefix("Bearer ")).is_some_and(|k| same(k, key))
    {
        let msg = "missing or wrong API key; send the server's --api-key as `Authorization: Bearer KEY`";
        let _ = http::write_json(&mut w, 401, &http::error_body(401, msg));
        return;
    }
    let defaults = &shared.opts.defaults;
    let _ = match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/health") => http::write_json(&mut w, 200, &json!({ "status": "ok" })),
        ("GET", "/v1/models") => http::write_json(&mut w, 200, &models(shared)),
        ("POST", "/v1/completions") => generation(shared, &req.path, openai::completion(&req.body, defaults), &mut w),
        ("POST", "/v1/chat/completions") => generation(shared, &req.path, openai::chat(&req.body, defaults), &mut w),
        (m, "/health" | "/v1/models" | "/v1/completions" | "/v1/chat/completions") => {
            let msg = format!("{m} is not allowed on {}", req.path);
            http::write_json(&mut w, 405, &http::error_body(405, &msg))
        }
        (_, p) => {
            let msg = format!(
                "no endpoint {p}; served: POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /health"
            );
            http::write_json(&mut w, 404, &http::error_body(404, &msg))
        }
    };
}

/// Compares keys in time that depends on their lengths only.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

fn models(shared: &Shared) -> Value {
    json!({ "object": "list", "data": [{ "id": shared.opts.model, "object": "model", "created": 0, "owned_by": "augur" }] })
}

/// The status for an engine error: the request's fault (too long, a speculator not loaded) or
/// the server's (the GPU).
fn status_of(e: &Error) -> u16 {
    match e {
        Error::Msg(_) => 400,
        _ => 500,
    }
}

/// A completion or chat completion: queued for the engine, answered whole or streamed.
fn generation(
    shared: &Shared,
    path: &str,
    parsed: std::result::Result<GenerationRequest, String>,
    w: &mut impl Write,
) -> std::io::Result<()> {
    let fail = |mut w: &mut dyn Write, status: u16, msg: &str| {
        if shared.opts.log {
            eprintln!("augur: POST {path} {status}: {msg}");
        }
        http::write_json(&mut w, status, &http::error_body(status, msg))
    };
    let mut req = match parsed {
        Ok(r) => r,
        Err(msg) => return fail(w, 400, &msg),
    };
    if !req.seeded {
        req.params.seed = shared.opts.seed.unwrap_or_else(openai::fresh_seed);
    }
    let chat = matches!(req.prompt, Prompt::Chat(_));
    let text = match &req.prompt {
        Prompt::Text(t) => t.clone(),
        Prompt::Chat(m) => shared.tokenizer.chat_conversation(m),
    };
    let ids = match shared.tokenizer.encode(&text) {
        Ok(ids) => ids,
        Err(e) => return fail(w, 400, &e.to_string()),
    };
    let (events, answers) = flume::unbounded();
    if shared.stopping.is_cancelled() || shared.jobs.send(Some(Job { ids, params: req.params, events })).is_err() {
        return fail(w, 503, "the server is stopping");
    }
    let n = shared.requests.fetch_add(1, Ordering::Relaxed) + 1;
    let reply = Reply {
        id: format!("{}-{n}", if chat { "chatcmpl" } else { "cmpl" }),
        created: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        model: shared.opts.model.clone(),
        chat,
    };
    // the first event decides the status: an error before any text is an error response
    let first = match answers.recv() {
        Ok(Event::Done(Err(e))) => return fail(w, status_of(&e), &e.to_string()),
        Ok(e) => e,
        Err(_) => return fail(w, 503, "the server is stopping"),
    };
    let events = std::iter::once(first).chain(answers.iter());
    let out = if req.stream { stream(&reply, events, w) } else { whole(&reply, events, w) };
    if !shared.opts.log {
        return out.map(|_| ());
    }
    match &out {
        Err(e) => eprintln!("augur: POST {path}: the client left ({e}); its generation stopped"),
        Ok(None) => {}
        Ok(Some(out)) => {
            let s = &out.stats;
            eprintln!(
                "augur: POST {path} 200: {} prompt tokens ({} cached), {} generated ({:.1} tok/s), {}",
                s.prompt_tokens,
                s.cached_prompt_tokens,
                s.generated_tokens,
                s.decode_tok_s(),
                s.finish_reason
            );
        }
    }
    out.map(|_| ())
}

/// What every response object of one request repeats.
struct Reply {
    id: String,
    created: u64,
    model: String,
    chat: bool,
}

impl Reply {
    fn object(&self, stream: bool) -> &'static str {
        match (self.chat, stream) {
            (true, false) => "chat.completion",
            (true, true) => "chat.completion.chunk",
            (false, _) => "text_completion",
        }
    }

    /// A choice carrying `text` (a whole answer, or one piece of a stream).
    fn choice(&self, text: &str, stream: bool, finish: Option<&str>) -> Value {
        let mut c = json!({ "index": 0, "logprobs": null, "finish_reason": finish });
        match (self.chat, stream) {
            (false, _) => c["text"] = json!(text),
            (true, false) => c["message"] = json!({ "role": "assistant", "content": text }),
            (true, true) if finish.is_some() => c["delta"] = json!({}),
            (true, true) => c["delta"] = json!({ "content": text }),
        }
        c
    }

    fn body(&self, stream: bool, choice: Value) -> Value {
        json!({ "id": self.id, "object": self.object(stream), "created": self.created, "model": self.model, "choices": [choice] })
    }
}

/// Token counts, and augur's own figures under `augur` (timings, speculation).
fn usage(body: &mut Value, out: &Output) {
    let s = &out.stats;
    body["usage"] = json!({
        "prompt_tokens": s.prompt_tokens,
        "completion_tokens": s.generated_tokens,
        "total_tokens": s.prompt_tokens + s.generated_tokens,
    });
    body["augur"] = json!({
        "cached_prompt_tokens": s.cached_prompt_tokens,
        "prefill_ms": s.prefill_ms,
        "decode_ms": s.decode_ms,
        "decode_tok_s": s.decode_tok_s(),
        "spec": out.spec.as_ref().map(|s| s.to_json()),
    });
}

/// Waits for the end and answers in one JSON object.
fn whole(reply: &Reply, events: impl Iterator<Item = Event>, w: &mut impl Write) -> std::io::Result<Option<Output>> {
    for e in events {
        match e {
            Event::Text(_) => {}
            Event::Done(Ok(out)) => {
                let finish = openai::finish_reason(&out.stats.finish_reason);
                let mut body = reply.body(false, reply.choice(&out.text, false, Some(finish)));
                usage(&mut body, &out);
                http::write_json(w, 200, &body)?;
                return Ok(Some(*out));
            }
            Event::Done(Err(e)) => {
                http::write_json(w, status_of(&e), &http::error_body(status_of(&e), &e.to_string()))?;
                return Ok(None);
            }
        }
    }
    http::write_json(w, 503, &http::error_body(503, "the engine stopped mid-answer; restart the server"))?;
    Ok(None)
}

/// Streams each piece as an event, then a last one with the finish reason and usage, then
/// `[DONE]`. A failed write (the client left) returns at once; the engine thread then stops
/// at its next token.
fn stream(reply: &Reply, events: impl Iterator<Item = Event>, w: &mut impl Write) -> std::io::Result<Option<Output>> {
    let mut s = http::EventStream::start(w)?;
    if reply.chat {
        let mut c = reply.choice("", true, None);
        c["delta"] = json!({ "role": "assistant", "content": "" });
        s.send(&reply.body(true, c).to_string())?;
    }
    for e in events {
        match e {
            Event::Text(t) => s.send(&reply.body(true, reply.choice(&t, true, None)).to_string())?,
            Event::Done(Ok(out)) => {
                let finish = openai::finish_reason(&out.stats.finish_reason);
                let mut body = reply.body(true, reply.choice("", true, Some(finish)));
                usage(&mut body, &out);
                s.send(&body.to_string())?;
                s.send("[DONE]")?;
                return Ok(Some(*out));
            }
            Event::Done(Err(e)) => {
                // the status line is gone: the error travels as an event
                s.send(&http::error_body(status_of(&e), &e.to_string()).to_string())?;
                return Ok(None);
            }
        }
    }
    Ok(None)
}
