//! Device memory for activations: blocks handed out by size class and taken back when their
//! last user drops them, never returned to the driver. The token loop allocates nothing once
//! the first step has filled the pool, and a step recorded as a graph finds its buffers at
//! the same addresses: the same sequence of requests gets the same blocks (last freed, first
//! reused).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::driver::{DevBuf, Gpu};
use crate::error::Result;
use crate::kernels::lock;

/// The pool.
#[derive(Debug)]
pub(crate) struct Pool {
    gpu: Arc<Gpu>,
    free: Mutex<HashMap<usize, Vec<DevBuf>>>,
    /// Bytes allocated from the driver.
    held: AtomicUsize,
}

/// Four size classes per power of two (at most 25% unused), from 256 bytes.
fn size_class(bytes: usize) -> usize {
    let b = bytes.max(256);
    let top = usize::BITS - 1 - b.leading_zeros(); // floor(log2 b)
    let step = 1usize << top.saturating_sub(2);
    b.div_ceil(step) * step
}

impl Pool {
    pub(crate) fn new(gpu: Arc<Gpu>) -> Arc<Pool> {
        Arc::new(Pool {
            gpu,
            free: Mutex::default(),
            held: AtomicUsize::new(0),
        })
    }

    /// A block of at least `bytes`.
    pub(crate) fn get(self: &Arc<Self>, bytes: usize) -> Result<Block> {
        let class = size_class(bytes);
        let reused = lock(&self.free).get_mut(&class).and_then(Vec::pop);
        let buf = match reused {
            Some(b) => b,
            None => {
                let b = self.gpu.alloc(class)?;
                self.held.fetch_add(class, Ordering::Relaxed);
                b
            }
        };
        Ok(Block {
            buf: Some(buf),
            class,
            pool: self.clone(),
        })
    }

    /// Bytes the pool holds from the driver.
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

/// A block of the pool, back to it on drop.
#[derive(Debug)]
pub(crate) struct Block {
    buf: Option<DevBuf>,
    class: usize,
    pool: Arc<Pool>,
}

impl Block {
    pub(crate) fn ptr(&self) -> u64 {
        self.buf.as_ref().map_or(0, DevBuf::ptr)
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        if let Some(b) = self.buf.take() {
            lock(&self.pool.free).entry(self.class).or_default().push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes_cover_with_a_quarter_to_spare() {
        for b in [
            1,
            255,
            256,
            257,
            1000,
            4096,
            5000,
            1 << 20,
            (1 << 20) + 1,
            123_456_789,
        ] {
            let c = size_class(b);
            assert!(c >= b && c >= 256, "{b} → {c}");
            assert!(c as f64 <= (b.max(256) as f64) * 1.25 + 1.0, "{b} → {c}");
            assert_eq!(size_class(c), c, "classes are fixed points");
        }
    }
}
