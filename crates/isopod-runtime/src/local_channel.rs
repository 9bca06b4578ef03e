//! Channels between tasks of one thread, for the request's hop from its
//! connection's task to its instance's driver and back: no atomics, no
//! `Arc`, no allocation per message beyond the queue's own growth (tokio's
//! `mpsc` and `oneshot` pay for being usable across threads on every
//! request, and these two ends never are).
//!
//! Invariants:
//! - Both ends are `!Send`: they live on the thread that made them.
//! - A waker is woken, never polled, while a `RefCell` is borrowed here, and
//!   tokio's wakers never re-enter the task that wakes them; so no borrow
//!   here is ever held across code that could borrow again.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// Keeps `waker` in `slot` unless the one there already wakes the same task.
fn register(slot: &RefCell<Option<Waker>>, waker: &Waker) {
    let mut slot = slot.borrow_mut();
    if !slot.as_ref().is_some_and(|held| held.will_wake(waker)) {
        *slot = Some(waker.clone());
    }
}

fn wake(slot: &RefCell<Option<Waker>>) {
    if let Some(waker) = slot.borrow().as_ref() {
        waker.wake_by_ref();
    }
}

/// Shared by the senders and the receiver, each holding one reference: the
/// count of senders is the reference count less the receiver's own.
struct Queue<T> {
    items: RefCell<VecDeque<T>>,
    receiver_waker: RefCell<Option<Waker>>,
    receiver_alive: Cell<bool>,
}

impl<T> Queue<T> {
    /// Senders alive, counted through `queue` (one of the references).
    fn senders(queue: &Rc<Queue<T>>) -> usize {
        Rc::strong_count(queue) - usize::from(queue.receiver_alive.get())
    }
}

/// The sending end of an [`unbounded`] channel. Cheap to clone.
pub(crate) struct Sender<T>(Rc<Queue<T>>);

/// The receiving end of an [`unbounded`] channel.
pub(crate) struct Receiver<T>(Rc<Queue<T>>);

/// An unbounded many-to-one channel between tasks of this thread.
pub(crate) fn unbounded<T>() -> (Sender<T>, Receiver<T>) {
    let queue = Rc::new(Queue {
        items: RefCell::new(VecDeque::new()),
        receiver_waker: RefCell::new(None),
        receiver_alive: Cell::new(true),
    });
    (Sender(queue.clone()), Receiver(queue))
}

impl<T> Sender<T> {
    /// Queues `item`; gives it back if the receiver is gone.
    pub(crate) fn send(&self, item: T) -> Result<(), T> {
        if !self.0.receiver_alive.get() {
            return Err(item);
        }
        self.0.items.borrow_mut().push_back(item);
        wake(&self.0.receiver_waker);
        Ok(())
    }

    /// Whether the receiver is gone.
    pub(crate) fn is_closed(&self) -> bool {
        !self.0.receiver_alive.get()
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Sender<T> {
        Sender(self.0.clone())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        // Counted before this sender's reference goes.
        if Queue::senders(&self.0) == 1 {
            wake(&self.0.receiver_waker);
        }
    }
}

impl<T> Receiver<T> {
    /// The next item; `None` once every sender is gone and the queue is
    /// empty.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        if let Some(item) = self.0.items.borrow_mut().pop_front() {
            return Poll::Ready(Some(item));
        }
        if Queue::senders(&self.0) == 0 {
            return Poll::Ready(None);
        }
        register(&self.0.receiver_waker, cx.waker());
        Poll::Pending
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.0.receiver_alive.set(false);
        // Dropped outside the borrow: an item's drop may send on this
        // channel's senders (which then find the receiver gone).
        let items = std::mem::take(&mut *self.0.items.borrow_mut());
        drop(items);
    }
}

struct Slot<T> {
    value: RefCell<Option<T>>,
    receiver_waker: RefCell<Option<Waker>>,
    sender_alive: Cell<bool>,
}

