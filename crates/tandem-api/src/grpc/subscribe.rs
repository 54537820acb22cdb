//! `SubscribeTopicEventsAlpha1`: streaming subscriptions (§4.5), served by
//! [`tandem_runtime::Runtime::subscribe_stream`].
//!
//! The first message must be the initial request (pub/sub and topic set); the answer opens
//! with `initial_response`, then carries one `event_message` per event. A task reads the
//! subscriber's `event_processed` answers and hands each verdict to the runtime. The stream
//! ends when the subscriber stops sending, when it goes away, or at shutdown; events still
//! waiting for a verdict are then retried by the component.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use dapr::dapr::proto::runtime::v1 as rt;
use dapr::dapr::proto::runtime::v1::subscribe_topic_events_request_alpha1::SubscribeTopicEventsRequestType as In;
use dapr::dapr::proto::runtime::v1::subscribe_topic_events_response_alpha1::SubscribeTopicEventsResponseType as Out;
use dapr::dapr::proto::runtime::v1::topic_event_response::TopicEventResponseStatus;
use tandem_runtime::pubsub::delivery::Verdict;
use tandem_runtime::pubsub::streaming::{Acker, StreamEvent, StreamRequest, StreamingSubscription};
use tandem_runtime::{ApiError, ErrorCode, Runtime};
use tokio::task::JoinHandle;
use tonic::codegen::tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::error::to_status;

/// The messages sent to the subscriber.
pub struct EventStream {
    initial: Option<rt::SubscribeTopicEventsResponseAlpha1>,
    subscription: StreamingSubscription,
    reader: JoinHandle<()>,
    reader_done: bool,
    stop: Pin<Box<dyn Future<Output = tandem_runtime::lifecycle::StopKind> + Send>>,
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Stream for EventStream {
    type Item = Result<rt::SubscribeTopicEventsResponseAlpha1, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(first) = this.initial.take() {
            return Poll::Ready(Some(Ok(first)));
        }
        if this.reader_done || this.stop.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        if Pin::new(&mut this.reader).poll(cx).is_ready() {
            this.reader_done = true;
            return Poll::Ready(None);
        }
        match this.subscription.poll_event(cx) {
            Poll::Ready(Some(ev)) => {
                Poll::Ready(Some(Ok(rt::SubscribeTopicEventsResponseAlpha1 {
                    subscribe_topic_events_response_type: Some(Out::EventMessage(event_message(
                        ev,
                    ))),
                })))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

fn required(what: &str) -> Status {
    to_status(ApiError::new(
        ErrorCode::Generic,
        format!("{what} is required"),
    ))
}

/// `SubscribeTopicEventsAlpha1`.
pub(super) async fn subscribe(
    rt: &Runtime,
    req: Request<Streaming<rt::SubscribeTopicEventsRequestAlpha1>>,
) -> Result<Response<EventStream>, Status> {
    let mut inbound = req.into_inner();
    let first = inbound.message().await?;
    let Some(In::InitialRequest(initial)) =
        first.and_then(|m| m.subscribe_topic_events_request_type)
    else {
        return Err(required("initial request"));
    };
    if initial.pubsub_name.is_empty() {
        return Err(required("pubsubName"));
    }
    if initial.topic.is_empty() {
        return Err(required("topic"));
    }
    let subscription = rt
        .subscribe_stream(StreamRequest {
            pubsub: initial.pubsub_name,
            topic: initial.topic,
            metadata: initial.metadata,
            dead_letter: initial.dead_letter_topic,
        })
        .await
        .map_err(to_status)?;
    let reader = tokio::spawn(read_verdicts(inbound, subscription.acker()));
    Ok(Response::new(EventStream {
        initial: Some(rt::SubscribeTopicEventsResponseAlpha1 {
            subscribe_topic_events_response_type: Some(Out::InitialResponse(
                rt::SubscribeTopicEventsResponseInitialAlpha1 {},
            )),
        }),
        subscription,
        reader,
        reader_done: false,
        stop: Box::pin(rt.shutdown.wait()),
    }))
}

/// Reads `event_processed` answers until the subscriber stops sending.
async fn read_verdicts(
    mut inbound: Streaming<rt::SubscribeTopicEventsRequestAlpha1>,
    acker: Acker,
) {
    loop {
        match inbound.message().await {
            Ok(Some(msg)) => {
                let Some(In::EventProcessed(done)) = msg.subscribe_topic_events_request_type else {
                    tracing::debug!("ignoring a second initial request on a subscription stream");
                    continue;
                };
                let status = done.status.map_or(0, |s| s.status);
                let verdict = match TopicEventResponseStatus::try_from(status) {
                    Ok(TopicEventResponseStatus::Success) => Verdict::Success,
                    Ok(TopicEventResponseStatus::Drop) => Verdict::Drop,
                    _ => Verdict::Retry,
                };
                if !acker.ack(&done.id, verdict) {
                    tracing::debug!(id = %done.id, "verdict for an event that is not waiting");
                }
            }
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "subscription stream closed");
                return;
            }
        }
    }
}

fn event_message(ev: StreamEvent) -> rt::TopicEventRequest {
    tandem_runtime::app_channel::grpc::topic_event_request(ev, "/")
}
