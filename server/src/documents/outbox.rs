//! A connection's outbound frame queue, and the close the document sends it: bounded, and
//! holding no allocation while empty.
//!
//! The document task pushes frames with [`Sender::try_send`] (never waiting: a full queue marks
//! a slow reader, which the task resyncs, then closes if it falls behind again) and closes the
//! connection with [`Sender::close`]; the connection's socket loop takes both from
//! [`Receiver::next`], one wake-up source, and more frames with [`Receiver::try_recv`]. A tokio
//! `mpsc` channel would do the same but allocates a block of slots up front for every
//! connection; most connections are idle most of the time, so this queue allocates only while
//! frames are waiting and gives its buffer back once drained. A fan-out wakes every reader of
//! the document, so the wake-up is a single [`AtomicWaker`], not a list of waiters.
//!
//! A sender may also hold a [`Direct`] writer (a y-websocket connection's socket, see
//! `edge::wire`): when nothing of the connection is waiting (no queued frame, none taken and not
//! yet written), [`Sender::try_send_all`] writes the frames to the socket itself, and the socket
//! loop is not woken at all. What the socket does not take at once stays with the writer, ahead
//! of anything written later, and the receiver is asked to flush it ([`Next::Flush`]).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::task::AtomicWaker;

use crate::base::close::Close;

/// Why a frame was not queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrySendError {
    /// The queue holds its capacity of frames: the reader is too slow.
    Full,
    /// The receiver is gone (the connection ended).
    Closed,
}

/// What a [`Direct`] writer did with frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// All of them are on the socket.
    All,
    /// They are taken: some are on the socket, the rest waits in the writer for a flush.
    Part,
    /// None of them: queue them.
    Nothing,
}

/// Writes frames to the connection's socket from the document's side, without waiting.
pub trait Direct: Send + Sync + std::fmt::Debug {
    /// Writes `frames` (whole, in order) if the socket takes them now.
    fn write_now(&self, frames: &[Bytes]) -> Written;
}

/// What the receiver takes next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// A frame to write.
    Frame(Bytes),
    /// Frames the document wrote are partly on the socket: flush the rest.
    Flush,
    /// The connection ends: with the close the document sent (once), or `None` when the
    /// document dropped it without one. Frames still queued are not delivered.
    Closed(Option<Close>),
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Bytes>,
    /// Bytes of the queued frames.
    bytes: usize,
    /// Frames taken by the receiver and not written yet ([`Receiver::sent`] ends it): the
    /// document must not write around them.
    in_flight: bool,
    /// The [`Direct`] writer holds bytes for the receiver to flush.
    flush: bool,
    /// The document closed the connection (its close, until taken).
    closed: bool,
    close: Option<Close>,
    receiver_gone: bool,
    sender_gone: bool,
}

#[derive(Debug)]
struct Inner {
    capacity: usize,
    max_bytes: usize,
    // A std mutex: it is never held across an `.await`, only for a push or a pop.
    state: Mutex<State>,
    wake: AtomicWaker,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The sending half, held by the document task.
#[derive(Debug)]
pub struct Sender {
    inner: Arc<Inner>,
    direct: Option<Box<dyn Direct>>,
}

/// The receiving half, held by the connection's socket loop.
#[derive(Debug)]
pub struct Receiver {
    inner: Arc<Inner>,
}

/// A queue holding at most `capacity` frames and `max_bytes` bytes of them (one frame of any
/// size fits in an empty queue).
pub fn outbox(capacity: usize, max_bytes: usize) -> (Sender, Receiver) {
    let inner = Arc::new(Inner {
        capacity: capacity.max(1),
        max_bytes,
        state: Mutex::new(State::default()),
        wake: AtomicWaker::new(),
    });
    (
        Sender {
            inner: inner.clone(),
            direct: None,
        },
        Receiver { inner },
    )
}

impl Sender {
    /// This sender, writing through `direct` when nothing of the connection is waiting.
    pub fn with_direct(mut self, direct: Box<dyn Direct>) -> Sender {
        self.direct = Some(direct);
        self
    }

    /// Queues `frame` unless the queue is full, or the receiver is gone or closed.
    pub fn try_send(&self, frame: Bytes) -> Result<(), TrySendError> {
        let mut state = self.inner.lock();
        if state.receiver_gone || state.closed {
            return Err(TrySendError::Closed);
        }
        if !self.fits(&state, 1, frame.len()) {
            return Err(TrySendError::Full);
        }
        state.bytes += frame.len();
        state.frames.push_back(frame);
        drop(state);
        // Wakes the receiver if it waits; if it does not, it finds the frame when it looks.
        self.inner.wake.wake();
        Ok(())
    }

