//! [`Pool`]: buffers of file data handed back once their records are
//! encoded, for the mirror's reader to read the next files into.

use std::sync::Mutex;

use super::READ_AHEAD;

/// Buffers of file data whose records were encoded, for the reader to
/// read the next files into: no fresh (zeroed, faulted-in) pages per file.
/// A buffer is cleared before it is handed out again, and only handed out
/// for a file it fits without growing, at most twice the file's size, so
/// what the read-ahead holds stays within twice [`READ_AHEAD`].
#[derive(Default)]
pub struct Pool {
    bufs: Mutex<(Vec<Vec<u8>>, usize)>,
}

/// Buffers below this come from the allocator's free lists anyway.
const POOL_MIN: usize = 64 << 10;
/// Most bytes (capacity) the pool keeps.
const POOL_MAX: usize = 2 * READ_AHEAD as usize;

impl Pool {
    /// An empty buffer with room for `want` bytes.
    pub fn take(&self, want: usize) -> Vec<u8> {
        if want >= POOL_MIN / 2 {
            let mut g = self.bufs.lock().unwrap_or_else(|x| x.into_inner());
            let (bufs, total) = &mut *g;
            let best = bufs
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= want && b.capacity() <= 2 * want.max(POOL_MIN))
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i);
            if let Some(i) = best {
                let b = bufs.swap_remove(i);
                *total -= b.capacity();
                debug_assert!(b.is_empty());
                return b;
            }
        }
        Vec::with_capacity(want)
    }

    /// Give back a buffer whose bytes were used (they are cleared here).
    pub fn give(&self, mut b: Vec<u8>) {
        if b.capacity() < POOL_MIN {
            return;
        }
        b.clear();
        let mut g = self.bufs.lock().unwrap_or_else(|x| x.into_inner());
        let (bufs, total) = &mut *g;
        if *total + b.capacity() <= POOL_MAX {
            *total += b.capacity();
            bufs.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_never_hands_out_far_too_big_or_dirty_buffers_and_stays_bounded() {
        let pool = Pool::default();
        pool.give(vec![9u8; 4 << 20]);
        // A 100 KiB file does not get the 4 MiB buffer (twice its size at most).
        let b = pool.take(100 << 10);
        assert!(b.capacity() < 4 << 20);
        assert!(b.is_empty());
        // A 3 MiB file does, emptied.
        let b = pool.take(3 << 20);
        assert_eq!(b.capacity(), 4 << 20);
        assert!(b.is_empty());
        // Small buffers are not kept; the total kept is bounded.
        pool.give(Vec::with_capacity(1000));
        for _ in 0..20 {
            pool.give(Vec::with_capacity(4 << 20));
        }
        let g = pool.bufs.lock().unwrap();
        assert!(g.1 <= POOL_MAX);
        assert_eq!(g.1, g.0.iter().map(|b| b.capacity()).sum::<usize>());
        assert!(g.0.iter().all(|b| b.capacity() >= POOL_MIN));
    }
}
