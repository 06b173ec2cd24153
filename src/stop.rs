//! Stop strings: a generation ends where its text first contains one of them (`--stop`), and
//! the text given out ends just before it. A speculative round commits several tokens at once,
//! so the engine checks after every committed token and drops the round's tokens past the stop;
//! streamed text holds back any tail that could still grow into a stop string, so no piece of
//! one is ever printed.

/// Byte offset in `text` where the earliest stop string starts, looking only at matches that
/// take in some of the text from byte `from` on (the text before it was checked already).
pub fn find(stops: &[String], text: &str, from: usize) -> Option<usize> {
    stops
        .iter()
        .filter_map(|s| {
            // a match ending past `from` starts at or after from - len(s) + 1
            let start = floor_char_boundary(text, from.saturating_sub(s.len().saturating_sub(1)));
            text[start..].find(s.as_str()).map(|i| start + i)
        })
        .min()
}

/// How many bytes at the end of `text` begin some stop string (and so cannot be streamed yet):
/// the longest proper prefix of a stop string that `text` ends with.
pub fn held_back(stops: &[String], text: &str) -> usize {
    stops
        .iter()
        .filter_map(|s| (1..s.len()).rev().filter(|&n| s.is_char_boundary(n)).find(|&n| text.ends_with(&s[..n])))
        .max()
        .unwrap_or(0)
}

/// The largest char boundary of `text` at or below `i`.
fn floor_char_boundary(text: &str, i: usize) -> usize {
    let mut i = i.min(text.len());
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Streams text with stop strings: `push` takes each new piece and returns what can be given
/// out now, `finish` the rest once generation has ended.
#[derive(Debug, Default)]
pub struct StopFilter {
    stops: Vec<String>,
    text: String,
    emitted: usize,
    stopped: bool,
}

impl StopFilter {
    pub fn new(stops: &[String]) -> StopFilter {
        StopFilter { stops: stops.to_vec(), ..Default::default() }
    }

    /// Adds a piece of generated text; returns the text that can be given out now.
    pub fn push(&mut self, piece: &str) -> &str {
        if self.stopped {
            return "";
        }
        let from = self.text.len();
        self.text.push_str(piece);
        let safe = match find(&self.stops, &self.text, from) {
            Some(at) => {
                self.stopped = true;
                self.text.truncate(at);
                at
            }
            None => self.text.len() - held_back(&self.stops, &self.text),
        };
        let out = &self.text[self.emitted.min(safe)..safe];
        self.emitted = self.emitted.max(safe);
        out
    }

    /// The text held back, given out once generation has ended without reaching a stop.
    pub fn finish(&mut self) -> &str {
        let out = &self.text[self.emitted..];
        self.emitted = self.text.len();
        out
    }

    /// Whether a stop string has been reached.
    pub fn stopped(&self) -> bool {
        self.stopped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stops(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn finds_the_earliest_stop_that_ends_in_the_new_text() {
        let s = stops(&["```", "END"]);
        assert_eq!(find(&s, "fn main() {}\n```\nEND", 0), Some(13));
        // a match wholly before `from` was seen already; one across it counts
        assert_eq!(find(&s, "ab```cd", 5), None);
        assert_eq!(find(&s, "ab```cd", 4), Some(2));
        assert_eq!(find(&s, "no stop here", 0), None);
        // multi-byte text around the search start
        assert_eq!(find(&s, "é```", 2), Some(2));
        assert_eq!(find(&stops(&["日本"]), "x日本", 5), Some(1));
    }

    #[test]
    fn holds_back_only_what_could_become_a_stop() {
        let s = stops(&["```", "</answer>"]);
        assert_eq!(held_back(&s, "code``"), 2);
        assert_eq!(held_back(&s, "text </ans"), 5);
        assert_eq!(held_back(&s, "plain"), 0);
        assert_eq!(held_back(&s, ""), 0);
        assert_eq!(held_back(&stops(&["日本"]), "x日"), 3);
    }

    #[test]
    fn a_stream_never_shows_a_piece_of_a_stop_string() {
        let mut f = StopFilter::new(&stops(&["```"]));
        let mut shown = String::new();
        for piece in ["let x", " = 1;`", "`", "` trailing", " more"] {
            shown.push_str(f.push(piece));
        }
        assert!(f.stopped());
        assert_eq!(shown, "let x = 1;");
        assert_eq!(f.finish(), "");
        // no stop reached: the held-back tail comes out at the end
        let mut f = StopFilter::new(&stops(&["```"]));
        assert_eq!(f.push("a ``"), "a ");
        assert_eq!(f.push("b"), "``b");
        assert_eq!(f.push("`"), "");
        assert_eq!(f.finish(), "`");
        assert!(!f.stopped());
    }
}
