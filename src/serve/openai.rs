//! OpenAI-style request bodies (`/v1/completions`, `/v1/chat/completions`) read into a prompt
//! and the engine's `GenerateParams`. Fields the engine cannot honour are refused with a
//! one-line reason rather than silently ignored, unless they hold their no-op value.

use crate::engine::GenerateParams;
use crate::model::tokenizer::{ChatMessage, Role};
use serde_json::{Map, Value};

/// What a request asks the engine to continue.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Raw text (`/v1/completions`).
    Text(String),
    /// A conversation put in the model's chat template (`/v1/chat/completions`).
    Chat(Vec<ChatMessage>),
}

/// A parsed generation request.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    pub prompt: Prompt,
    pub params: GenerateParams,
    /// Answer as server-sent events, a piece of text each.
    pub stream: bool,
    /// Whether the request gave a seed (else `params.seed` is the defaults', for the server's
    /// policy to replace: `ServeOptions::seed`).
    pub seeded: bool,
}

/// Reads a `/v1/completions` body.
pub fn completion(body: &[u8], defaults: &GenerateParams) -> Result<GenerationRequest, String> {
    let o = object(body)?;
    let prompt = match o.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => a[0].as_str().unwrap_or_default().to_string(),
        Some(Value::Array(_)) => return Err("`prompt` must be one string (batches of prompts are not served)".into()),
        Some(_) => return Err("`prompt` must be a string".into()),
        None => return Err("the body has no `prompt`".into()),
    };
    refuse_unless(&o, "echo", &Value::Bool(false))?;
    refuse_unless(&o, "suffix", &Value::Null)?;
    let params = params(&o, defaults, false)?;
    let seeded = o.get("seed").is_some_and(|v| !v.is_null());
    Ok(GenerationRequest { prompt: Prompt::Text(prompt), params, stream: flag(&o, "stream")?, seeded })
}

/// Reads a `/v1/chat/completions` body.
pub fn chat(body: &[u8], defaults: &GenerateParams) -> Result<GenerationRequest, String> {
    let o = object(body)?;
    let Some(Value::Array(list)) = o.get("messages") else {
        return Err("the body needs `messages`, an array of {role, content}".into());
    };
    if list.is_empty() {
        return Err("`messages` is empty; send at least one message".into());
    }
    let mut messages = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let role = match m.get("role").and_then(Value::as_str) {
            Some("system" | "developer") => Role::System,
            Some("user") => Role::User,
            Some("assistant") => Role::Assistant,
            Some(r) => return Err(format!("messages[{i}] has role '{r}'; system, user and assistant are served")),
            None => return Err(format!("messages[{i}] has no `role`")),
        };
        let text = match m.get("content") {
            Some(Value::String(s)) => s.clone(),
            // content parts: only text ones
            Some(Value::Array(parts)) => {
                let mut text = String::new();
                for p in parts {
                    match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                        (Some("text"), Some(t)) => text.push_str(t),
                        _ => return Err(format!("messages[{i}] has a content part that is not text")),
                    }
                }
                text
            }
            _ => return Err(format!("messages[{i}] needs `content`, a string")),
        };
        messages.push(ChatMessage { role, text });
    }
    for tools in ["tools", "functions"] {
        if o.get(tools).is_some_and(|v| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty())) {
            return Err(format!("`{tools}` are not supported"));
        }
    }
    if let Some(f) = o.get("response_format").filter(|v| !v.is_null())
        && f.get("type").and_then(Value::as_str) != Some("text")
    {
        return Err("`response_format` other than text is not supported".into());
    }
    let params = params(&o, defaults, true)?;
    let seeded = o.get("seed").is_some_and(|v| !v.is_null());
    Ok(GenerationRequest { prompt: Prompt::Chat(messages), params, stream: flag(&o, "stream")?, seeded })
}

fn object(body: &[u8]) -> Result<Map<String, Value>, String> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err("the body must be a JSON object".into()),
        Err(e) => Err(format!("the body is not valid JSON: {e}")),
    }
}

