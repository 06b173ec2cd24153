//! Generations of one prompt by several arms (engines and parameters) interleaved round by round
//! on one GPU, each timed only while it runs: the side-by-side comparison that a noisy machine
//! cannot tilt.
//!
//! On these shared 2-core machines the speed of the same binary drifts by 10-30% within
//! seconds, so arms run one after the other (even in alternating order) differ by noise of the
//! size of the effects being measured. Here the arms take turns at the granularity of a round
//! (a plain step or a speculative round): whichever has produced the fewest tokens runs next,
//! the others block, and the time an arm spends blocked is taken out of its decode time. A slow
//! second of the machine then lands on every arm alike. Only one arm touches the GPU at a time,
//! so none slows another down.

use crate::engine::{CancelToken, Engine, GenerateParams, Output};
use crate::error::Result;
use std::sync::{Condvar, Mutex};
use std::time::Instant;

struct Turns {
    /// Tokens each arm has produced.
    tokens: Vec<usize>,
    /// Whether each arm has finished (it no longer takes turns).
    done: Vec<bool>,
    /// The arm that may run.
    turn: usize,
}

impl Turns {
    /// The unfinished arm with the fewest tokens, the first after `after` (cyclically) on ties.
    fn behind(&self, after: usize) -> Option<usize> {
        let n = self.tokens.len();
        (1..=n).map(|k| (after + k) % n).filter(|&j| !self.done[j]).min_by_key(|&j| self.tokens[j])
    }
}

struct Lockstep {
    state: Mutex<Turns>,
    cv: Condvar,
}

impl Lockstep {
    fn new(arms: usize, first: usize) -> Lockstep {
        let turns = Turns { tokens: vec![0; arms], done: vec![false; arms], turn: first };
        Lockstep { state: Mutex::new(turns), cv: Condvar::new() }
    }

    /// Blocks until arm `i` may run; returns the milliseconds it waited.
    fn wait_turn(&self, i: usize) -> f64 {
        let t = Instant::now();
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while s.turn != i {
            s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        t.elapsed().as_secs_f64() * 1e3
    }

    /// Arm `i` produced a token: it runs on while it is behind every other arm; otherwise the
    /// one furthest behind runs next. Returns the milliseconds arm `i` waited.
    fn token(&self, i: usize) -> f64 {
        {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            s.tokens[i] += 1;
            let next = s.behind(i).unwrap_or(i);
            if next == i || s.tokens[next] > s.tokens[i] {
                return 0.0;
            }
            s.turn = next;
        }
        self.cv.notify_all();
        self.wait_turn(i)
    }

    fn finish(&self, i: usize) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.done[i] = true;
        if let Some(next) = s.behind(i) {
            s.turn = next;
        }
        drop(s);
        self.cv.notify_all();
    }
}

/// Marks an arm finished however it ends (an error or a panic must not leave the others blocked).
struct Finish<'a>(&'a Lockstep, usize);

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        self.0.finish(self.1)
    }
}

/// Generates from `prompt` with each arm (engine and parameters) in lockstep, one thread per arm,
/// arm `first` starting, and returns the outputs in the arms' order, with the time each spent
/// waiting for the others taken out of its decode time (and, when it speculated, out of its
/// unaccounted time). Threads are spawned from arm `seat` on (cyclically): callers vary which
/// thread runs which arm, since on these machines the seat alone tilts a comparison by 1-2%.
pub fn side_by_side(
    arms: Vec<(&mut Engine, &GenerateParams)>,
    prompt: &[u32],
    first: usize,
    seat: usize,
) -> Result<Vec<Output>> {
    let n = arms.len();
    let lock = Lockstep::new(n, first);
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
    let mut seated: Vec<_> = arms.into_iter().enumerate().collect();
    seated.rotate_left(seat % n.max(1));
    let mut results: Vec<(usize, Result<Output>)> = std::thread::scope(|s| {
        let handles: Vec<_> = seated
            .into_iter()
            .map(|(i, (engine, params))| {
                let run = &run;
                (i, s.spawn(move || run(i, engine, params)))
            })
            .collect();
        handles
            .into_iter()
            .map(|(i, h)| (i, h.join().unwrap_or_else(|_| Err(crate::Error::msg("a benchmark arm panicked")))))
            .collect()
    });
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Arms producing tokens at different rates never run at once, and the one that is furthest
    /// behind always runs next.
    #[test]
    fn arms_take_turns_by_tokens_produced() {
        let rates = [3usize, 1, 2];
        let lock = Lockstep::new(rates.len(), 0);
        let running = std::sync::atomic::AtomicUsize::new(0);
        let log = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for (i, per_round) in rates.into_iter().enumerate() {
                let (lock, running, log) = (&lock, &running, &log);
                s.spawn(move || {
                    let _f = Finish(lock, i);
                    lock.wait_turn(i);
                    // the second arm stops early: the others must go on without it
                    let tokens = if i == 1 { 6 } else { 12 };
                    for _round in 0..tokens / per_round {
                        assert_eq!(running.fetch_add(1, std::sync::atomic::Ordering::SeqCst), 0, "two arms ran");
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
        assert_eq!(log.len(), 30);
        // at every point, running arms' token counts differ by less than a round of the fastest
        let mut n = [0i64; 3];
        for &i in &log {
            n[i] += 1;
            let live: Vec<i64> = (0..3).filter(|&j| j != 1 || n[1] < 6).map(|j| n[j]).collect();
            let spread = live.iter().max().unwrap() - live.iter().min().unwrap();
            assert!(spread <= 3, "{log:?}");
        }
    }
}
