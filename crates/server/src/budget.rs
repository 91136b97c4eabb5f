//! The process-wide budget of bytes held by requests in flight (`[server] max_inflight_bytes`).
//!
//! Every inference request holds a [`Reservation`] from the moment its body starts arriving
//! until the last thing that keeps its data is gone: the body as it is read, the tensors decoded
//! from it (what is not a view of the body), the outputs the model will produce (estimated from
//! its signature before the request is queued, then the real size), the encoded response until
//! it is sent (REST; a gRPC response until it is handed to tonic), and the inference log record
//! until it is written. Clones of a reservation share
//! it; the bytes return to the budget when the last clone is dropped.
//!
//! Growing a reservation past the budget fails with [`Error::OverBudget`] (HTTP 503, gRPC
//! `RESOURCE_EXHAUSTED`), before the memory is allocated wherever the size is known in
//! advance. Sizes learnt only after the work is done (a model's real outputs, an encoded
//! response) are added without a check: refusing them would waste the work, and they were
//! bounded by the checks before.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use oxinfer_core::{Error, Result};

/// The budget: a limit and the bytes reserved against it now.
#[derive(Debug)]
pub(crate) struct MemoryBudget {
    limit: usize,
    used: AtomicUsize,
    refused: AtomicU64,
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(MemoryBudget {
            limit,
            used: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
        })
    }

    /// The limit, in bytes.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes reserved now.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Requests refused because the budget was spent, since start.
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// An empty reservation against this budget.
    pub(crate) fn reservation(self: &Arc<Self>) -> Reservation {
        Reservation(Arc::new(Held {
            budget: self.clone(),
            bytes: AtomicUsize::new(0),
        }))
    }

    /// A reservation of `bytes`, or [`Error::OverBudget`].
    pub(crate) fn reserve(self: &Arc<Self>, bytes: usize) -> Result<Reservation> {
        let reservation = self.reservation();
        reservation.grow(bytes)?;
        Ok(reservation)
    }

    fn take(&self, bytes: usize) -> Result<()> {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let after = used.saturating_add(bytes);
            if after > self.limit {
                self.refused.fetch_add(1, Ordering::Relaxed);
                return Err(Error::OverBudget(format!(
                    "the server is holding {used} bytes for requests in flight; this request \
                     needs {bytes} more, over its limit of {} (max_inflight_bytes in [server]); \
                     retry later",
                    self.limit
                )));
            }
            match self
                .used
                .compare_exchange_weak(used, after, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(now) => used = now,
            }
        }
    }
}

/// Bytes one request holds against the [`MemoryBudget`]; cheap to clone, shared by its clones,
/// given back when the last clone is dropped.
#[derive(Debug, Clone)]
pub(crate) struct Reservation(Arc<Held>);

#[derive(Debug)]
struct Held {
    budget: Arc<MemoryBudget>,
    bytes: AtomicUsize,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget
            .used
            .fetch_sub(*self.bytes.get_mut(), Ordering::Relaxed);
    }
}

