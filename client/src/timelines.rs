//! The timelines a frame-stream role's process has imported, by semaphore id
//! ([`Timelines`]): its own (the ready timeline, a consumer's release timeline) and those it
//! meets in grants and frames (other consumers' release timelines, which attach at any time).
//! One type for every importer: `T` is what an import gives (a Vulkan `TimelineSemaphore`, a
//! [`CudaSemaphore`](crate::cuda::CudaSemaphore)).

use std::collections::HashMap;

use gpushare_proto::v1;

use crate::{Client, Error, Exported, Result};

/// Points resolved to their semaphore ids: `(id, value)`.
pub type Points = Vec<(String, u64)>;

/// Imported timelines by semaphore id.
#[derive(Debug)]
pub struct Timelines<T> {
    imported: HashMap<String, T>,
}

impl<T> Default for Timelines<T> {
    fn default() -> Self {
        Timelines {
            imported: HashMap::new(),
        }
    }
}

impl<T> Timelines<T> {
    /// None yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `id` is imported.
    pub fn contains(&self, id: &str) -> bool {
        self.imported.contains_key(id)
    }

    /// Keeps `timeline` as `id` (replacing an earlier import of it).
    pub fn insert(&mut self, id: &str, timeline: T) {
        self.imported.insert(id.to_owned(), timeline);
    }

    /// The import of `id` ([`Error::NotImported`] when there is none).
    pub fn get(&self, id: &str) -> Result<&T> {
        self.imported
            .get(id)
            .ok_or_else(|| Error::NotImported(id.to_owned()))
    }

    /// Imports with `import` every timeline of `points` not imported yet: exported through an
    /// export ticket of `client`'s (the caller reaches the stream, and so its timelines),
    /// redeemed with its memop word where it has one. A timeline that is gone was poisoned
    /// before it went, so its points are reached: they are left out of the result, the
    /// points as `(id, value)`.
    pub async fn meet(
        &mut self,
        client: &Client,
        points: &[v1::SemaphorePoint],
        mut import: impl FnMut(Exported) -> Result<T>,
    ) -> Result<Points> {
        let mut out = Vec::with_capacity(points.len());
        for p in points {
            if !self.contains(&p.semaphore_id) {
                match client.export_ticket(&p.semaphore_id).await {
                    Ok(t) => {
                        let e = client.redeem_with_word(&t.ticket).await?;
                        let timeline = import(e)?;
                        self.insert(&p.semaphore_id, timeline);
                    }
                    Err(e) if e.code() == Some(tonic::Code::NotFound) => continue,
                    Err(e) => return Err(e),
                }
            }
            out.push((p.semaphore_id.clone(), p.value));
        }
        Ok(out)
    }

    /// `points` with their imports ([`Error::NotImported`] for one that was never met).
    pub fn resolve(&self, points: &[(String, u64)]) -> Result<Vec<(&T, u64)>> {
        points
            .iter()
            .map(|(id, v)| Ok((self.get(id)?, *v)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_names_a_timeline_never_met() {
        let mut t = Timelines::new();
        t.insert("sem-a", 1u8);
        let points = vec![("sem-a".to_owned(), 5)];
        assert_eq!(t.resolve(&points).unwrap(), vec![(&1u8, 5)]);
        let missing = vec![("sem-b".to_owned(), 2)];
        assert!(matches!(t.resolve(&missing), Err(Error::NotImported(id)) if id == "sem-b"));
        assert!(t.contains("sem-a") && !t.contains("sem-b"));
    }
}
