//! Send order per key on one connection: a client that pipelines `put k v` then `get k`
//! must read `v`, as it would over Redis or Cassandra's one-stream-per-request drivers.
//! Requests on one connection otherwise run concurrently (their answers may go out of
//! order), so each keyed request takes a turn for its key's token, in dispatch order,
//! and runs once every earlier request on the same token from the same connection that
//! it could be told apart from has finished:
//!
//! - a read waits for earlier writes (it must see them), not for earlier reads (two
//!   reads of one key in either order give the same answers);
//! - a write waits for earlier reads (they must not see it) and for earlier writes,
//!   except that a write carrying its own client timestamp (LWW's write timestamp) does
//!   not wait for an earlier one that carries one too: the timestamps already say which
//!   wins, whichever is applied first.
//!
//! Requests on different keys never wait for each other (two keys with the same token
//! do, which only costs concurrency). Without this sharing, a pipeline over skewed keys
//! (YCSB's zipfian) formed chains of waits on its hot keys. One [`KeyOrder`] per
//! connection, single-threaded.
//!
//! Must never: let a request run while an earlier one it conflicts with is unfinished,
//! leave a request waiting once nothing it conflicts with is left, or keep an entry for
//! a token with nothing in flight (the map is bounded by the connection's in-flight
//! requests).

use crate::conflict::ConflictMode;
use crate::protocol::session::WriteTimestamp;
use crate::protocol::types::Op;
use ahash::AHashMap;
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// What a keyed request does to its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    /// `stamped`: the write carries the exact timestamp it is stored with.
    Write {
        stamped: bool,
    },
}

/// The key a client request addresses and what it does to it; `None` for requests
/// that are not keyed. A write is `stamped` when it carries a valid client write
/// timestamp in LWW mode (the coordinator then stores exactly that version).
pub fn access_of(op: &Op, mode: ConflictMode) -> Option<(&[u8], Access)> {
    match op {
        Op::Get { key, .. } => Some((key, Access::Read)),
        Op::Put { key, context, .. } | Op::Delete { key, context, .. } => {
            let stamped = mode == ConflictMode::Lww
                && context.as_deref().is_some_and(|bytes| {
                    matches!(WriteTimestamp::decode(bytes), Some(Ok(stamp)) if stamp.0 != 0)
                });
            Some((key, Access::Write { stamped }))
        }
        _ => None,
    }
}

/// Whether `later` must wait for `earlier` (sent before it on the same key).
pub fn must_wait(earlier: Access, later: Access) -> bool {
    !matches!(
        (earlier, later),
        (Access::Read, Access::Read)
            | (
                Access::Write { stamped: true },
                Access::Write { stamped: true }
            )
    )
}

/// One request of a token's queue, from its turn until it finished.
struct Entry {
    ticket: u64,
    access: Access,
    running: bool,
    waker: Option<Waker>,
}

/// The unfinished requests of one token, in dispatch order.
#[derive(Default)]
struct Queue {
    entries: Vec<Entry>,
}

impl Queue {
    /// Whether the entry at `index` may run: nothing before it that it must wait for.
    fn may_run(&self, index: usize) -> bool {
        let access = self.entries[index].access;
        self.entries[..index]
            .iter()
            .all(|earlier| !must_wait(earlier.access, access))
    }
}

/// The per-connection turn keeper.
#[derive(Default)]
pub struct KeyOrder {
    next_ticket: std::cell::Cell<u64>,
    queues: RefCell<AHashMap<u64, Queue>>,
}

impl KeyOrder {
    /// Take a turn for `token` now (in dispatch order) and wait until it may run. The
    /// turn ends when the returned guard is dropped.
    pub fn turn(self: &Rc<Self>, token: u64, access: Access) -> TurnWait {
        let ticket = self.next_ticket.get();
        self.next_ticket.set(ticket + 1);
        self.queues
            .borrow_mut()
            .entry(token)
            .or_default()
            .entries
            .push(Entry {
                ticket,
                access,
                running: false,
                waker: None,
            });
        TurnWait {
            order: self.clone(),
            token,
            ticket,
            done: false,
        }
    }

    /// Tokens with a request in flight (for tests and invariants).
    pub fn tokens_in_flight(&self) -> usize {
        self.queues.borrow().len()
    }

