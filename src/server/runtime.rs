//! The tokio runtime every `raftkv` command runs on.
//!
//! Tokio's multi-thread scheduler normally runs a task woken by the running task next, ahead of
//! everything already queued (its "LIFO slot"). That is exactly wrong for a gRPC server under
//! load: when one Raft entry commits, its writes' handler tasks are woken together, and each of
//! them, as it finishes, wakes the connection task that writes responses to the socket. With the
//! LIFO slot that connection task runs straight after every handler and sends each response in a
//! `writev` of its own; without it, it runs once after the handlers queued before it and sends
//! all their responses together, and each response packet saved is a wake-up saved for the
//! sender, the loopback stack and the receiver (figures in docs/performance.md).
//!
//! Turning the slot off is an unstable tokio option, compiled only with `--cfg tokio_unstable`,
//! which `.cargo/config.toml` sets for every build from this repository. A build made without it
//! (for instance with `RUSTFLAGS` set in the environment, which replaces that file's flags)
//! still works, only slower; [`lifo_slot_disabled`] tells which one this is, and `raftkv serve`
//! logs a warning when it is the slower one.

use tokio::runtime::{Builder, Runtime};

/// Builds the multi-thread runtime, with `worker_threads` workers when given (tokio's default,
/// one per core, otherwise), and with the LIFO slot off when this build allows it.
pub fn build(worker_threads: Option<usize>) -> std::io::Result<Runtime> {
    let mut builder = Builder::new_multi_thread();
    if let Some(workers) = worker_threads {
        // Zero would make tokio panic; callers validate their flag, this is the last guard.
        builder.worker_threads(workers.max(1));
    }
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    builder.enable_all().build()
}

/// Whether runtimes built by [`build`] run woken tasks in the order they were woken.
pub const fn lifo_slot_disabled() -> bool {
    cfg!(tokio_unstable)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Tasks spawned (woken) by a running task must run in the order they were spawned: that is
    /// what lets a connection task woken by several handlers run once, after all of them. With
    /// the LIFO slot the last one spawned runs first. This fails on a build without
    /// `--cfg tokio_unstable`, which is the point: such a build loses the write coalescing.
    #[test]
    fn woken_tasks_run_in_the_order_they_were_woken() {
        let runtime = build(Some(1)).expect("runtime");
        let order = Arc::new(Mutex::new(Vec::new()));
        let seen = order.clone();
        runtime.block_on(async move {
            let handles = tokio::spawn(async move {
                (0..4)
                    .map(|i| {
                        let seen = seen.clone();
                        tokio::spawn(async move { seen.lock().expect("lock").push(i) })
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .expect("spawner task");
            for handle in handles {
                handle.await.expect("spawned task");
            }
        });
        assert_eq!(
            *order.lock().expect("lock"),
            vec![0, 1, 2, 3],
            "tasks ran out of wake-up order; lifo_slot_disabled() = {}",
            lifo_slot_disabled()
        );
    }
}