    /// Sends every frame of `frames` (draining it), or none of them when they do not all fit
    /// or the receiver is gone. Returns their bytes. With a [`Direct`] writer and nothing of
    /// the connection waiting, they are written now; otherwise queued, with one wake-up for
    /// all of them.
    pub fn try_send_all(&self, frames: &mut Vec<Bytes>) -> Result<usize, TrySendError> {
        let mut state = self.inner.lock();
        if state.receiver_gone || state.closed {
            return Err(TrySendError::Closed);
        }
        let bytes = frames.iter().map(Bytes::len).sum();
        if let Some(direct) = &self.direct {
            // Under the lock: the receiver cannot take a frame meanwhile.
            if state.frames.is_empty() && !state.in_flight {
                match direct.write_now(frames) {
                    Written::All => {
                        frames.clear();
                        return Ok(bytes);
                    }
                    Written::Part => {
                        frames.clear();
                        state.flush = true;
                        drop(state);
                        self.inner.wake.wake();
                        return Ok(bytes);
                    }
                    Written::Nothing => {}
                }
            }
        }
        if !self.fits(&state, frames.len(), bytes) {
            return Err(TrySendError::Full);
        }
        state.bytes += bytes;
        state.frames.extend(frames.drain(..));
        drop(state);
        self.inner.wake.wake();
        Ok(bytes)
    }

    /// Drops every queued frame and queues `frames` instead (a resync of a reader that fell
    /// behind), whatever the capacity.
    pub fn replace_all(&self, frames: Vec<Bytes>) {
        let mut state = self.inner.lock();
        if state.receiver_gone || state.closed {
            return;
        }
        state.bytes = frames.iter().map(Bytes::len).sum();
        state.frames.clear();
        state.frames.extend(frames);
        drop(state);
        self.inner.wake.wake();
    }

    /// Closes the connection with `close`: the receiver's next take is [`Next::Closed`] with
    /// it, and queued frames are dropped. Only the first close counts.
    pub fn close(&self, close: Close) {
        let mut state = self.inner.lock();
        if state.closed || state.receiver_gone {
            return;
        }
        state.closed = true;
        state.close = Some(close);
        state.frames = VecDeque::new();
        state.bytes = 0;
        drop(state);
        self.inner.wake.wake();
    }

    fn fits(&self, state: &State, frames: usize, bytes: usize) -> bool {
        state.frames.len() + frames <= self.inner.capacity
            && (state.frames.is_empty() || state.bytes + bytes <= self.inner.max_bytes)
    }

    /// Whether the receiver is gone or closed.
    pub fn is_closed(&self) -> bool {
        let state = self.inner.lock();
        state.receiver_gone || state.closed
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.inner.lock().sender_gone = true;
        self.inner.wake.wake();
    }
}

impl Receiver {
    /// The next frame, or the end of the connection.
    pub async fn next(&mut self) -> Next {
        poll_fn(|cx| self.poll_next(cx)).await
    }

    /// [`Receiver::next`] as a poll.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Next> {
        if let Some(next) = self.take() {
            return Poll::Ready(next);
        }
        self.inner.wake.register(cx.waker());
        // A frame pushed between the take and the registration woke no one: look again.
        match self.take() {
            Some(next) => Poll::Ready(next),
            None => Poll::Pending,
        }
    }

    /// The next frame; `None` once the connection ended (closed by the document, or the sender
    /// gone and the queue drained).
    pub async fn recv(&mut self) -> Option<Bytes> {
        loop {
            match self.next().await {
                Next::Frame(frame) => return Some(frame),
                Next::Flush => {}
                Next::Closed(_) => return None,
            }
        }
    }

    /// Waits for the end of the connection, dropping frames: the document's close, if any.
    pub async fn closed(&mut self) -> Option<Close> {
        loop {
            if let Next::Closed(close) = self.next().await {
                return close;
            }
        }
    }

    /// The next frame if one is queued (none once the document closed the connection). A
    /// flush asked for meanwhile is dropped: the caller flushes after writing the frame anyway.
    pub fn try_recv(&mut self) -> Option<Bytes> {
        match self.take() {
            Some(Next::Frame(frame)) => Some(frame),
            _ => None,
        }
    }

