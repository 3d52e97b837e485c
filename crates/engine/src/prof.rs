//! An opt-in wall-time profile of the forward pass by stage, for finding the serial parts that
//! keep many threads idle (`perf` is not everywhere the engine runs): set `LLM_SERVER_PROFILE=1`
//! and `llm-server bench` prints the table. Off, a stage costs one relaxed load.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// 0 unknown, 1 off, 2 on.
static STATE: AtomicU8 = AtomicU8::new(0);
static TABLE: Mutex<Vec<(&'static str, Duration, u64)>> = Mutex::new(Vec::new());

fn enabled() -> bool {
    match STATE.load(Ordering::Relaxed) {
        0 => {
            let on = std::env::var_os("LLM_SERVER_PROFILE").is_some_and(|v| v != "0");
            STATE.store(if on { 2 } else { 1 }, Ordering::Relaxed);
            on
        }
        s => s == 2,
    }
}

/// Times the stage `name` until the guard drops (nothing when the profile is off).
pub(crate) fn stage(name: &'static str) -> Option<Stage> {
    enabled().then(|| Stage {
        name,
        start: Instant::now(),
    })
}

/// A running stage.
pub(crate) struct Stage {
    name: &'static str,
    start: Instant,
}

impl Drop for Stage {
    fn drop(&mut self) {
        let dt = self.start.elapsed();
        let mut t = TABLE.lock().unwrap_or_else(|e| e.into_inner());
        match t.iter_mut().find(|e| e.0 == self.name) {
            Some(e) => {
                e.1 += dt;
                e.2 += 1;
            }
            None => t.push((self.name, dt, 1)),
        }
    }
}

/// The stages timed so far (name, total, calls), largest first; empty when off.
pub fn report() -> Vec<(&'static str, Duration, u64)> {
    let mut t = TABLE.lock().unwrap_or_else(|e| e.into_inner()).clone();
    t.sort_by_key(|e| std::cmp::Reverse(e.1));
    t
}

/// Forgets the stages timed so far.
pub fn reset() {
    TABLE.lock().unwrap_or_else(|e| e.into_inner()).clear();
}
