//! Gathering queued work into batches: what the proposer packs into one Raft entry and what a
//! follower packs into one forwarded message follow the same rule.

use tokio::sync::mpsc;

/// Takes from a queue whatever is waiting, up to `max_items` and `max_bytes` per batch. The first
/// item always forms a batch, even alone and however large, so nothing waits for company; an
/// item that would push a batch over `max_bytes` starts the next one.
pub struct Gatherer<T> {
    queue: mpsc::UnboundedReceiver<T>,
    carried: Option<T>,
    max_items: usize,
    max_bytes: usize,
}

impl<T> Gatherer<T> {
    pub fn new(queue: mpsc::UnboundedReceiver<T>, max_items: usize, max_bytes: usize) -> Self {
        Self {
            queue,
            carried: None,
            max_items,
            max_bytes,
        }
    }

    /// Waits for at least one item, then returns it with everything else already waiting that
    /// fits. `None` once every sender is gone and the queue is empty.
    pub async fn next_batch(&mut self, size: impl Fn(&T) -> usize) -> Option<Vec<T>> {
        let first = match self.carried.take() {
            Some(item) => item,
            None => self.queue.recv().await?,
        };
        let mut bytes = size(&first);
        let mut batch = vec![first];
        while batch.len() < self.max_items {
            let Ok(next) = self.queue.try_recv() else {
                break;
            };
            bytes += size(&next);
            if bytes > self.max_bytes {
                self.carried = Some(next);
                break;
            }
            batch.push(next);
        }
        Some(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn batches_respect_both_bounds_and_keep_order() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut gatherer = Gatherer::new(rx, 3, 10);
        for size in [4, 4, 4, 1, 1, 1, 1, 20, 1] {
            tx.send(size).unwrap();
        }
        drop(tx);
        let mut batches = Vec::new();
        while let Some(batch) = gatherer.next_batch(|n| *n).await {
            batches.push(batch);
        }
        assert_eq!(
            batches,
            vec![vec![4, 4], vec![4, 1, 1], vec![1, 1], vec![20], vec![1]]
        );
    }
}