    /// `ticket` finished or gave its turn up: drop it and wake what may run now.
    fn remove(&self, token: u64, ticket: u64) {
        let mut wake = Vec::new();
        {
            let mut queues = self.queues.borrow_mut();
            let Some(queue) = queues.get_mut(&token) else {
                debug_assert!(false, "a turn ended for a token with no queue");
                return;
            };
            queue.entries.retain(|e| e.ticket != ticket);
            if queue.entries.is_empty() {
                queues.remove(&token);
                return;
            }
            for index in 0..queue.entries.len() {
                if !queue.entries[index].running && queue.may_run(index) {
                    if let Some(waker) = queue.entries[index].waker.take() {
                        wake.push(waker);
                    }
                }
            }
        }
        for waker in wake {
            waker.wake();
        }
    }
}

/// Waits for a turn; resolves to the guard that holds it.
pub struct TurnWait {
    order: Rc<KeyOrder>,
    token: u64,
    ticket: u64,
    /// The guard was handed out (it now ends the turn).
    done: bool,
}

impl Future for TurnWait {
    type Output = Turn;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Turn> {
        let mut queues = self.order.queues.borrow_mut();
        let Some(queue) = queues.get_mut(&self.token) else {
            unreachable!("a waiting ticket's queue is gone");
        };
        let ticket = self.ticket;
        let Some(index) = queue.entries.iter().position(|e| e.ticket == ticket) else {
            unreachable!("a waiting ticket left its queue");
        };
        if queue.may_run(index) {
            queue.entries[index].running = true;
            queue.entries[index].waker = None;
            drop(queues);
            self.done = true;
            return Poll::Ready(Turn {
                order: self.order.clone(),
                token: self.token,
                ticket,
            });
        }
        match &mut queue.entries[index].waker {
            Some(waker) => waker.clone_from(cx.waker()),
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for TurnWait {
    /// A wait dropped before its turn came (its request was cancelled, as when the
    /// executor stops) gives its turn up, so the requests after it still run.
    fn drop(&mut self) {
        if !self.done {
            self.order.remove(self.token, self.ticket);
        }
    }
}

/// Holds a key's turn; the requests that wait for it run when it is dropped.
pub struct Turn {
    order: Rc<KeyOrder>,
    token: u64,
    ticket: u64,
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.order.remove(self.token, self.ticket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::task::Context;

    const W: Access = Access::Write { stamped: false };
    const SW: Access = Access::Write { stamped: true };
    const R: Access = Access::Read;

    fn poll(wait: &mut Pin<Box<TurnWait>>) -> Option<Turn> {
        let mut cx = Context::from_waker(Waker::noop());
        match wait.as_mut().poll(&mut cx) {
            Poll::Ready(turn) => Some(turn),
            Poll::Pending => None,
        }
    }

    #[test]
    fn writes_on_one_token_run_in_order_other_tokens_do_not_wait() {
        let order = Rc::new(KeyOrder::default());
        let mut a1 = Box::pin(order.turn(7, W));
        let mut a2 = Box::pin(order.turn(7, W));
        let mut b = Box::pin(order.turn(8, W));
        let mut a3 = Box::pin(order.turn(7, R));
        assert!(poll(&mut a2).is_none(), "second write on 7 waits");
        assert!(poll(&mut a3).is_none());
        let t1 = poll(&mut a1).expect("first on 7 runs");
        let tb = poll(&mut b).expect("8 does not wait for 7");
        assert!(poll(&mut a3).is_none(), "the read waits for both writes");
        drop(t1);
        let t2 = poll(&mut a2).expect("second after the first");
        assert!(poll(&mut a3).is_none());
        drop(t2);
        let t3 = poll(&mut a3).expect("the read after the writes");
        drop(tb);
        assert_eq!(order.tokens_in_flight(), 1);
        drop(t3);
        assert_eq!(
            order.tokens_in_flight(),
            0,
            "no entry outlives its requests"
        );
    }

    #[test]
    fn reads_share_stamped_writes_share_and_the_rest_wait() {
        let order = Rc::new(KeyOrder::default());
        let mut r1 = Box::pin(order.turn(1, R));
        let mut r2 = Box::pin(order.turn(1, R));
        let mut w = Box::pin(order.turn(1, SW));
        let mut w2 = Box::pin(order.turn(1, SW));
        let mut r3 = Box::pin(order.turn(1, R));
        let t1 = poll(&mut r1).unwrap();
        let t2 = poll(&mut r2).expect("a read does not wait for a read");
        assert!(poll(&mut w).is_none(), "a write waits for earlier reads");
        drop(t1);
        assert!(poll(&mut w).is_none());
        drop(t2);
        let tw = poll(&mut w).unwrap();
        let tw2 = poll(&mut w2).expect("stamped writes do not wait for each other");
        assert!(poll(&mut r3).is_none(), "a read waits for earlier writes");
        drop(tw);
        assert!(poll(&mut r3).is_none());
        drop(tw2);
        drop(poll(&mut r3).unwrap());
        assert_eq!(order.tokens_in_flight(), 0);
    }

    #[test]
    fn a_dropped_wait_gives_its_turn_up() {
        let order = Rc::new(KeyOrder::default());
        let mut a1 = Box::pin(order.turn(1, W));
        let a2 = Box::pin(order.turn(1, W));
        let mut a3 = Box::pin(order.turn(1, W));
        let t1 = poll(&mut a1).unwrap();
        drop(a2); // cancelled while waiting
        assert!(poll(&mut a3).is_none());
        drop(t1);
        let t3 = poll(&mut a3).expect("the request after the abandoned one runs");
        drop(t3);
        assert_eq!(order.tokens_in_flight(), 0);
    }

    proptest! {
        /// Any interleaving of turns, polls, finishes and cancellations: a request
        /// runs only when nothing earlier it must wait for is unfinished, the first
        /// unfinished request can always run, and nothing is left behind.
        #[test]
        fn runs_only_after_what_it_must_wait_for(
            steps in prop::collection::vec((0u8..4, 0u64..3, 0u8..3, any::<prop::sample::Index>()), 0..80),
        ) {
            let order = Rc::new(KeyOrder::default());
            // (token, access, its wait or its running turn), in dispatch order.
            let mut waits: Vec<(u64, Access, Pin<Box<TurnWait>>)> = Vec::new();
            let mut running: Vec<(u64, Access, u64, Turn)> = Vec::new();
            let mut sent = 0u64;
            let mut live: Vec<(u64, u64, Access)> = Vec::new(); // (seq, token, access)
            let mut seq_of_wait: Vec<u64> = Vec::new();
            for (kind, token, access, pick) in steps {
                let access = [R, W, SW][usize::from(access)];
                match kind {
                    0 => {
                        waits.push((token, access, Box::pin(order.turn(token, access))));
                        seq_of_wait.push(sent);
                        live.push((sent, token, access));
                        sent += 1;
                    }
                    1 if !waits.is_empty() => {
                        let i = pick.index(waits.len());
                        if let Some(turn) = poll(&mut waits[i].2) {
                            let (token, access, _) = waits.remove(i);
                            let seq = seq_of_wait.remove(i);
                            // Nothing earlier and unfinished that it must wait for.
                            for (s, t, a) in &live {
                                if *s < seq && *t == token {
                                    prop_assert!(!must_wait(*a, access), "ran too early");
                                }
                            }
                            running.push((token, access, seq, turn));
                        }
                    }
                    2 if !running.is_empty() => {
                        let (_, _, seq, turn) = running.remove(pick.index(running.len()));
                        drop(turn);
                        live.retain(|(s, _, _)| *s != seq);
                    }
                    3 if !waits.is_empty() => {
                        let i = pick.index(waits.len());
                        waits.remove(i);
                        let seq = seq_of_wait.remove(i);
                        live.retain(|(s, _, _)| *s != seq);
                    }
                    _ => {}
                }
            }
            // Liveness: with every running turn ended, the waiting ones all get to run.
            drop(running);
            while !waits.is_empty() {
                let before = waits.len();
                waits.retain_mut(|(_, _, w)| poll(w).is_none());
                prop_assert!(waits.len() < before, "requests stuck with nothing running");
            }
            prop_assert_eq!(order.tokens_in_flight(), 0);
        }
    }
}
