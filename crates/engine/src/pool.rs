//! A persistent worker pool for the CPU ops: one job at a time, split into `n` parts (at most
//! one per thread), part 0 on the calling thread. Workers spin briefly on a ticket counter
//! before sleeping, so a decode step's hundreds of small matmuls pay neither a thread spawn
//! nor a wake-up each (DESIGN §3: a spinning pool, not rayon, for per-token latency).
//!
//! A job is handed over through atomics alone: the caller publishes a pointer and bumps the
//! ticket (generation and part count in one word), each worker of the job counts itself out
//! when done. Workers past the part count skip the job: a small job on sixteen threads waits
//! for the threads it uses, not for all fifteen workers to check in (any of them descheduled
//! held up every small matmul of a decode step). The condition variables (and their
//! system calls) come in only when a side has actually gone to sleep, which the `sleepers`
//! and `caller_waits` counters say: with sixteen threads a mutex around the job pointer and an
//! unconditional `notify_all` per job cost a decode step more than its small matmuls.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;

/// How long a worker spins for the next job before it sleeps.
const SPIN_ROUNDS: u32 = 20_000;

/// The caller's closure, lifetime erased; [`Pool::run_parts`] keeps it (and this reference to it, on
/// its stack) alive until every worker is done with it.
type Job = &'static (dyn Fn(usize) + Sync);

struct Shared {
    /// The current job: a pointer to a [`Job`] on the caller's stack (null between jobs).
    job: AtomicPtr<Job>,
    /// `generation << 16 | parts` of the current job (see [`ticket`]).
    ticket: AtomicU64,
    remaining: AtomicUsize,
    panicked: AtomicBool,
    shutdown: AtomicBool,
    /// Workers sleeping (or about to) on `wake`.
    sleepers: AtomicUsize,
    sleep_lock: Mutex<()>,
    wake: Condvar,
    /// Whether the caller sleeps (or is about to) on `done`.
    caller_waits: AtomicBool,
    done: Condvar,
    done_lock: Mutex<()>,
}

impl Shared {
    /// Wakes sleeping workers, if any (SeqCst with the workers' own check: a worker either
    /// sees the new generation before it sleeps, or is counted here and gets the signal).
    fn wake_workers(&self) {
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = self.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
            self.wake.notify_all();
        }
    }
}

/// A fixed set of worker threads.
pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Serialises `run_parts` calls from different threads (one job at a time).
    running: Mutex<()>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pool({} threads)", self.threads())
    }
}

impl Pool {
    /// A pool running jobs on `threads` threads (the caller plus `threads − 1` workers).
    pub fn new(threads: usize) -> Pool {
        let shared = Arc::new(Shared {
            job: AtomicPtr::new(std::ptr::null_mut()),
            ticket: AtomicU64::new(0),
            remaining: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            sleep_lock: Mutex::new(()),
            wake: Condvar::new(),
            caller_waits: AtomicBool::new(false),
            done: Condvar::new(),
            done_lock: Mutex::new(()),
        });
        let workers = (1..threads.max(1))
            .map(|i| {
                let s = shared.clone();
                std::thread::Builder::new()
                    .name(format!("llm-cpu-{i}"))
                    .spawn(move || worker(&s, i))
                    .unwrap_or_else(|e| panic!("cannot start CPU worker thread: {e}"))
            })
            .collect();
        Pool {
            shared,
            workers,
            running: Mutex::new(()),
        }
    }