/// The sampling and speculation fields, over the server's defaults.
fn params(o: &Map<String, Value>, defaults: &GenerateParams, chat: bool) -> Result<GenerateParams, String> {
    let mut p = GenerateParams { chat, stop_at_eos: true, ..defaults.clone() };
    // chat's newer name for max_tokens
    for key in ["max_tokens", "max_completion_tokens"] {
        if let Some(n) = uint(o, key)? {
            if n == 0 {
                return Err(format!("`{key}` must be at least 1"));
            }
            p.max_tokens = n as usize;
        }
    }
    if let Some(t) = number(o, "temperature")? {
        p.temperature = t as f32;
    }
    if let Some(t) = number(o, "top_p")? {
        p.top_p = t as f32;
    }
    if let Some(k) = uint(o, "top_k")? {
        p.top_k = k.min(u32::MAX as u64) as u32;
    }
    if let Some(s) = uint(o, "seed")? {
        p.seed = s;
    }
    p.stop = match o.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| s.as_str().map(str::to_string).ok_or("`stop` must be a string or an array of strings"))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("`stop` must be a string or an array of strings".into()),
    };
    if p.stop.iter().any(String::is_empty) {
        return Err("a `stop` string is empty; give at least one character".into());
    }
    if let Some(v) = o.get("speculate").filter(|v| !v.is_null()) {
        let s = v.as_str().ok_or("`speculate` must be a string: off, suffix, draft, head or auto")?;
        p.speculate = s.parse().map_err(|_| format!("unknown `speculate` '{s}' (off, suffix, draft, head, auto)"))?;
    }
    refuse_unless(o, "n", &Value::from(1))?;
    refuse_unless(o, "best_of", &Value::from(1))?;
    for key in ["presence_penalty", "frequency_penalty", "repetition_penalty"] {
        if number(o, key)?.is_some_and(|v| v != 0.0) {
            return Err(format!("`{key}` is not supported (only 0)"));
        }
    }
    for key in ["logprobs", "top_logprobs"] {
        if o.get(key).is_some_and(|v| !v.is_null() && v != &Value::Bool(false) && v != &Value::from(0)) {
            return Err(format!("`{key}` is not supported"));
        }
    }
    if o.get("logit_bias").is_some_and(|v| v.as_object().is_none_or(|m| !m.is_empty()) && !v.is_null()) {
        return Err("`logit_bias` is not supported".into());
    }
    // the same checks as the command line's flags, in the API's words
    if !(p.temperature >= 0.0 && p.temperature.is_finite()) {
        return Err("`temperature` must be a number >= 0".into());
    }
    if !(p.top_p > 0.0 && p.top_p <= 1.0) {
        return Err("`top_p` must be in (0, 1]".into());
    }
    Ok(p)
}

/// A seed no earlier request had (in all likelihood): std's per-map random keys, hashed.
pub fn fresh_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new().build_hasher().finish()
}

/// A field the engine only honours at one value.
fn refuse_unless(o: &Map<String, Value>, key: &str, allowed: &Value) -> Result<(), String> {
    match o.get(key) {
        Some(v) if !v.is_null() && v != allowed && v.as_f64().zip(allowed.as_f64()).is_none_or(|(a, b)| a != b) => {
            Err(format!("`{key}` is only supported as {allowed}"))
        }
        _ => Ok(()),
    }
}

fn number(o: &Map<String, Value>, key: &str) -> Result<Option<f64>, String> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or(format!("`{key}` must be a number")),
    }
}

fn uint(o: &Map<String, Value>, key: &str) -> Result<Option<u64>, String> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or(format!("`{key}` must be a whole number >= 0")),
    }
}

fn flag(o: &Map<String, Value>, key: &str) -> Result<bool, String> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(format!("`{key}` must be true or false")),
    }
}

