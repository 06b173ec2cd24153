//! Two generations of one prompt interleaved round by round on one GPU, each timed only while
//! it runs: the side-by-side comparison that a noisy machine cannot tilt.
//!
//! On these shared 2-core machines the speed of the same binary drifts by 10-30% within
//! seconds, so two arms run one after the other (even in alternating order) differ by noise
//! of the size of the effects being measured. Here the arms take turns at the granularity of a
//! round (a plain step or a speculative round): whichever has produced fewer tokens runs next,
//! the other blocks, and the time an arm spends blocked is taken out of its decode time. A slow
//! second of the machine then lands on both arms alike. Only one arm touches the GPU at a time,
//! so neither slows the other down.

use crate::engine::{CancelToken, Engine, GenerateParams, Output};
use crate::error::Result;
use std::sync::{Condvar, Mutex};
use std::time::Instant;

struct Turns {
    /// Tokens each arm has produced.
    tokens: [usize; 2],
    /// Whether each arm has finished (then the other runs without waiting).
    done: [bool; 2],
    /// The arm that may run.
    turn: usize,
}

struct Lockstep {
    state: Mutex<Turns>,
    cv: Condvar,
}

impl Lockstep {
    fn new(first: usize) -> Lockstep {
        Lockstep { state: Mutex::new(Turns { tokens: [0; 2], done: [false; 2], turn: first }), cv: Condvar::new() }
    }

    /// Blocks until arm `i` may run; returns the milliseconds it waited.
    fn wait_turn(&self, i: usize) -> f64 {
        let t = Instant::now();
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while s.turn != i && !s.done[1 - i] {
            s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        t.elapsed().as_secs_f64() * 1e3
    }

    /// Arm `i` produced a token: once it is level with or ahead of the other, the other runs
    /// next. Returns the milliseconds arm `i` waited.
    fn token(&self, i: usize) -> f64 {
        {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            s.tokens[i] += 1;
            if s.done[1 - i] || s.tokens[i] < s.tokens[1 - i] {
                return 0.0;
            }
            s.turn = 1 - i;
        }
        self.cv.notify_all();
        self.wait_turn(i)
    }

    fn finish(&self, i: usize) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.done[i] = true;
        s.turn = 1 - i;
        drop(s);
        self.cv.notify_all();
    }
}

/// Marks an arm finished however it ends (an error or a panic must not leave the other blocked).
struct Finish<'a>(&'a Lockstep, usize);

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        self.0.finish(self.1)
    }
}

/// Generates from `prompt` with each of the two arms (engine and parameters) in lockstep, arm
/// `first` starting, and returns both outputs with the time each spent waiting for the other
/// taken out of its decode time (and, when it speculated, out of its unaccounted time).
pub fn side_by_side(arms: [(&mut Engine, &GenerateParams); 2], prompt: &[u32], first: usize) -> Result<[Output; 2]> {
    let lock = Lockstep::new(first);
    let run = |i: usize, engine: &mut Engine, params: &GenerateParams| -> Result<Output> {
        let _finish = Finish(&lock, i);
        lock.wait_turn(i); // before prefill, which is not compared
        let mut waited = 0.0;
        let mut out = engine.generate_tokens(prompt, params, &CancelToken::default(), |_| {
            waited += lock.token(i);
            true
        })?;
        out.stats.decode_ms = (out.stats.decode_ms - waited).max(0.0);
        if let Some(s) = out.spec.as_mut() {
            s.other_ms = (s.other_ms - waited).max(0.0);
        }
        Ok(out)
    };
    let [(e0, p0), (e1, p1)] = arms;
    let (r0, r1) = std::thread::scope(|s| {
        let h0 = s.spawn(|| run(0, e0, p0));
        let h1 = s.spawn(|| run(1, e1, p1));
        let joined = |h: std::thread::ScopedJoinHandle<'_, Result<Output>>| {
            h.join().unwrap_or_else(|_| Err(crate::Error::msg("a benchmark arm panicked")))
        };
        (joined(h0), joined(h1))
    });
    Ok([r0?, r1?])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two arms producing tokens at different rates never run at once, and the one that is
    /// behind always runs next.
    #[test]
    fn arms_take_turns_by_tokens_produced() {
        let lock = Lockstep::new(0);
        let running = std::sync::atomic::AtomicUsize::new(0);
        let log = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for (i, per_round) in [(0usize, 3usize), (1, 1)] {
                let (lock, running, log) = (&lock, &running, &log);
                s.spawn(move || {
                    let _f = Finish(lock, i);
                    lock.wait_turn(i);
                    for _round in 0..12 / per_round {
                        assert_eq!(running.fetch_add(1, std::sync::atomic::Ordering::SeqCst), 0, "both arms ran");
                        std::thread::sleep(std::time::Duration::from_millis(1));
                        running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                        for _ in 0..per_round {
                            log.lock().unwrap().push(i);
                            lock.token(i);
                        }
                    }
                });
            }
        });
        let log = log.into_inner().unwrap();
        assert_eq!(log.len(), 24);
        // at every point, the arms' token counts differ by less than a round of the faster one
        let mut n = [0i64; 2];
        for &i in &log {
            n[i] += 1;
            assert!((n[0] - n[1]).abs() <= 3, "{log:?}");
        }
    }
}
