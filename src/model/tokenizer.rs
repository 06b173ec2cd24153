//! Text <-> token ids, through the `tokenizers` crate: loaded from tokenizer.json when the model
//! has one, else rebuilt from the GGUF vocabulary, merges and pre-tokenizer name.

use crate::error::{Error, Result};
use crate::model::gguf::Gguf;
use std::path::Path;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior};

/// Qwen2's pre-tokenizer split (as its tokenizer.json and llama.cpp's llama-vocab.cpp define it).
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Tokens that end generation (end-of-text, end-of-turn).
    pub stop_tokens: Vec<u32>,
    pub bos: Option<u32>,
    pub add_bos: bool,
    /// The model's chat template, when it ships one.
    pub chat_template: Option<String>,
}

impl Tokenizer {
    pub fn from_gguf(g: &Gguf) -> Result<Tokenizer> {
        let bad = |why: &str| Error::BadGguf { path: g.path.clone(), why: why.to_string() };
        let model = g.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(Error::msg(format!(
                "{}: tokenizer model '{model}' is not supported (augur reads byte-level BPE, 'gpt2')",
                g.path
            )));
        }
        let tokens =
            g.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()).ok_or_else(|| bad("no tokenizer.ggml.tokens"))?;
        let merges =
            g.get("tokenizer.ggml.merges").and_then(|v| v.as_array()).ok_or_else(|| bad("no tokenizer.ggml.merges"))?;
        let types = g.get("tokenizer.ggml.token_type").and_then(|v| v.as_array());
        let mut vocab = ahash_map();
        let mut special = Vec::new();
        for (i, t) in tokens.iter().enumerate() {
            let s = t.as_str().ok_or_else(|| bad("a vocabulary entry is not a string"))?;
            vocab.insert(s.to_string(), i as u32);
            // token type 3 = control, 4 = user-defined: matched whole in the input text
            let ty = types.and_then(|a| a.get(i)).and_then(|v| v.as_u64()).unwrap_or(1);
            if ty == 3 || ty == 4 {
                special.push(AddedToken::from(s.to_string(), ty == 3));
            }
        }
        let merges: Vec<(String, String)> = merges
            .iter()
            .map(|m| {
                let s = m.as_str().unwrap_or("");
                let (a, b) = s.split_once(' ').unwrap_or((s, ""));
                (a.to_string(), b.to_string())
            })
            .collect();
        let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(|e| bad(&format!("BPE: {e}")))?;
        let pre = g.get("tokenizer.ggml.pre").and_then(|v| v.as_str()).unwrap_or("default");
        let pre_tok: PreTokenizerWrapper = match pre {
            "qwen2" => {
                let split =
                    Split::new(SplitPattern::Regex(QWEN2_SPLIT.into()), SplitDelimiterBehavior::Isolated, false)
                        .map_err(|e| bad(&format!("regex: {e}")))?;
                Sequence::new(vec![split.into(), ByteLevel::new(false, false, false).into()]).into()
            }
            // smollm, starcoder and friends: single digits, then GPT-2's split.
            "smollm" | "starcoder" | "refact" => {
                Sequence::new(vec![Digits::new(true).into(), ByteLevel::new(false, false, true).into()]).into()
            }
            _ => ByteLevel::new(false, false, true).into(),
        };
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre_tok));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        let _ = inner.add_special_tokens(special);
        let id = |k: &str| g.get(k).and_then(|v| v.as_u64()).map(|v| v as u32);
        let mut stop_tokens: Vec<u32> = id("tokenizer.ggml.eos_token_id").into_iter().collect();
        for name in ["<|im_end|>", "<|endoftext|>", "<|eot_id|>"] {
            if let Some(t) = inner.token_to_id(name)
                && !stop_tokens.contains(&t)
            {
                stop_tokens.push(t);
            }
        }
        Ok(Tokenizer {
            inner,
            stop_tokens,
            bos: id("tokenizer.ggml.bos_token_id"),
            add_bos: g
                .get("tokenizer.ggml.add_bos_token")
                .map(|v| *v == crate::model::gguf::Value::Bool(true))
                .unwrap_or(false),
            chat_template: g.get("tokenizer.chat_template").and_then(|v| v.as_str()).map(String::from),
        })
    }

    /// Loads a tokenizer.json (Hugging Face format).
    pub fn from_file(path: &Path) -> Result<Tokenizer> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| Error::msg(format!("{}: cannot load tokenizer ({e})", path.display())))?;
        let stop_tokens =
            ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>"].iter().filter_map(|t| inner.token_to_id(t)).collect();
        Ok(Tokenizer { inner, stop_tokens, bos: None, add_bos: false, chat_template: None })
    }

    /// The tokenizer in Hugging Face's tokenizer.json format.
    pub fn to_json(&self) -> Result<String> {
        self.inner.to_string(false).map_err(|e| Error::msg(format!("tokenizer: {e}")))
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| Error::msg(format!("tokenizer: {e}")))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if self.add_bos {
            ids.extend(self.bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, true).unwrap_or_default()
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The vocabulary entry of an id (None outside the vocabulary).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Whether two tokenizers map every id to the same text, so that one model's draft tokens mean
    /// the same to another. Returns the first id where they differ.
    pub fn first_difference(&self, other: &Tokenizer) -> Option<u32> {
        let n = self.vocab_size().max(other.vocab_size()) as u32;
        (0..n).find(|&id| self.id_to_token(id) != other.id_to_token(id))
    }

    pub fn token_to_id(&self, t: &str) -> Option<u32> {
        self.inner.token_to_id(t)
    }

    /// Wraps a user message in the model's chat format. Both supported families use ChatML; the
    /// system line follows the model's own template when it has a default one.
    pub fn chat_prompt(&self, user: &str) -> String {
        self.chat_conversation(&[ChatMessage::user(user)])
    }

    /// A whole conversation in the model's chat format, ending where the assistant's next reply
    /// begins: earlier turns in order, each closed by the end-of-turn marker, so that a follow-up
    /// ("rewrite your previous answer...") sees what was said. A conversation that opens with a
    /// system message uses it in place of the model's default one.
    pub fn chat_conversation(&self, messages: &[ChatMessage]) -> String {
        let mut s = String::new();
        let has_system = messages.first().is_some_and(|m| m.role == Role::System);
        if !has_system && let Some(sys) = self.chat_template.as_deref().and_then(default_system) {
            s.push_str(&format!("<|im_start|>system\n{sys}<|im_end|>\n"));
        }
        for m in messages {
            s.push_str(&format!("<|im_start|>{}\n{}<|im_end|>\n", m.role.name(), m.text));
        }
        s.push_str("<|im_start|>assistant\n");
        s
    }
}

