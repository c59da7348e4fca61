//! A cancellation flag that any thread can raise and async code can await.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// Cloneable handle; cancelling one clone cancels them all. Cancelling is
/// sticky and works from any thread, inside or outside the runtime.
#[derive(Clone, Debug, Default)]
pub struct CancelToken {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    cancelled: AtomicBool,
    /// Callers inside [`CancelToken::start_unless_cancelled`] between the
    /// check and the start of their work.
    starting: AtomicUsize,
    notify: Notify,
}

impl CancelToken {
    pub fn new() -> CancelToken {
        CancelToken::default()
    }

    /// Cancel. When this returns, no [`start_unless_cancelled`] will start
    /// its work any more (one that started before may still be running).
    ///
    /// [`start_unless_cancelled`]: Self::start_unless_cancelled
    pub fn cancel(&self) {
        self.inner.cancelled.store(true, Ordering::SeqCst);
        self.inner.notify.notify_waiters();
        // Wait out the few instructions between a starter's check and its
        // start, so that "cancel returned" means "nothing starts later".
        while self.inner.starting.load(Ordering::SeqCst) > 0 {
            std::hint::spin_loop();
        }
    }

    /// Run `f` unless the token is cancelled; returns `None` without
    /// running it if so. Paired with [`cancel`](Self::cancel): `f` never
    /// starts after `cancel` returned.
    pub fn start_unless_cancelled<R>(&self, f: impl FnOnce() -> R) -> Option<R> {
        self.inner.starting.fetch_add(1, Ordering::SeqCst);
        if self.is_cancelled() {
            self.inner.starting.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        // From here on `f` counts as started: `f` may itself cancel the
        // token, so the count must not cover its run.
        self.inner.starting.fetch_sub(1, Ordering::SeqCst);
        Some(f())
    }

    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::SeqCst)
    }

    /// Completes once [`cancel`](Self::cancel) was called.
    pub async fn cancelled(&self) {
        loop {
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

impl super::Client {
    /// Run `fut` unless the application closes the client first: then `fut`
    /// is dropped (ending its streams) and the result is
    /// `Error::Disconnected`. For calls whose abandonment needs no cleanup
    /// on the remote side (reads, atomic writes); execute stops its command
    /// itself.
    pub async fn until_closed<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = super::Result<T>>,
    ) -> super::Result<T> {
        let closing = self.inner.closing.lock().clone();
        tokio::select! {
            biased;
            r = fut => r,
            _ = closing.cancelled() => Err(super::Error::Disconnected(format!(
                "the client was closed during {what}; connect again and retry"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cancel_from_another_thread_wakes_the_waiter() {
        let t = CancelToken::new();
        let t2 = t.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            t2.cancel();
        });
        tokio::time::timeout(std::time::Duration::from_secs(5), t.cancelled())
            .await
            .unwrap();
        assert!(t.is_cancelled());
        t.cancelled().await; // sticky
    }
}
