//! A request body that can be sent again after its HTTP/2 stream was
//! refused.
//!
//! hyper's h2 client takes a request whole and hands nothing back once it
//! left, yet a stream the server refused (`REFUSED_STREAM`, or past a
//! graceful `GOAWAY`'s last stream id) was never processed and may go to
//! another server (RFC 9113 section 8.7): a gRPC call is a POST with a
//! body, and it is exactly what a draining gRPC server refuses. So the body
//! a proxied h2 request carries keeps what it sent, up to [`KEPT_MAX`]
//! bytes, and [`Replay::again`] gives a body that sends that again, then
//! the rest of the client's body as it comes. A body that outgrew the limit
//! cannot be sent again; the failure stands, as a reset stream would.
//!
//! Only one of a request's bodies reads on at a time: an older one (that
//! hyper has not dropped yet) ends in an error, so the client's bytes never
//! go to two streams.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use parking_lot::Mutex;

use crate::{BoxError, RequestBody};

/// The most of a request body kept for sending it again: a unary gRPC call
/// or a form post fits; an upload does not, and is not replayed.
pub(crate) const KEPT_MAX: usize = 64 * 1024;

enum Kept {
    Data(Bytes),
    Trailers(http::HeaderMap),
}

struct Shared {
    /// The client's body, read on by the current generation only.
    body: RequestBody,
    /// Every frame read so far, while they fit in [`KEPT_MAX`].
    kept: Vec<Kept>,
    kept_bytes: usize,
    /// No generation may start again: more was read than was kept, or the
    /// request was answered. What was kept goes once the reader is past it.
    closed: bool,
    /// The generation that may read; older bodies fail.
    generation: u32,
}

/// One send's view of a replayable body.
pub(crate) struct ReplayBody {
    shared: Arc<Mutex<Shared>>,
    generation: u32,
    /// The next kept frame this body sends.
    at: usize,
}

/// The handle the sender keeps to ask for the body again.
pub(crate) struct Replay {
    shared: Arc<Mutex<Shared>>,
}

/// Wraps `body` so it can be sent again; the wrapped body is the first send's.
pub(crate) fn replayable(body: RequestBody) -> (RequestBody, Replay) {
    let shared =
        Arc::new(Mutex::new(Shared { body, kept: Vec::new(), kept_bytes: 0, closed: false, generation: 0 }));
    let first = ReplayBody { shared: Arc::clone(&shared), generation: 0, at: 0 };
    (RequestBody::new(first), Replay { shared })
}

impl Replay {
    /// A body that sends everything again from the start, or `None` when
    /// more was read than kept. The bodies given before stop reading.
    pub(crate) fn again(&self) -> Option<RequestBody> {
        let mut shared = self.shared.lock();
        if shared.closed {
            return None;
        }
        shared.generation += 1;
        let generation = shared.generation;
        Some(RequestBody::new(ReplayBody { shared: Arc::clone(&self.shared), generation, at: 0 }))
    }

    /// The request was answered: nothing will be sent again, so nothing
    /// more is kept, and what was goes once the body has sent it.
    pub(crate) fn release(self) {
        self.shared.lock().closed = true;
    }
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut shared = this.shared.lock();
        if shared.generation != this.generation {
            // An older body read on after a newer one took over.
            return Poll::Ready(Some(Err("request body superseded by a retry".into())));
        }
        if let Some(kept) = shared.kept.get(this.at) {
            this.at += 1;
            let frame = match kept {
                Kept::Data(data) => Frame::data(data.clone()),
                Kept::Trailers(trailers) => Frame::trailers(trailers.clone()),
            };
            return Poll::Ready(Some(Ok(frame)));
        }
        if shared.closed && !shared.kept.is_empty() {
            // Past every kept frame, and none will be sent again.
            shared.kept = Vec::new();
        }
        let polled = Pin::new(&mut shared.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && !shared.closed
        {
            let kept = match (frame.data_ref(), frame.trailers_ref()) {
                (Some(data), _) if shared.kept_bytes + data.len() <= KEPT_MAX => {
                    shared.kept_bytes += data.len();
                    Some(Kept::Data(data.clone()))
                }
                (None, Some(trailers)) => Some(Kept::Trailers(trailers.clone())),
                _ => None,
            };
            match kept {
                Some(kept) => {
                    shared.kept.push(kept);
                    this.at += 1;
                }
                None => {
                    shared.closed = true;
                    shared.kept = Vec::new();
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let shared = self.shared.lock();
        shared.generation == self.generation && self.at >= shared.kept.len() && shared.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let shared = self.shared.lock();
        let kept: u64 = shared.kept[self.at.min(shared.kept.len())..]
            .iter()
            .map(|k| match k {
                Kept::Data(data) => data.len() as u64,
                Kept::Trailers(_) => 0,
            })
            .sum();
        let rest = shared.body.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + kept);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + kept);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;

    use super::*;

    fn chunks(parts: &[&'static str]) -> RequestBody {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> =
            parts.iter().map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes())))).collect();
        RequestBody::new(http_body_util::StreamBody::new(futures_util::stream::iter(frames)))
    }

    async fn text(body: RequestBody) -> Result<String, BoxError> {
        Ok(String::from_utf8(body.collect().await?.to_bytes().to_vec()).unwrap())
    }

    #[tokio::test]
    async fn a_second_body_sends_what_the_first_read_then_the_rest() {
        let (mut first, replay) = replayable(chunks(&["a", "b", "c"]));
        let frame = first.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "a");
        let second = replay.again().unwrap();
        assert!(first.frame().await.unwrap().is_err(), "the first body stops once superseded");
        assert_eq!(text(second).await.unwrap(), "abc");
        let third = replay.again().unwrap();
        assert_eq!(third.size_hint().lower(), 3, "what was kept counts in its size");
        assert_eq!(text(third).await.unwrap(), "abc");
    }

    #[tokio::test]
    async fn a_body_past_the_limit_is_not_sent_again() {
        let big: &'static str = Box::leak("x".repeat(KEPT_MAX).into_boxed_str());
        let (first, replay) = replayable(chunks(&[big, "y"]));
        assert_eq!(text(first).await.unwrap().len(), KEPT_MAX + 1, "the first send is whole");
        assert!(replay.again().is_none());

        let (first, replay) = replayable(chunks(&["small"]));
        replay.release();
        assert_eq!(text(first).await.unwrap(), "small");
    }
}
