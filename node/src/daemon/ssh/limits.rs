//! Bounds on the SSH endpoint's connections: so many at once in all, so many from one source
//! address. A connection past either is closed before any SSH is spoken, so a flood from one
//! address costs the others nothing but a slot it cannot take.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// The connections open now, in all and by source.
#[derive(Debug)]
pub struct ConnectionLimits {
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
    total: usize,
    per_source: usize,
}

/// A connection's place; it frees on drop.
#[derive(Debug)]
pub struct Admitted {
    limits: Arc<ConnectionLimits>,
    source: IpAddr,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The node holds as many connections as it allows.
    #[error("the node's SSH endpoint is full; try again later")]
    Full,
    /// The source holds as many as one source may.
    #[error("too many SSH connections from this address; close some and retry")]
    SourceFull,
}

impl ConnectionLimits {
    /// At most `total` connections, `per_source` from one address.
    pub fn new(total: usize, per_source: usize) -> Arc<Self> {
        Arc::new(ConnectionLimits {
            open: Mutex::new((0, HashMap::new())),
            total: total.max(1),
            per_source: per_source.max(1),
        })
    }

    /// Takes a place for a connection from `source`.
    pub fn admit(self: &Arc<Self>, source: IpAddr) -> Result<Admitted, Refused> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.0 >= self.total {
            return Err(Refused::Full);
        }
        let held = open.1.entry(source).or_insert(0);
        if *held >= self.per_source {
            return Err(Refused::SourceFull);
        }
        *held += 1;
        open.0 += 1;
        Ok(Admitted {
            limits: Arc::clone(self),
            source,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(PoisonError::into_inner).0
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self
            .limits
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        open.0 = open.0.saturating_sub(1);
        if let Some(held) = open.1.get_mut(&self.source) {
            *held -= 1;
            if *held == 0 {
                open.1.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn sources_and_the_total_are_bounded_and_places_free_on_drop() {
        let limits = ConnectionLimits::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = limits.admit(a).unwrap();
        let _a2 = limits.admit(a).unwrap();
        assert_eq!(limits.admit(a).unwrap_err(), Refused::SourceFull);
        let _b1 = limits.admit(b).unwrap();
        assert_eq!(limits.admit(b).unwrap_err(), Refused::Full);
        drop(a1);
        assert_eq!(limits.open(), 2);
        let _b2 = limits.admit(b).unwrap();
        assert_eq!(limits.admit(b).unwrap_err(), Refused::Full);
    }
}
