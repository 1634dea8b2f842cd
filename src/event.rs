//! A one-shot, many-waiter event for futures on one thread (stop, drained). No locks:
//! it never leaves the shard that created it.
//!
//! Must never keep a waker for a wait that is gone: loops race a fresh `wait()` against
//! every socket read (`or(read, stop.wait())`), so a wait registers one waker, replaces
//! it when polled again, and removes it when dropped. (Keeping every clone grew the
//! waiter list by one per read and overflowed glommio's 16-bit task reference count
//! after 32,767 reads on one connection: a shard panic under load.)

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
pub struct Event {
    set: Cell<bool>,
    /// Registered waits: (wait id, its waker).
    waiters: RefCell<Vec<(u64, Waker)>>,
    next_id: Cell<u64>,
}

impl Event {
    pub fn set(&self) {
        self.set.set(true);
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for (_, waker) in waiters {
            waker.wake();
        }
    }

    pub fn is_set(&self) -> bool {
        self.set.get()
    }

    /// Ready once the event is set.
    pub fn wait(&self) -> Wait<'_> {
        Wait {
            event: self,
            id: None,
        }
    }

    /// Waits registered now (for tests).
    pub fn waiting(&self) -> usize {
        self.waiters.borrow().len()
    }
}

/// The future of [`Event::wait`].
pub struct Wait<'a> {
    event: &'a Event,
    /// Set once registered in `event.waiters`.
    id: Option<u64>,
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let event = self.event;
        if event.set.get() {
            return Poll::Ready(());
        }
        let mut waiters = event.waiters.borrow_mut();
        let registered = self
            .id
            .and_then(|id| waiters.iter_mut().find(|(other, _)| *other == id));
        match registered {
            Some((_, waker)) => {
                if !waker.will_wake(cx.waker()) {
                    *waker = cx.waker().clone();
                }
            }
            None => {
                let id = event.next_id.get();
                event.next_id.set(id + 1);
                waiters.push((id, cx.waker().clone()));
                drop(waiters);
                self.id = Some(id);
            }
        }
        Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.event
                .waiters
                .borrow_mut()
                .retain(|(other, _)| *other != id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct CountingWaker(AtomicUsize);
    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn poll_once(fut: Pin<&mut Wait<'_>>, waker: &Waker) -> Poll<()> {
        fut.poll(&mut Context::from_waker(waker))
    }

    #[test]
    fn dropped_and_repolled_waits_leave_no_waker_behind() {
        let event = Event::default();
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        // A loop that races a fresh wait against each read: 100,000 waits, each polled
        // twice and dropped, leave nothing registered and no waker clone alive.
        for _ in 0..100_000 {
            let mut wait = std::pin::pin!(event.wait());
            assert!(poll_once(wait.as_mut(), &waker).is_pending());
            assert!(poll_once(wait.as_mut(), &waker).is_pending());
            assert_eq!(event.waiting(), 1);
        }
        assert_eq!(event.waiting(), 0);
        assert_eq!(
            Arc::strong_count(&counter),
            2,
            "only `counter` and `waker` remain"
        );
    }

    #[test]
    fn set_wakes_every_pending_wait_once_and_later_waits_are_ready() {
        let event = Event::default();
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut a = Box::pin(event.wait());
        let mut b = Box::pin(event.wait());
        assert!(poll_once(a.as_mut(), &waker).is_pending());
        assert!(poll_once(b.as_mut(), &waker).is_pending());
        event.set();
        assert_eq!(counter.0.load(Ordering::Relaxed), 2);
        assert!(poll_once(a.as_mut(), &waker).is_ready());
        assert!(poll_once(b.as_mut(), &waker).is_ready());
        let mut late = Box::pin(event.wait());
        assert!(poll_once(late.as_mut(), &waker).is_ready());
        assert_eq!(event.waiting(), 0);
    }
}