    /// Whether the document closed the connection.
    pub fn is_closed(&self) -> bool {
        self.inner.lock().closed
    }

    /// Frames queued now.
    pub fn len(&self) -> usize {
        self.inner.lock().frames.len()
    }

    /// Whether no frame is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The frames taken so far are written (or the connection is ending): the document may
    /// write to the socket itself again.
    pub fn sent(&mut self) {
        self.inner.lock().in_flight = false;
    }

    /// What is there to take now, if anything.
    fn take(&mut self) -> Option<Next> {
        let mut state = self.inner.lock();
        if state.closed {
            return Some(Next::Closed(state.close.take()));
        }
        if state.flush {
            state.flush = false;
            return Some(Next::Flush);
        }
        match state.frames.pop_front() {
            Some(frame) => {
                state.in_flight = true;
                state.bytes -= frame.len();
                // A drained queue gives its buffer back (one small allocation per burst).
                if state.frames.is_empty() {
                    state.frames = VecDeque::new();
                }
                Some(Next::Frame(frame))
            }
            None if state.sender_gone => Some(Next::Closed(None)),
            None => None,
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let mut state = self.inner.lock();
        state.receiver_gone = true;
        state.frames = VecDeque::new();
        state.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_arrive_in_order_and_a_full_queue_refuses() {
        let (tx, mut rx) = outbox(2, usize::MAX);
        tx.try_send(Bytes::from_static(b"a")).unwrap();
        tx.try_send(Bytes::from_static(b"b")).unwrap();
        assert_eq!(
            tx.try_send(Bytes::from_static(b"c")),
            Err(TrySendError::Full)
        );
        assert_eq!(rx.recv().await.as_deref(), Some(&b"a"[..]));
        assert_eq!(rx.try_recv().as_deref(), Some(&b"b"[..]));
        assert_eq!(rx.try_recv(), None);
        tx.try_send(Bytes::from_static(b"d")).unwrap();
        drop(tx);
        assert_eq!(rx.recv().await.as_deref(), Some(&b"d"[..]));
        assert_eq!(rx.recv().await, None, "sender gone and queue drained");
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_and_a_gone_receiver_refuses() {
        let (tx, mut rx) = outbox(4, usize::MAX);
        let waiter = tokio::spawn(async move {
            let got = rx.recv().await;
            (got, rx)
        });
        tokio::task::yield_now().await;
        tx.try_send(Bytes::from_static(b"x")).unwrap();
        let (got, rx) = waiter.await.unwrap();
        assert_eq!(got.as_deref(), Some(&b"x"[..]));
        drop(rx);
        assert!(tx.is_closed());
        assert_eq!(
            tx.try_send(Bytes::from_static(b"y")),
            Err(TrySendError::Closed)
        );
    }

    #[test]
    fn the_byte_bound_refuses_what_does_not_fit_but_one_frame_always_fits() {
        let (tx, mut rx) = outbox(100, 10);
        tx.try_send(Bytes::from(vec![0; 25])).unwrap();
        assert_eq!(
            tx.try_send(Bytes::from_static(b"x")),
            Err(TrySendError::Full)
        );
        assert!(rx.try_recv().is_some());
        tx.try_send(Bytes::from(vec![0; 6])).unwrap();
        let mut two = vec![Bytes::from(vec![0; 2]), Bytes::from(vec![0; 3])];
        assert_eq!(tx.try_send_all(&mut two), Err(TrySendError::Full));
        let mut one = vec![Bytes::from(vec![0; 4])];
        assert_eq!(tx.try_send_all(&mut one), Ok(4));
    }

    #[tokio::test]
    async fn a_close_ends_the_queue_once_and_drops_queued_frames() {
        use crate::base::close::code;
        let (tx, mut rx) = outbox(8, usize::MAX);
        tx.try_send(Bytes::from_static(b"a")).unwrap();
        let waiter = tokio::spawn(async move {
            let first = rx.next().await;
            let second = rx.next().await;
            (first, second, rx)
        });
        tx.close(Close::new(code::SLOW_READER, "slow reader"));
        tx.close(Close::new(code::GOING_AWAY, "a second close is ignored"));
        let (first, second, rx) = waiter.await.unwrap();
        // The frame may have been taken before the close arrived; the close comes once.
        let first = match first {
            Next::Frame(f) => {
                assert_eq!(&f[..], b"a");
                second
            }
            closed => {
                assert_eq!(second, Next::Closed(None));
                closed
            }
        };
        assert_eq!(
            first,
            Next::Closed(Some(Close::new(code::SLOW_READER, "slow reader")))
        );
        assert!(rx.is_closed());
        assert_eq!(
            tx.try_send(Bytes::from_static(b"late")),
            Err(TrySendError::Closed),
            "a closed queue takes no more frames"
        );
    }

    #[tokio::test]
    async fn a_gone_sender_ends_the_queue_after_its_frames() {
        let (tx, mut rx) = outbox(8, usize::MAX);
        tx.try_send(Bytes::from_static(b"a")).unwrap();
        drop(tx);
        assert_eq!(rx.next().await, Next::Frame(Bytes::from_static(b"a")));
        assert_eq!(rx.next().await, Next::Closed(None));
        assert!(!rx.is_closed(), "no close was sent");
    }

    /// A socket that takes what it is told to, and records it.
    #[derive(Debug)]
    struct Socket {
        answer: Mutex<Written>,
        wrote: Mutex<Vec<Bytes>>,
    }

    impl Direct for Arc<Socket> {
        fn write_now(&self, frames: &[Bytes]) -> Written {
            let answer = *self.answer.lock().unwrap();
            if answer != Written::Nothing {
                self.wrote.lock().unwrap().extend_from_slice(frames);
            }
            answer
        }
    }

    #[tokio::test]
    async fn a_direct_writer_takes_frames_only_when_nothing_waits() {
        use futures_util::FutureExt;
        let socket = Arc::new(Socket {
            answer: Mutex::new(Written::All),
            wrote: Mutex::new(Vec::new()),
        });
        let (tx, mut rx) = outbox(8, usize::MAX);
        let tx = tx.with_direct(Box::new(socket.clone()));
        let f = |s: &'static [u8]| Bytes::from_static(s);

        // Written at once: nothing for the socket loop, not even a wake-up.
        assert_eq!(tx.try_send_all(&mut vec![f(b"a"), f(b"b")]), Ok(2));
        assert_eq!(rx.next().now_or_never(), None);
        // Partly written: the socket loop is asked to flush.
        *socket.answer.lock().unwrap() = Written::Part;
        assert_eq!(tx.try_send_all(&mut vec![f(b"c")]), Ok(1));
        assert_eq!(rx.next().await, Next::Flush);
        // Not written: queued.
        *socket.answer.lock().unwrap() = Written::Nothing;
        assert_eq!(tx.try_send_all(&mut vec![f(b"d")]), Ok(1));
        // A frame queued goes before anything later, even when the socket would take it.
        *socket.answer.lock().unwrap() = Written::All;
        assert_eq!(tx.try_send_all(&mut vec![f(b"e")]), Ok(1));
        assert_eq!(rx.next().await, Next::Frame(f(b"d")));
        // Taken and not written yet: the next frames still queue behind it.
        assert_eq!(tx.try_send_all(&mut vec![f(b"g")]), Ok(1));
        assert_eq!(rx.try_recv(), Some(f(b"e")));
        assert_eq!(rx.try_recv(), Some(f(b"g")));
        assert_eq!(tx.try_send_all(&mut vec![f(b"h")]), Ok(1));
        assert_eq!(rx.try_recv(), Some(f(b"h")));
        // Written by the socket loop: the document writes directly again.
        rx.sent();
        assert_eq!(tx.try_send_all(&mut vec![f(b"i")]), Ok(1));
        assert_eq!(rx.try_recv(), None);
        // The socket loop is closing the connection: nothing more goes to the socket.
        drop(rx);
        assert_eq!(
            tx.try_send_all(&mut vec![f(b"j")]),
            Err(TrySendError::Closed)
        );
        let wrote: Vec<Bytes> = socket.wrote.lock().unwrap().clone();
        assert_eq!(wrote, vec![f(b"a"), f(b"b"), f(b"c"), f(b"i")]);
    }

    #[test]
    fn a_drained_queue_gives_its_buffer_back() {
        let (tx, mut rx) = outbox(100, usize::MAX);
        for _ in 0..50 {
            tx.try_send(Bytes::from_static(b"f")).unwrap();
        }
        while rx.try_recv().is_some() {}
        assert_eq!(rx.inner.lock().frames.capacity(), 0);
    }
}
