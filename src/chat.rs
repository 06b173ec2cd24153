//! A conversation kept across turns (`augur chat`, the chat example): each new user message is
//! asked with the exchanges before it, in the model's chat template. The engine keeps the KV
//! entries of the last generation, so a turn prefills only what is new since the last answer;
//! and the suffix speculator sees the earlier answers, which follow-ups ("shorten that", "now in
//! French") copy from.

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::model::tokenizer::ChatMessage;

#[derive(Debug, Clone, Default)]
pub struct Chat {
    /// Replaces the model's default system message.
    pub system: Option<String>,
    /// Earlier exchanges, each a user message and the answer to it.
    pub history: Vec<(String, String)>,
}

impl Chat {
    pub fn new(system: Option<String>) -> Chat {
        Chat { system, history: Vec::new() }
    }

    /// The conversation with `user` asked next, after the newest `keep` exchanges.
    pub fn messages(&self, user: &str, keep: usize) -> Vec<ChatMessage> {
        let mut m = Vec::new();
        if let Some(s) = &self.system {
            m.push(ChatMessage::system(s));
        }
        for (q, a) in &self.history[self.history.len() - keep.min(self.history.len())..] {
            m.push(ChatMessage::user(q));
            m.push(ChatMessage::assistant(a));
        }
        m.push(ChatMessage::user(user));
        m
    }

    /// Token ids of the prompt for `user`'s message: as many of the newest exchanges as leave
    /// `reply_tokens` of the engine's context free for the answer (at most half of it), and how
    /// many of the oldest exchanges had to be forgotten for that. An error, and nothing
    /// forgotten, when the message alone does not fit.
    pub fn prompt(&mut self, engine: &Engine, user: &str, reply_tokens: usize) -> Result<(Vec<u32>, usize)> {
        let max_ctx = engine.model.max_ctx;
        let room = max_ctx.saturating_sub(reply_tokens.min(max_ctx / 2)).max(1);
        for keep in (0..=self.history.len()).rev() {
            let ids = engine.encode_conversation(&self.messages(user, keep))?;
            if ids.len() <= room {
                // forgotten for good: later turns then start with the same tokens, whose KV
                // entries the engine still holds
                let dropped = self.history.len() - keep;
                self.history.drain(..dropped);
                return Ok((ids, dropped));
            }
            if keep == 0 {
                return Err(Error::msg(format!(
                    "this message takes {} tokens and the context holds {max_ctx} with {} kept for the answer; \
                     shorten it or raise --ctx",
                    ids.len(),
                    max_ctx - room
                )));
            }
        }
        unreachable!("the loop returns at keep = 0")
    }

    /// Records an exchange once it has been answered.
    pub fn record(&mut self, user: &str, answer: &str) {
        self.history.push((user.to_string(), answer.to_string()));
    }

    /// Forgets the exchanges (the system message stays).
    pub fn reset(&mut self) {
        self.history.clear();
    }
}