    /// The process-wide pool, made on first use with `threads` threads.
    pub fn global(threads: usize) -> &'static Pool {
        static POOL: OnceLock<Pool> = OnceLock::new();
        POOL.get_or_init(|| Pool::new(threads))
    }

    /// Threads a job is split across.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Run `f(0) … f(parts − 1)` at once (`parts` clamped to `1..=threads`), `f(0)` on this
    /// thread and the others on the first `parts − 1` workers; returns when all are done. A
    /// panic in any part is raised here.
    pub fn run_parts(&self, parts: usize, f: &(dyn Fn(usize) + Sync)) {
        let parts = parts.clamp(1, self.threads());
        if parts == 1 {
            return f(0);
        }
        let _one_at_a_time = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let s = &self.shared;
        // SAFETY: only the lifetime is erased; we wait below until no worker uses the pointer.
        let job: Job = unsafe {
            std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static (dyn Fn(usize) + Sync)>(f)
        };
        s.job
            .store(&job as *const Job as *mut Job, Ordering::Release);
        s.remaining.store(parts - 1, Ordering::Release);
        let generation = s.ticket.load(Ordering::Relaxed) >> 16;
        s.ticket
            .store(ticket(generation + 1, parts), Ordering::SeqCst);
        s.wake_workers();
        let mine = catch_unwind(AssertUnwindSafe(|| f(0)));
        let mut spins = 0u32;
        while s.remaining.load(Ordering::Acquire) != 0 {
            if spins < SPIN_ROUNDS {
                spins += 1;
                spin(spins);
            } else {
                let g = s.done_lock.lock().unwrap_or_else(|e| e.into_inner());
                s.caller_waits.store(true, Ordering::SeqCst);
                if s.remaining.load(Ordering::SeqCst) != 0 {
                    drop(s.done.wait_timeout(g, std::time::Duration::from_millis(1)));
                }
                s.caller_waits.store(false, Ordering::SeqCst);
            }
        }
        s.job.store(std::ptr::null_mut(), Ordering::Release);
        if let Err(p) = mine {
            std::panic::resume_unwind(p);
        }
        if s.panicked.swap(false, Ordering::AcqRel) {
            panic!("a CPU worker thread panicked");
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        let generation = self.shared.ticket.load(Ordering::Relaxed) >> 16;
        self.shared
            .ticket
            .store(ticket(generation + 1, 0), Ordering::SeqCst);
        let _g = self
            .shared
            .sleep_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.shared.wake.notify_all();
        drop(_g);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// One round of a wait: a `pause`, and every 64th round a `yield`, so that on a machine with
/// fewer free cores than threads the thread we wait for gets the core (pure spinning made
/// a decode step 5× slower there).
#[inline]
fn spin(round: u32) {
    if round.is_multiple_of(64) {
        std::thread::yield_now();
    } else {
        std::hint::spin_loop();
    }
}

/// The ticket of a job: its generation and its part count. Read in one load, so a worker can
/// never pair one job's generation with another's part count.
fn ticket(generation: u64, parts: usize) -> u64 {
    debug_assert!(parts < 1 << 16);
    generation << 16 | parts as u64
}

fn worker(s: &Shared, index: usize) {
    flush_denormals();
    let mut seen = 0u64;
    loop {
        let mut spins = 0u32;
        let mut g = s.ticket.load(Ordering::Acquire);
        while g == seen {
            if spins < SPIN_ROUNDS {
                spins += 1;
                spin(spins);
            } else {
                let lock = s.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
                s.sleepers.fetch_add(1, Ordering::SeqCst);
                if s.ticket.load(Ordering::SeqCst) == seen {
                    drop(
                        s.wake
                            .wait_timeout(lock, std::time::Duration::from_millis(10)),
                    );
                }
                s.sleepers.fetch_sub(1, Ordering::SeqCst);
            }
            g = s.ticket.load(Ordering::Acquire);
        }
        seen = g;
        if s.shutdown.load(Ordering::Acquire) {
            return;
        }
        if index >= (g & 0xFFFF) as usize {
            // Not one of this job's parts. (A part of a job is never skipped over: the job
            // cannot end, nor the next begin, until that part has counted itself out.)
            continue;
        }
        let job = s.job.load(Ordering::Acquire);
        if job.is_null() {
            continue;
        }
        // SAFETY: `run_parts` published this pointer before the ticket and keeps the job alive
        // until `remaining` reaches 0, which needs this worker's decrement below.
        let f = unsafe { *job };
        if catch_unwind(AssertUnwindSafe(|| f(index))).is_err() {
            s.panicked.store(true, Ordering::Release);
        }
        if s.remaining.fetch_sub(1, Ordering::SeqCst) == 1 && s.caller_waits.load(Ordering::SeqCst)
        {
            let _g = s.done_lock.lock().unwrap_or_else(|e| e.into_inner());
            s.done.notify_all();
        }
    }
}

/// Flush denormal results to zero and read denormal inputs as zero (x86 MXCSR FTZ and DAZ) on
/// the calling thread. DeltaNet decays multiplied over a chunk underflow into denormals, whose
/// arithmetic is ~100× slower on x86 (DESIGN §6: a foreign 35B-A3B file's prefill ran 2.4×
/// slower); llama.cpp's results do not depend on them either. The pool's threads and every
/// CPU forward call set it; GPU kernels are compiled with `-ftz=true`.
pub(crate) fn flush_denormals() {
    // `LLM_SERVER_FTZ=0` leaves the mode as it is, for before/after measurements.
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *OFF.get_or_init(|| std::env::var_os("LLM_SERVER_FTZ").is_some_and(|v| v == "0")) {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: only the FTZ (bit 15) and DAZ (bit 6) bits of this thread's MXCSR change;
    // every x86-64 CPU has SSE2 and DAZ.
    unsafe {
        #[allow(deprecated)] // the intrinsics' replacement is inline asm, which says no more
        std::arch::x86_64::_mm_setcsr(std::arch::x86_64::_mm_getcsr() | 0x8040);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_runs_once_per_job() {
        let pool = Pool::new(3);
        for _ in 0..200 {
            let hits: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
            pool.run_parts(3, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
    }

    #[test]
    fn a_job_of_fewer_parts_runs_only_those() {
        let pool = Pool::new(4);
        for round in 0..300 {
            let parts = 1 + round % 4;
            let hits: Vec<AtomicUsize> = (0..4).map(|_| AtomicUsize::new(0)).collect();
            pool.run_parts(parts, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            for (i, h) in hits.iter().enumerate() {
                assert_eq!(
                    h.load(Ordering::Relaxed),
                    usize::from(i < parts),
                    "round {round}"
                );
            }
        }
    }

    #[test]
    fn denormals_flush_to_zero_after_flush_denormals() {
        flush_denormals();
        let tiny = std::hint::black_box(1e-39f32); // a denormal
        assert_eq!(
            std::hint::black_box(tiny) * 1.0,
            0.0,
            "DAZ reads it as zero"
        );
        let small = std::hint::black_box(1e-30f32);
        assert_eq!(
            small * std::hint::black_box(1e-10f32),
            0.0,
            "FTZ flushes the product"
        );
    }

    #[test]
    fn worker_panic_reaches_the_caller() {
        let pool = Pool::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.run_parts(2, &|i| assert!(i == 0, "boom"))
        }));
        assert!(r.is_err());
        let ok = AtomicUsize::new(0);
        pool.run_parts(2, &|_| {
            ok.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(
            ok.load(Ordering::Relaxed),
            2,
            "the pool still works after a panic"
        );
    }
}
