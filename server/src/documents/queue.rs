//! A document's command queue: bounded, many senders, one receiver, and holding no allocation
//! while empty.
//!
//! Senders try first ([`Sender::try_send`]) and wait for room only when the queue is full
//! ([`Sender::send`]): backpressure on the connections that feed a busy document. A tokio
//! `mpsc` channel would do the same but allocates its first block of 32 slots when it is
//! made, and keeps it: about 2 KiB for every loaded document, most of which sit idle. This
//! queue's buffer exists only while commands wait in it.

use std::collections::VecDeque;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// Why [`Sender::try_send`] did not queue a value (it is handed back).
#[derive(Debug)]
pub(super) enum TrySendError<T> {
    /// The queue holds its capacity.
    Full(T),
    /// The receiver closed the queue or is gone.
    Closed(T),
}

/// The receiver closed the queue or is gone; the value is handed back.
#[derive(Debug)]
pub(super) struct SendError<T>(pub T);

struct State<T> {
    items: VecDeque<T>,
    /// Set by [`Receiver::close`] or when the receiver is dropped.
    closed: bool,
    senders: usize,
}

struct Inner<T> {
    capacity: usize,
    // A std mutex: it is held only for a push or a pop, never across an `.await`.
    state: Mutex<State<T>>,
    /// Wakes the receiver (a value or the last sender's departure).
    received: Notify,
    /// Wakes senders waiting for room (or for the queue to close).
    room: Notify,
}

impl<T> Inner<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The sending half; cheap to clone.
pub(super) struct Sender<T> {
    inner: Arc<Inner<T>>,
}

/// The receiving half, held by the document task.
pub(super) struct Receiver<T> {
    inner: Arc<Inner<T>>,
}

/// A queue holding at most `capacity` values.
pub(super) fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let inner = Arc::new(Inner {
        capacity: capacity.max(1),
        state: Mutex::new(State {
            items: VecDeque::new(),
            closed: false,
            senders: 1,
        }),
        received: Notify::new(),
        room: Notify::new(),
    });
    (
        Sender {
            inner: Arc::clone(&inner),
        },
        Receiver { inner },
    )
}

impl<T> Sender<T> {
    /// Queues `value` unless the queue is full or closed.
    pub(super) fn try_send(&self, value: T) -> Result<(), TrySendError<T>> {
        let mut state = self.inner.lock();
        if state.closed {
            return Err(TrySendError::Closed(value));
        }
        if state.items.len() >= self.inner.capacity {
            return Err(TrySendError::Full(value));
        }
        state.items.push_back(value);
        drop(state);
        // Stores a permit when the receiver is not waiting, so no wake-up is lost.
        self.inner.received.notify_one();
        Ok(())
    }

    /// Queues `value`, waiting while the queue is full; fails once it is closed.
    pub(super) async fn send(&self, mut value: T) -> Result<(), SendError<T>> {
        loop {
            // Registered before the check, so room made after it wakes this sender.
            let mut room = pin!(self.inner.room.notified());
            room.as_mut().enable();
            match self.try_send(value) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Closed(v)) => return Err(SendError(v)),
                Err(TrySendError::Full(v)) => value = v,
            }
            room.await;
        }
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.inner.lock().senders += 1;
        Sender {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut state = self.inner.lock();
        state.senders -= 1;
        let last = state.senders == 0;
        drop(state);
        if last {
            self.inner.received.notify_one();
        }
    }
}

impl<T> Receiver<T> {
    /// The next value, waiting for one; `None` once the queue is empty and closed or every
    /// sender is gone.
    pub(super) async fn recv(&mut self) -> Option<T> {
        loop {
            if let Some(value) = self.try_recv() {
                return Some(value);
            }
            {
                let state = self.inner.lock();
                if state.closed || state.senders == 0 {
                    // Values may have been queued between the two locks.
                    drop(state);
                    return self.try_recv();
                }
            }
            self.inner.received.notified().await;
        }
    }

    /// The next value if one is waiting.
    pub(super) fn try_recv(&mut self) -> Option<T> {
        let mut state = self.inner.lock();
        let value = state.items.pop_front()?;
        if state.items.is_empty() {
            // An idle document keeps no buffer.
            state.items = VecDeque::new();
        }
        drop(state);
        self.inner.room.notify_one();
        Some(value)
    }

    /// Refuses every send from now on; what is queued can still be received.
    pub(super) fn close(&mut self) {
        self.inner.lock().closed = true;
        self.inner.room.notify_waiters();
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let items = {
            let mut state = self.inner.lock();
            state.closed = true;
            std::mem::take(&mut state.items)
        };
        self.inner.room.notify_waiters();
        // Dropped outside the lock: what they hold (reply senders) tells their waiters now.
        drop(items);
    }
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn values_arrive_in_order_and_the_buffer_goes_when_drained() {
        let (tx, mut rx) = channel(8);
        for i in 0..5 {
            tx.try_send(i).unwrap();
        }
        for i in 0..5 {
            assert_eq!(rx.recv().await, Some(i));
        }
        assert_eq!(rx.inner.lock().items.capacity(), 0);
        assert!(rx.try_recv().is_none());
    }

    #[tokio::test]
    async fn a_full_queue_refuses_then_waits_for_room() {
        let (tx, mut rx) = channel(2);
        tx.try_send(1).unwrap();
        tx.try_send(2).unwrap();
        assert!(matches!(tx.try_send(3), Err(TrySendError::Full(3))));
        let sender = tokio::spawn(async move { tx.send(3).await.is_ok() });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!sender.is_finished(), "waits while full");
        assert_eq!(rx.recv().await, Some(1));
        assert!(sender.await.unwrap());
        assert_eq!(rx.recv().await, Some(2));
        assert_eq!(rx.recv().await, Some(3));
        assert_eq!(rx.recv().await, None, "every sender is gone");
    }

    #[tokio::test]
    async fn closing_refuses_sends_and_keeps_what_is_queued() {
        let (tx, mut rx) = channel(1);
        tx.try_send(1).unwrap();
        let waiting = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(2).await.map_err(|SendError(v)| v) }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        rx.close();
        assert_eq!(waiting.await.unwrap(), Err(2), "a waiting send fails");
        assert!(matches!(tx.try_send(3), Err(TrySendError::Closed(3))));
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn a_dropped_receiver_drops_what_was_queued() {
        let (tx, rx) = channel(4);
        let (reply, answer) = tokio::sync::oneshot::channel::<()>();
        tx.try_send(reply).unwrap();
        drop(rx);
        assert!(answer.await.is_err(), "the queued reply sender was dropped");
        let (reply, _answer) = tokio::sync::oneshot::channel::<()>();
        assert!(tx.send(reply).await.is_err());
    }

    #[tokio::test]
    async fn the_receiver_wakes_for_a_value_sent_while_it_waits() {
        let (tx, mut rx) = channel(4);
        let receiver = tokio::spawn(async move { rx.recv().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.send(7).await.unwrap();
        assert_eq!(receiver.await.unwrap(), Some(7));
    }
}