impl Reservation {
    /// Adds `bytes`, or fails with [`Error::OverBudget`] (and holds what it held before).
    pub(crate) fn grow(&self, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        self.0.budget.take(bytes)?;
        self.0.bytes.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Adds `bytes` whatever the budget says: for memory that already exists.
    pub(crate) fn add(&self, bytes: usize) {
        // Nothing to add is the usual case (a model's outputs as large as its signature said):
        // the budget's count, shared by every request, is left alone.
        if bytes == 0 {
            return;
        }
        self.0.budget.used.fetch_add(bytes, Ordering::Relaxed);
        self.0.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Holds exactly `bytes` from now on: gives back the difference, or grows by it (which can
    /// fail as [`grow`](Self::grow) does).
    pub(crate) fn set(&self, bytes: usize) -> Result<()> {
        let held = self.bytes();
        if bytes > held {
            self.grow(bytes - held)
        } else {
            self.0.bytes.fetch_sub(held - bytes, Ordering::Relaxed);
            self.0
                .budget
                .used
                .fetch_sub(held - bytes, Ordering::Relaxed);
            Ok(())
        }
    }

    /// Gives back up to `bytes` of what it holds.
    pub(crate) fn release(&self, bytes: usize) {
        let held = self.bytes();
        let _ = self.set(held.saturating_sub(bytes));
    }

    /// The bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.0.bytes.load(Ordering::Relaxed)
    }
}

/// A request body that reserves each chunk against a [`Reservation`] as it arrives (after
/// decompression, when it sits inside the decompression layer). A chunk over the budget ends
/// the body with `refuse(error)`.
pub(crate) struct CountedBody<B> {
    inner: B,
    reservation: Reservation,
    refuse: fn(Error) -> BoxError,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<B> CountedBody<B> {
    pub(crate) fn new(inner: B, reservation: Reservation, refuse: fn(Error) -> BoxError) -> Self {
        CountedBody {
            inner,
            reservation,
            refuse,
        }
    }
}

impl<B> Body for CountedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, Bytes::len);
                match this.reservation.grow(len) {
                    Ok(()) => Poll::Ready(Some(Ok(frame))),
                    Err(e) => Poll::Ready(Some(Err((this.refuse)(e)))),
                }
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that keeps its request's [`Reservation`] until it has been sent (or the
/// client has gone).
pub(crate) struct HeldBody<B> {
    inner: B,
    _reservation: Reservation,
}

impl<B> HeldBody<B> {
    pub(crate) fn new(inner: B, reservation: Reservation) -> Self {
        HeldBody {
            inner,
            _reservation: reservation,
        }
    }
}

impl<B: Body + Unpin> Body for HeldBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The budget error that ended a body, if that is why reading it failed (searched along the
/// error's sources).
pub(crate) fn refusal_in(error: &(dyn std::error::Error + 'static)) -> Option<Error> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(e @ Error::OverBudget(_)) = e.downcast_ref::<Error>() {
            return Some(e.clone());
        }
        next = e.source();
    }
    None
}

/// The memory an input of this datatype and shape takes once decoded: its elements, or for
/// `BYTES` their handles (the strings themselves are counted as they are copied).
pub(crate) fn declared_bytes(datatype: oxinfer_core::DataType, shape: &[usize]) -> usize {
    shape.iter().fold(
        datatype
            .size()
            .unwrap_or(std::mem::size_of::<bytes::Bytes>()),
        |n, &d| n.saturating_mul(d),
    )
}

/// The memory a decoded tensor holds that is not a view of `body` (the request as received): a
/// fixed-size tensor's buffer when it was copied out, a `BYTES` tensor's element handles and
/// the elements that were copied out.
pub(crate) fn held_outside(t: &oxinfer_core::Tensor, body: &[u8]) -> usize {
    let range = body.as_ptr_range();
    let outside = |b: &bytes::Bytes| {
        if b.is_empty() || range.contains(&b.as_ptr()) {
            0
        } else {
            b.len()
        }
    };
    match (t.raw(), t.strings()) {
        (Some(raw), _) => outside(raw),
        (None, Some(strings)) => strings.iter().fold(
            strings
                .len()
                .saturating_mul(std::mem::size_of::<bytes::Bytes>()),
            |n, s| n.saturating_add(outside(s)),
        ),
        (None, None) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_share_and_give_back() {
        let budget = MemoryBudget::new(100);
        let a = budget.reserve(60).unwrap();
        let copy = a.clone();
        let e = budget.reserve(41).unwrap_err();
        assert!(matches!(e, Error::OverBudget(_)), "{e}");
        assert_eq!(e.code().http_status(), 503);
        assert_eq!(budget.refused(), 1);
        let b = budget.reserve(40).unwrap();
        assert!(b.grow(1).is_err());
        assert_eq!(b.bytes(), 40, "a failed grow holds what it held");
        drop(a);
        assert_eq!(budget.used(), 100, "a clone still holds it");
        drop(copy);
        assert_eq!(budget.used(), 40);
        b.set(10).unwrap();
        assert_eq!(budget.used(), 10);
        b.add(200);
        assert_eq!(
            budget.used(),
            210,
            "add ignores the limit: the memory exists"
        );
        assert!(b.set(220).is_err());
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn views_of_the_body_are_not_counted_twice() {
        let body = bytes::Bytes::from(vec![7u8; 64]);
        let view = oxinfer_core::Tensor::new(
            "x",
            oxinfer_core::DataType::Uint8,
            vec![16],
            oxinfer_core::TensorData::Raw(body.slice(8..24)),
        )
        .unwrap();
        assert_eq!(held_outside(&view, &body), 0);
        let copied = oxinfer_core::Tensor::from_vec("x", vec![16], vec![7u8; 16]).unwrap();
        assert_eq!(held_outside(&copied, &body), 16);
        let strings =
            oxinfer_core::Tensor::from_strings("s", vec![2], vec![body.slice(0..4), "ab".into()])
                .unwrap();
        assert_eq!(held_outside(&strings, &body), 2 * 32 + 2);
    }
}
