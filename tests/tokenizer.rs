//! Tokenizers rebuilt from GGUF vocabularies: exact ids for fixed strings (checked against the
//! GGUF vocabulary entries) and lossless round trips.

mod common;
use augur::model::gguf::Gguf;
use augur::model::tokenizer::{ChatMessage, StreamDecoder, Tokenizer};
use common::model_path;

const MIXED: &str = "fn main() {\n    println!(\"héllo, wörld! 你好 🌍\");\n\n\t\tlet x = 12345 + 0x1F;   // trailing   spaces   \n}\r\n  indented\n\n\n";

#[test]
fn smollm2_ids_match_the_gguf_vocabulary() {
    let g = Gguf::open(model_path("smollm2-135m")).unwrap();
    let t = Tokenizer::from_gguf(&g).unwrap();
    // vocab entries 6403 "Once", 1980 "Ġupon", 253 "Ġa", 655 "Ġtime", 28 ","
    assert_eq!(t.encode("Once upon a time,").unwrap(), [6403, 1980, 253, 655, 28]);
    // digits are split one by one (smollm pre-tokenizer)
    let ids = t.encode("2024").unwrap();
    assert_eq!(ids.len(), 4);
    // special tokens are matched whole
    assert_eq!(t.encode("<|im_start|>user").unwrap()[0], 1);
    assert!(t.stop_tokens.contains(&2));
    assert_eq!(t.decode(&t.encode(MIXED).unwrap()), MIXED);
    assert!(t.chat_prompt("hi").starts_with("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"));
}

#[test]
fn qwen_ids_match_the_gguf_vocabulary() {
    let g = Gguf::open(model_path("qwen2.5-coder-0.5b")).unwrap();
    let t = Tokenizer::from_gguf(&g).unwrap();
    // vocab entries 750 "def", 75698 "Ġfibonacci", 1445 "(n", 982 "):Ċ"
    assert_eq!(t.encode("def fibonacci(n):\n").unwrap(), [750, 75698, 1445, 982]);
    assert_eq!(t.encode("<|im_start|>").unwrap(), [151644]);
    assert!(t.stop_tokens.contains(&151645));
    assert_eq!(t.decode(&t.encode(MIXED).unwrap()), MIXED);
    assert!(t.chat_prompt("hi").contains("You are Qwen"));
}

#[test]
fn stream_decoder_emits_whole_characters() {
    let g = Gguf::open(model_path("smollm2-135m")).unwrap();
    let t = Tokenizer::from_gguf(&g).unwrap();
    let ids = t.encode("naïve 你好 🌍 done").unwrap();
    let mut d = StreamDecoder::new();
    let mut s = String::new();
    for &i in &ids {
        s.push_str(&d.push(&t, i));
    }
    assert_eq!(s, "naïve 你好 🌍 done");
}

#[test]
fn conversations_render_every_turn_in_chatml() {
    let g = Gguf::open(model_path("smollm2-135m")).unwrap();
    let t = Tokenizer::from_gguf(&g).unwrap();
    let turns = [ChatMessage::user("hi"), ChatMessage::assistant("Hello!"), ChatMessage::user("bye")];
    let text = t.chat_conversation(&turns);
    let sys = t.chat_prompt("x");
    let sys = &sys[..sys.find("<|im_start|>user").unwrap()];
    assert!(sys.starts_with("<|im_start|>system\n"), "{sys:?}");
    assert_eq!(
        &text[sys.len()..],
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nbye<|im_end|>\n<|im_start|>assistant\n"
    );
    // the single-message form is the same conversation
    assert_eq!(t.chat_prompt("hi"), t.chat_conversation(&turns[..1]));
    // a system message of the user's own replaces the default one
    let own = t.chat_conversation(&[ChatMessage::system("Be brief."), ChatMessage::user("hi")]);
    assert_eq!(own, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
}