/// Who said a message of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: Role,
    pub text: String,
}

impl ChatMessage {
    pub fn user(text: &str) -> ChatMessage {
        ChatMessage { role: Role::User, text: text.to_string() }
    }
    pub fn assistant(text: &str) -> ChatMessage {
        ChatMessage { role: Role::Assistant, text: text.to_string() }
    }
    pub fn system(text: &str) -> ChatMessage {
        ChatMessage { role: Role::System, text: text.to_string() }
    }
}

/// The default system message a ChatML template inserts when the conversation has none.
fn default_system(template: &str) -> Option<String> {
    let t = template.replace("\\n", "\n");
    let tag = "<|im_start|>system\n";
    t.match_indices(tag).find_map(|(i, _)| {
        let rest = &t[i + tag.len()..];
        let body = &rest[..rest.find("<|im_end|>")?];
        // skip template branches that splice in the user's own system message
        (!body.is_empty() && !body.contains(['\'', '{', '}'])).then(|| body.to_string())
    })
}

fn ahash_map() -> tokenizers::models::bpe::Vocab {
    Default::default()
}

/// Decodes tokens as they stream in, emitting only complete UTF-8 text.
pub struct StreamDecoder {
    ids: Vec<u32>,
    emitted: usize,
}

impl StreamDecoder {
    pub fn new() -> StreamDecoder {
        StreamDecoder { ids: Vec::new(), emitted: 0 }
    }
    /// Adds a token and returns the new text it completes (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        self.ids.push(id);
        let text = tok.decode(&self.ids);
        if text.ends_with('\u{FFFD}') || text.len() < self.emitted {
            return String::new();
        }
        let new = text[self.emitted..].to_string();
        self.emitted = text.len();
        new
    }
}

impl Default for StreamDecoder {
    fn default() -> Self {
        Self::new()
    }
}
