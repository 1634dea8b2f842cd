//! A one-shot, many-waiter event for futures on one thread (stop, drained). No locks:
//! it never leaves the shard that created it.

use std::cell::{Cell, RefCell};
use std::task::Waker;

#[derive(Default)]
pub struct Event {
    set: Cell<bool>,
    waiters: RefCell<Vec<Waker>>,
}

impl Event {
    pub fn set(&self) {
        self.set.set(true);
        for waker in self.waiters.borrow_mut().drain(..) {
            waker.wake();
        }
    }
    pub fn is_set(&self) -> bool {
        self.set.get()
    }
    pub async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.set.get() {
                std::task::Poll::Ready(())
            } else {
                self.waiters.borrow_mut().push(cx.waker().clone());
                std::task::Poll::Pending
            }
        })
        .await
    }
}
