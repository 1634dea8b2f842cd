//! Send order per key on one connection: a client that pipelines `put k v` then `get k`
//! must read `v`, as it would over Redis or Cassandra's one-stream-per-request drivers.
//! Requests on one connection otherwise run concurrently (their answers may go out of
//! order), so each keyed request takes a turn for its key's token: it runs once every
//! earlier request on the same token from the same connection has finished.
//!
//! Requests on different keys never wait for each other (two keys with the same token
//! do, which only costs concurrency). One [`KeyOrder`] per connection, single-threaded;
//! no allocation for a key that has no request in flight besides its map entry.
//!
//! Must never: let a turn be skipped or taken twice, or keep an entry for a token with
//! nothing in flight (the map is bounded by the connection's in-flight requests).

use ahash::AHashMap;
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// The queue of one token: tickets handed out and the one being served.
struct Queue {
    next_ticket: u64,
    serving: u64,
    /// The waker of each waiting ticket (at most one per ticket).
    waiting: Vec<(u64, Waker)>,
    /// Tickets whose wait was dropped before their turn: skipped when it comes.
    abandoned: Vec<u64>,
}

/// The per-connection turn keeper.
#[derive(Default)]
pub struct KeyOrder {
    queues: RefCell<AHashMap<u64, Queue>>,
}

impl KeyOrder {
    /// Take the next ticket for `token` now (in dispatch order) and wait for its turn.
    /// The turn ends when the returned guard is dropped.
    pub fn turn(self: &Rc<Self>, token: u64) -> TurnWait {
        let ticket = {
            let mut queues = self.queues.borrow_mut();
            let queue = queues.entry(token).or_insert(Queue {
                next_ticket: 0,
                serving: 0,
                waiting: Vec::new(),
                abandoned: Vec::new(),
            });
            let ticket = queue.next_ticket;
            queue.next_ticket += 1;
            ticket
        };
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

    fn finish(&self, token: u64, ticket: u64) {
        let mut queues = self.queues.borrow_mut();
        let Some(queue) = queues.get_mut(&token) else {
            debug_assert!(false, "a turn ended for a token with no queue");
            return;
        };
        assert_eq!(queue.serving, ticket, "a turn ended out of order");
        queue.serving += 1;
        while let Some(i) = queue.abandoned.iter().position(|t| *t == queue.serving) {
            queue.abandoned.swap_remove(i);
            queue.serving += 1;
        }
        if queue.serving == queue.next_ticket {
            queues.remove(&token);
            return;
        }
        let next = queue.serving;
        if let Some(i) = queue.waiting.iter().position(|(t, _)| *t == next) {
            let (_, waker) = queue.waiting.swap_remove(i);
            waker.wake();
        }
    }
}

/// Waits for a ticket's turn; resolves to the guard that holds it.
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
        if queue.serving == self.ticket {
            drop(queues);
            self.done = true;
            return Poll::Ready(Turn {
                order: self.order.clone(),
                token: self.token,
                ticket: self.ticket,
            });
        }
        let ticket = self.ticket;
        match queue.waiting.iter_mut().find(|(t, _)| *t == ticket) {
            Some((_, waker)) => waker.clone_from(cx.waker()),
            None => queue.waiting.push((ticket, cx.waker().clone())),
        }
        Poll::Pending
    }
}

impl Drop for TurnWait {
    /// A wait dropped before its turn came (its request was cancelled, as when the
    /// executor stops) gives its turn up, so the tickets after it are still served.
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let serving_now = {
            let mut queues = self.order.queues.borrow_mut();
            let Some(queue) = queues.get_mut(&self.token) else {
                return;
            };
            queue.waiting.retain(|(t, _)| *t != self.ticket);
            if queue.serving != self.ticket {
                queue.abandoned.push(self.ticket);
            }
            queue.serving == self.ticket
        };
        if serving_now {
            self.order.finish(self.token, self.ticket);
        }
    }
}

/// Holds a key's turn; the next request on the key runs when it is dropped.
pub struct Turn {
    order: Rc<KeyOrder>,
    token: u64,
    ticket: u64,
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.order.finish(self.token, self.ticket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Context;

    fn poll(wait: &mut Pin<Box<TurnWait>>) -> Option<Turn> {
        let mut cx = Context::from_waker(Waker::noop());
        match wait.as_mut().poll(&mut cx) {
            Poll::Ready(turn) => Some(turn),
            Poll::Pending => None,
        }
    }

    #[test]
    fn same_token_runs_in_ticket_order_other_tokens_do_not_wait() {
        let order = Rc::new(KeyOrder::default());
        let mut a1 = Box::pin(order.turn(7));
        let mut a2 = Box::pin(order.turn(7));
        let mut b = Box::pin(order.turn(8));
        let mut a3 = Box::pin(order.turn(7));
        assert!(poll(&mut a2).is_none(), "second on 7 waits");
        assert!(poll(&mut a3).is_none());
        let t1 = poll(&mut a1).expect("first on 7 runs");
        let tb = poll(&mut b).expect("8 does not wait for 7");
        assert!(poll(&mut a3).is_none(), "third waits for the second");
        drop(t1);
        let t2 = poll(&mut a2).expect("second after the first");
        assert!(poll(&mut a3).is_none());
        drop(t2);
        let t3 = poll(&mut a3).expect("third after the second");
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
    fn a_dropped_wait_gives_its_turn_up() {
        let order = Rc::new(KeyOrder::default());
        let mut a1 = Box::pin(order.turn(1));
        let a2 = Box::pin(order.turn(1));
        let mut a3 = Box::pin(order.turn(1));
        let t1 = poll(&mut a1).unwrap();
        drop(a2); // cancelled while waiting
        assert!(poll(&mut a3).is_none());
        drop(t1);
        let t3 = poll(&mut a3).expect("the ticket after the abandoned one runs");
        drop(t3);
        assert_eq!(order.tokens_in_flight(), 0);
        // Abandoned while it was its turn (never polled).
        let w = order.turn(2);
        let mut next = Box::pin(order.turn(2));
        drop(w);
        drop(poll(&mut next).expect("runs after the dropped turn"));
        assert_eq!(order.tokens_in_flight(), 0);
    }
}