/// The API's finish reason for the engine's.
pub fn finish_reason(engine: &str) -> &'static str {
    match engine {
        "length" => "length",
        _ => "stop",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> GenerateParams {
        GenerateParams { max_tokens: 99, temperature: 0.0, ..Default::default() }
    }

    #[test]
    fn reads_a_completion_over_the_defaults() {
        let r =
            completion(br#"{"prompt": "Hi", "max_tokens": 5, "stop": "\n", "seed": 7, "n": 1}"#, &defaults()).unwrap();
        assert_eq!(r.prompt, Prompt::Text("Hi".into()));
        assert_eq!((r.params.max_tokens, r.params.seed, r.params.chat, r.stream, r.seeded), (5, 7, false, false, true));
        assert_eq!(r.params.stop, vec!["\n".to_string()]);
        let r = completion(br#"{"prompt": ["Hi"], "temperature": 0.5, "stream": true}"#, &defaults()).unwrap();
        assert_eq!((r.params.max_tokens, r.params.temperature, r.stream), (99, 0.5, true));
        assert!(!r.seeded);
        assert_ne!(fresh_seed(), fresh_seed());
    }

    #[test]
    fn reads_a_conversation() {
        let body = br#"{"messages": [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hello"}]},
            {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "Again"}],
            "max_completion_tokens": 3, "speculate": "off", "frequency_penalty": 0}"#;
        let r = chat(body, &defaults()).unwrap();
        let Prompt::Chat(m) = &r.prompt else { panic!("not a chat") };
        assert_eq!(m.len(), 4);
        assert_eq!((m[0].role, m[1].text.as_str()), (Role::System, "Hello"));
        assert_eq!((r.params.max_tokens, r.params.chat, r.params.speculate), (3, true, crate::spec::SpecMode::Off));
    }

    #[test]
    fn refuses_what_it_cannot_honour() {
        let d = defaults();
        for (body, says) in [
            (&br#"{"prompt": "a""#[..], "not valid JSON"),
            (br#"[1]"#, "JSON object"),
            (br#"{}"#, "no `prompt`"),
            (br#"{"prompt": ["a", "b"]}"#, "one string"),
            (br#"{"prompt": "a", "max_tokens": 0}"#, "at least 1"),
            (br#"{"prompt": "a", "max_tokens": -3}"#, "whole number"),
            (br#"{"prompt": "a", "temperature": "hot"}"#, "must be a number"),
            (br#"{"prompt": "a", "temperature": -1}"#, ">= 0"),
            (br#"{"prompt": "a", "top_p": 0}"#, "(0, 1]"),
            (br#"{"prompt": "a", "n": 2}"#, "`n`"),
            (br#"{"prompt": "a", "stop": [""]}"#, "empty"),
            (br#"{"prompt": "a", "stop": 5}"#, "`stop`"),
            (br#"{"prompt": "a", "echo": true}"#, "`echo`"),
            (br#"{"prompt": "a", "logprobs": 2}"#, "`logprobs`"),
            (br#"{"prompt": "a", "presence_penalty": 0.5}"#, "presence_penalty"),
            (br#"{"prompt": "a", "speculate": "fast"}"#, "unknown `speculate`"),
            (br#"{"prompt": "a", "stream": "yes"}"#, "true or false"),
        ] {
            let e = completion(body, &d).unwrap_err();
            assert!(e.contains(says), "{e:?} should say {says:?}");
        }
        for (body, says) in [
            (&br#"{"messages": []}"#[..], "empty"),
            (br#"{"prompt": "a"}"#, "needs `messages`"),
            (br#"{"messages": [{"role": "tool", "content": "x"}]}"#, "role 'tool'"),
            (br#"{"messages": [{"content": "x"}]}"#, "no `role`"),
            (br#"{"messages": [{"role": "user"}]}"#, "needs `content`"),
            (br#"{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}"#, "not text"),
            (br#"{"messages": [{"role": "user", "content": "x"}], "tools": [{}]}"#, "`tools`"),
            (
                br#"{"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}}"#,
                "response_format",
            ),
        ] {
            let e = chat(body, &d).unwrap_err();
            assert!(e.contains(says), "{e:?} should say {says:?}");
        }
    }
}
