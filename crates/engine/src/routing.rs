//! Routing statistics (issue 11 req. 2): while recording is on, every MoE call of the CPU
//! backend counts, per layer, how often each expert was chosen — and so does a GPU backend's
//! hand-off of a layer's choices to its RAM experts (decode under hybrid placement, where the
//! choices cross to the host anyway). `llm-server calibrate` turns the counts into an
//! expert-stats file for the placement planner; `serve` and `bench` with `--expert-stats-out`
//! write the same from what they ran. Off, a MoE call pays one relaxed load.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

static ON: AtomicBool = AtomicBool::new(false);
static COUNTS: Mutex<BTreeMap<usize, Vec<u64>>> = Mutex::new(BTreeMap::new());

/// Start counting (from zero).
pub fn start() {
    COUNTS.lock().unwrap_or_else(|e| e.into_inner()).clear();
    ON.store(true, Ordering::Relaxed);
}

/// The counts so far, counting going on.
pub fn snapshot() -> BTreeMap<usize, Vec<u64>> {
    COUNTS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Whether counting is on.
pub fn recording() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Stop counting and take the counts: per layer, per expert, times chosen.
pub fn take() -> BTreeMap<usize, Vec<u64>> {
    ON.store(false, Ordering::Relaxed);
    std::mem::take(&mut *COUNTS.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Count the experts chosen by a MoE call of the layer whose expert tensor is `tensor`
/// (`blk.N.…`), `n_expert` experts in all.
pub fn record(tensor: &str, n_expert: usize, chosen: impl Iterator<Item = usize>) {
    if !ON.load(Ordering::Relaxed) {
        return;
    }
    let Some(layer) = tensor
        .strip_prefix("blk.")
        .and_then(|r| r.split('.').next())
        .and_then(|n| n.parse().ok())
    else {
        return;
    };
    let mut c = COUNTS.lock().unwrap_or_else(|e| e.into_inner());
    let row = c.entry(layer).or_insert_with(|| vec![0; n_expert]);
    for e in chosen {
        if let Some(v) = row.get_mut(e) {
            *v += 1;
        }
    }
}
