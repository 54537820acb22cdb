//! Body types of service invocation: nothing is buffered, frames pass through as they come.
//!
//! - [`InvokeBody`]: a response body on its way back to the caller: the target's hyper body,
//!   holding the app channel's concurrency permit until the last frame went out.
//! - [`Replayable`]: a request body that can be taken back when the request never left (the
//!   connection to a sidecar was refused), so the call can fail over to another instance
//!   without buffering anything.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tandem_components::BoxError;
use tokio::sync::oneshot;

use crate::app_channel::{AppBody, AppResponse};

/// A response body streamed from the invoked target.
pub struct InvokeBody {
    kind: Kind,
}

enum Kind {
    /// From another sidecar or an external endpoint.
    Incoming(Incoming),
    /// From another sidecar, over the multiplexed sidecar-to-sidecar connection.
    H2(tandem_http2::body::RecvBody),
    /// From the local app: the whole response is kept for its concurrency permit; its headers
    /// were moved out already.
    App(Box<AppResponse>),
    /// A whole body in memory (a gRPC app's answer).
    Full(Option<Bytes>),
}

impl InvokeBody {
    pub(crate) fn incoming(body: Incoming) -> Self {
        Self {
            kind: Kind::Incoming(body),
        }
    }

    pub(crate) fn h2(body: tandem_http2::body::RecvBody) -> Self {
        Self {
            kind: Kind::H2(body),
        }
    }

    pub(crate) fn app(response: AppResponse) -> Self {
        Self {
            kind: Kind::App(Box::new(response)),
        }
    }

    pub(crate) fn full(bytes: Bytes) -> Self {
        Self {
            kind: Kind::Full(Some(bytes).filter(|b| !b.is_empty())),
        }
    }
}

impl std::fmt::Debug for InvokeBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InvokeBody")
    }
}

impl Body for InvokeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.kind {
            Kind::Incoming(b) => Pin::new(b).poll_frame(cx).map_err(BoxError::from),
            Kind::H2(b) => Pin::new(b).poll_frame(cx).map_err(BoxError::from),
            Kind::App(r) => Pin::new(r.response.body_mut())
                .poll_frame(cx)
                .map_err(BoxError::from),
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Incoming(b) => b.is_end_stream(),
            Kind::H2(b) => b.is_end_stream(),
            Kind::App(r) => r.response.body().is_end_stream(),
            Kind::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Incoming(b) => b.size_hint(),
            Kind::H2(b) => b.size_hint(),
            Kind::App(r) => r.response.body().size_hint(),
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

/// A request body that hands itself back through a channel when it is dropped without ever
/// having been polled: then not a byte of it was sent and the request can be sent elsewhere.
pub(crate) struct Replayable {
    body: Option<AppBody>,
    back: Option<oneshot::Sender<AppBody>>,
}

impl Replayable {
    /// Wraps `body`; the receiver gets it back if it is dropped unread.
    pub(crate) fn new(body: AppBody) -> (Self, oneshot::Receiver<AppBody>) {
        let (tx, rx) = oneshot::channel();
        (
            Self {
                body: Some(body),
                back: Some(tx),
            },
            rx,
        )
    }
}

impl Drop for Replayable {
    fn drop(&mut self) {
        if let (Some(back), Some(body)) = (self.back.take(), self.body.take()) {
            let _ = back.send(body);
        }
    }
}

impl Body for Replayable {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        // From the first poll on, bytes may have left: the body is no longer replayable.
        self.back = None;
        match self.body.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;
    use crate::app_channel::full_body;

    #[tokio::test]
    async fn an_unread_body_comes_back_and_a_read_one_does_not() {
        let (body, mut back) = Replayable::new(full_body("abc"));
        assert_eq!(body.size_hint().exact(), Some(3));
        drop(body);
        let returned = back.try_recv().expect("body handed back");
        assert_eq!(returned.collect().await.unwrap().to_bytes(), "abc");

        let (body, mut back) = Replayable::new(full_body("abc"));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abc");
        assert!(back.try_recv().is_err());
    }
}
