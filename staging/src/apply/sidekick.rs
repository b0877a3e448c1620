//! A second thread of one's own for a two-way split of work that borrows
//! from the caller ([`Sidekick::join`]).
//!
//! The apply splits a run of file records in two halves, one per thread
//! ([`super::parallel`]). On rayon's pool each split cost more than its
//! wake-up: a pool thread that runs out of work looks for more, yielding
//! the CPU about 64 times (`sched_yield`) before it sleeps. Over a full
//! mirror of the big benchmark tree that was ~84,000 `sched_yield` calls,
//! each a context switch on a machine whose two CPUs both ends of the
//! mirror share (2.7–4.4% of the target daemon's CPU in `perf`). The
//! sidekick sleeps on a condition variable as soon as its half is done,
//! and the calling thread sleeps on another one if its own half ends
//! first: one wake-up each way per split, no spinning.
//!
//! The one `unsafe` here erases the lifetime of the borrowed job, as
//! every scoped thread pool does (std's `thread::scope` starts a thread
//! per scope instead; a split is too small for that): see `join`.
#![allow(unsafe_code)]

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// A job as the sidekick holds it. Its lifetime is erased in
/// [`Sidekick::join`], which does not return (nor unwind) before the job
/// has run.
type Job = Box<dyn FnOnce() + Send + 'static>;

#[derive(Default)]
struct Slot {
    job: Option<Job>,
    /// Jobs the sidekick finished (the caller waits for its own).
    done: u64,
    closed: bool,
}

#[derive(Default)]
struct Shared {
    slot: Mutex<Slot>,
    /// Signalled when a job is put in the slot or the sidekick is closed.
    work: Condvar,
    /// Signalled when a job is done.
    finished: Condvar,
}

fn lock(m: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
    // A job never panics while the lock is held (it runs unlocked, under
    // catch_unwind), so poisoning carries no broken state.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A thread that runs one borrowed job at a time for its owner.
pub(crate) struct Sidekick {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Jobs handed over so far (the number the caller waits for).
    given: u64,
}

impl Sidekick {
    /// Start the thread, named `name`. `None` if it cannot be started
    /// (the caller then does both halves itself).
    pub(crate) fn start(name: &str) -> Option<Sidekick> {
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || loop {
                let job = {
                    let mut slot = lock(&s.slot);
                    loop {
                        if let Some(job) = slot.job.take() {
                            break job;
                        }
                        if slot.closed {
                            return;
                        }
                        slot = s.work.wait(slot).unwrap_or_else(|p| p.into_inner());
                    }
                };
                // The job catches its own panic (see `join`).
                job();
                lock(&s.slot).done += 1;
                s.finished.notify_one();
            })
            .ok()?;
        Some(Sidekick {
            shared,
            thread: Some(thread),
            given: 0,
        })
    }

    /// Run `here` on this thread and `there` on the sidekick at the same
    /// time; both results once both are done. A panic in either is
    /// resumed here after both have finished.
    pub(crate) fn join<A, B, RA, RB>(&mut self, here: A, there: B) -> (RA, RB)
    where
        A: FnOnce() -> RA,
        B: FnOnce() -> RB + Send,
        RB: Send,
    {
        let mut out: Option<std::thread::Result<RB>> = None;
        let out_ref = &mut out;
        let job: Box<dyn FnOnce() + Send + '_> = Box::new(move || {
            *out_ref = Some(catch_unwind(AssertUnwindSafe(there)));
        });
        // SAFETY: the job borrows `out` and what `there` borrows, all of
        // which outlive this call. The job is only run by the sidekick
        // between the hand-over below and the `Wait` guard's drop, which
        // blocks until the sidekick reports it done, also when `here`
        // panics (the guard is dropped during unwinding). The job never
        // unwinds into the sidekick (catch_unwind above), so the sidekick
        // always reports it. Nothing touches `out` until then.
        let job: Job = unsafe { std::mem::transmute::<Box<dyn FnOnce() + Send + '_>, Job>(job) };
        self.given += 1;
        {
            let mut slot = lock(&self.shared.slot);
            debug_assert!(slot.job.is_none());
            slot.job = Some(job);
        }
        self.shared.work.notify_one();

        struct Wait<'a> {
            shared: &'a Shared,
            given: u64,
        }
        impl Drop for Wait<'_> {
            fn drop(&mut self) {
                let mut slot = lock(&self.shared.slot);
                while slot.done < self.given {
                    slot = self
                        .shared
                        .finished
                        .wait(slot)
                        .unwrap_or_else(|p| p.into_inner());
                }
            }
        }
        let wait = Wait {
            shared: &self.shared,
            given: self.given,
        };
        let here = catch_unwind(AssertUnwindSafe(here));
        drop(wait);
        let there = out.expect("the sidekick ran the job");
        match (here, there) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(p), _) | (_, Err(p)) => resume_unwind(p),
        }
    }
}

impl Drop for Sidekick {
    fn drop(&mut self) {
        lock(&self.shared.slot).closed = true;
        self.shared.work.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_halves_run_on_two_threads_and_borrow_from_the_caller() {
        let mut s = Sidekick::start("test-sidekick").unwrap();
        let data: Vec<u64> = (0..1000).collect();
        let (a, b) = data.split_at(400);
        let here = std::thread::current().id();
        for _ in 0..100 {
            let ((sa, ta), (sb, tb)) = s.join(
                || (a.iter().sum::<u64>(), std::thread::current().id()),
                || (b.iter().sum::<u64>(), std::thread::current().id()),
            );
            assert_eq!(sa + sb, data.iter().sum::<u64>());
            assert_eq!(ta, here);
            assert_ne!(tb, here);
        }
    }

    #[test]
    fn a_panic_on_either_side_comes_back_after_both_ended_and_the_sidekick_lives_on() {
        let mut s = Sidekick::start("test-sidekick").unwrap();
        let finished = std::sync::atomic::AtomicBool::new(false);
        // The sidekick's half is slow; the caller's half panics at once:
        // the panic must wait for the sidekick, which still uses `finished`.
        let r = catch_unwind(AssertUnwindSafe(|| {
            s.join(
                || panic!("here"),
                || {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    finished.store(true, std::sync::atomic::Ordering::SeqCst);
                },
            )
        }));
        assert!(r.is_err());
        assert!(finished.load(std::sync::atomic::Ordering::SeqCst));
        let r = catch_unwind(AssertUnwindSafe(|| {
            s.join(|| 1, || -> u32 { panic!("there") })
        }));
        let msg = r.unwrap_err();
        assert_eq!(msg.downcast_ref::<&str>(), Some(&"there"));
        assert_eq!(s.join(|| 2, || 3), (2, 3));
    }

    #[test]
    fn a_dropped_sidekick_ends_its_thread() {
        let mut s = Sidekick::start("test-sidekick").unwrap();
        assert_eq!(s.join(|| 1, || 2), (1, 2));
        // The thread holds the shared state until it returns.
        let shared = Arc::downgrade(&s.shared);
        drop(s);
        assert!(
            shared.upgrade().is_none(),
            "the sidekick's thread still runs"
        );
    }
}
