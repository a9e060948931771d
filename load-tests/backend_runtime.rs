//! The runtime both load-test backends run on (included by `#[path]`, as
//! examples share no library of their own): one thread unless `--threads`
//! asks for more.

/// A current-thread runtime for `threads` ≤ 1, else a multi-thread one.
pub fn build(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
}
