//! The request body handed to the service.
//!
//! A request whose data has all arrived by the time it is dispatched (every unary gRPC call
//! that fits in one read) carries it in place: no shared state, no locking. Anything else is
//! fed by the connection through a small shared queue; each chunk taken gives its bytes back
//! to the client's flow-control windows.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Frame, SizeHint};

use super::Shared;

/// The body of a request received on the gRPC port.
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
    conn: Arc<Shared>,
    id: u32,
}

/// What the connection has received for one stream and the service has not read yet.
#[derive(Default)]
pub(super) struct Queue(Mutex<QueueState>);

#[derive(Default)]
pub(super) struct QueueState {
    pub(super) data: VecDeque<Bytes>,
    pub(super) trailers: Option<HeaderMap>,
    /// The client ended the stream.
    pub(super) end: bool,
    /// The stream was reset (by the client, or by the connection closing).
    pub(super) reset: bool,
    /// The service dropped the body: further data is given back at once.
    pub(super) dropped: bool,
    waker: Option<Waker>,
}

impl Queue {
    pub(super) fn lock(&self) -> MutexGuard<'_, QueueState> {
        super::lock(&self.0)
    }

    /// Wakes the reader after the connection changed the state.
    pub(super) fn notify(state: &mut QueueState) {
        if let Some(w) = state.waker.take() {
            w.wake();
        }
    }
}

impl RecvBody {
    pub(super) fn full(data: Option<Bytes>, trailers: Option<HeaderMap>) -> Self {
        RecvBody(Inner::Full { data, trailers })
    }

    pub(super) fn streaming(queue: Arc<Queue>, conn: Arc<Shared>, id: u32) -> Self {
        RecvBody(Inner::Streaming(Receiver { queue, conn, id }))
    }
}

/// The client reset the stream, or the connection ended, before the body was complete.
#[derive(Debug)]
pub struct StreamReset;

impl fmt::Display for StreamReset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the request stream was reset before it ended")
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
        drop(state);
        if unread > 0 {
            self.conn.release(self.id, unread);
        }
    }
}
