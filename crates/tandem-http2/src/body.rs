//! A received body: a request body on the server, an answer body on the client.
//!
//! A body whose data has all arrived by the time it is handed over (every unary call that
//! fits in one read) carries it in place: no shared state, no locking. Anything else is fed
//! by the connection through a small shared queue; each chunk taken gives its bytes back to
//! the peer's flow-control windows.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Frame, SizeHint};

/// What a body tells the connection it came from.
pub trait Release: Send + Sync {
    /// `n` bytes of stream `id` were read: they may be given back to the peer's windows.
    fn release(&self, id: u32, n: usize);

    /// The body of stream `id` was dropped before its end.
    fn abandoned(&self, _id: u32) {}
}

/// A body received over HTTP/2.
pub struct RecvBody(Inner);

enum Inner {
    Full {
        data: Option<Bytes>,
        trailers: Option<HeaderMap>,
    },
    Streaming(Receiver),
}

struct Receiver {
    queue: Arc<Queue>,
    conn: Arc<dyn Release>,
    id: u32,
}

/// What the connection has received for one stream and the reader has not read yet.
#[derive(Default)]
pub struct Queue(Mutex<QueueState>);

/// The state behind a [`Queue`].
#[derive(Default)]
pub struct QueueState {
    /// Data received and not read yet.
    pub data: VecDeque<Bytes>,
    /// Trailers received and not read yet.
    pub trailers: Option<HeaderMap>,
    /// The peer ended the stream.
    pub end: bool,
    /// The stream was reset (by the peer, or by the connection closing).
    pub reset: bool,
    /// The reader dropped the body: further data is given back at once.
    pub dropped: bool,
    waker: Option<Waker>,
}

impl Queue {
    /// The queue's state, locked.
    pub fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes the reader after the connection changed the state.
    pub fn notify(state: &mut QueueState) {
        if let Some(w) = state.waker.take() {
            w.wake();
        }
    }
}

impl RecvBody {
    /// A body whose data (and trailers) have all arrived.
    pub fn full(data: Option<Bytes>, trailers: Option<HeaderMap>) -> Self {
        RecvBody(Inner::Full { data, trailers })
    }

    /// A body fed through `queue` by the connection `conn`, on stream `id`.
    pub fn streaming(queue: Arc<Queue>, conn: Arc<dyn Release>, id: u32) -> Self {
        RecvBody(Inner::Streaming(Receiver { queue, conn, id }))
    }
}

/// The peer reset the stream, or the connection ended, before the body was complete.
#[derive(Debug)]
pub struct StreamReset;

impl fmt::Display for StreamReset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the HTTP/2 stream was reset before its body ended")
    }
}

impl std::error::Error for StreamReset {}

impl http_body::Body for RecvBody {
    type Data = Bytes;
    type Error = StreamReset;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamReset>>> {
        match &mut self.get_mut().0 {
            Inner::Full { data, trailers } => Poll::Ready(match (data.take(), trailers.take()) {
                (Some(d), t) => {
                    *trailers = t;
                    Some(Ok(Frame::data(d)))
                }
                (None, Some(t)) => Some(Ok(Frame::trailers(t))),
                (None, None) => None,
            }),
            Inner::Streaming(r) => {
                let mut state = r.queue.lock();
                if let Some(d) = state.data.pop_front() {
                    drop(state);
                    r.conn.release(r.id, d.len());
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                if let Some(t) = state.trailers.take() {
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
                if state.end {
                    return Poll::Ready(None);
                }
                if state.reset {
                    return Poll::Ready(Some(Err(StreamReset)));
                }
                if !state
                    .waker
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
                {
                    state.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Inner::Full { data, trailers } => data.is_none() && trailers.is_none(),
            Inner::Streaming(r) => {
                let state = r.queue.lock();
                state.end && state.data.is_empty() && state.trailers.is_none()
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Inner::Full { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Inner::Streaming(_) => SizeHint::default(),
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let mut state = self.queue.lock();
        state.dropped = true;
        let unread: usize = state.data.drain(..).map(|d| d.len()).sum();
        let early = !state.end && !state.reset;
        drop(state);
        if early {
            self.conn.abandoned(self.id);
        }
        if unread > 0 {
            self.conn.release(self.id, unread);
        }
    }
}