/// The sending end of a [`oneshot`] channel.
pub(crate) struct OneshotSender<T>(Rc<Slot<T>>);

/// The receiving end of a [`oneshot`] channel: a future of the value, or of
/// [`SenderGone`] if the sender was dropped without sending.
pub(crate) struct OneshotReceiver<T>(Rc<Slot<T>>);

/// The sender of a [`oneshot`] channel was dropped without sending.
#[derive(Debug)]
pub(crate) struct SenderGone;

/// A channel for one value between tasks of this thread.
pub(crate) fn oneshot<T>() -> (OneshotSender<T>, OneshotReceiver<T>) {
    let slot = Rc::new(Slot {
        value: RefCell::new(None),
        receiver_waker: RefCell::new(None),
        sender_alive: Cell::new(true),
    });
    (OneshotSender(slot.clone()), OneshotReceiver(slot))
}

impl<T> OneshotSender<T> {
    /// Sends `value`; gives it back if the receiver is gone.
    pub(crate) fn send(self, value: T) -> Result<(), T> {
        // The sender and the receiver hold the only two references.
        if Rc::strong_count(&self.0) == 1 {
            return Err(value);
        }
        *self.0.value.borrow_mut() = Some(value);
        // `self` is dropped on return, which wakes the receiver.
        Ok(())
    }
}

impl<T> Drop for OneshotSender<T> {
    fn drop(&mut self) {
        self.0.sender_alive.set(false);
        wake(&self.0.receiver_waker);
    }
}

impl<T> Future for OneshotReceiver<T> {
    type Output = Result<T, SenderGone>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T, SenderGone>> {
        if let Some(value) = self.0.value.borrow_mut().take() {
            return Poll::Ready(Ok(value));
        }
        if !self.0.sender_alive.get() {
            return Poll::Ready(Err(SenderGone));
        }
        register(&self.0.receiver_waker, cx.waker());
        Poll::Pending
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

    fn counting() -> (Arc<CountingWaker>, Waker) {
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        (counter.clone(), Waker::from(counter))
    }

    #[test]
    fn the_queue_delivers_in_order_wakes_its_receiver_and_ends_with_its_senders() {
        let (counter, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        let (tx, mut rx) = unbounded();
        assert!(rx.poll_recv(&mut cx).is_pending());
        let second = tx.clone();
        tx.send(1).unwrap();
        second.send(2).unwrap();
        assert_eq!(counter.0.load(Ordering::Relaxed), 2);
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(Some(1)));
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(Some(2)));
        drop(tx);
        assert!(rx.poll_recv(&mut cx).is_pending(), "one sender is left");
        drop(second);
        assert_eq!(
            counter.0.load(Ordering::Relaxed),
            3,
            "the last sender's drop wakes"
        );
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(None));
    }

    #[test]
    fn a_queue_without_its_receiver_refuses_items() {
        let (tx, rx) = unbounded();
        assert!(!tx.is_closed());
        drop(rx);
        assert!(tx.is_closed());
        assert_eq!(tx.send(7), Err(7));
    }

    #[test]
    fn a_oneshot_delivers_its_value_or_reports_its_sender_gone() {
        let (counter, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        let (tx, mut rx) = oneshot();
        assert!(Pin::new(&mut rx).poll(&mut cx).is_pending());
        tx.send("answer").unwrap();
        assert_eq!(counter.0.load(Ordering::Relaxed), 1);
        assert!(matches!(
            Pin::new(&mut rx).poll(&mut cx),
            Poll::Ready(Ok("answer"))
        ));

        let (tx, mut rx) = oneshot::<u8>();
        drop(tx);
        assert!(matches!(
            Pin::new(&mut rx).poll(&mut cx),
            Poll::Ready(Err(SenderGone))
        ));

        let (tx, rx) = oneshot();
        drop(rx);
        assert_eq!(tx.send(3), Err(3));
    }
}
