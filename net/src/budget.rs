//! Byte budgets: memory a subscriber, a tenant and a whole process may hold for streams.
//!
//! A [`Budget`] has a limit and a parent; reserving bytes reserves them at every level up to
//! the root or at none, so that no level ever passes its limit and a refusal names the level
//! that refused ([`Exceeded`]). [`Budgets`] hands out one budget per tenant under a shared
//! total, made on first use and forgotten when nobody holds it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

/// Which level of a budget refused a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// One subscriber's (or one query's) own share.
    Subscriber,
    /// Everything one tenant holds.
    Tenant,
    /// Everything the process holds.
    Total,
}

impl Level {
    /// The level's name, as error messages show it.
    pub fn name(self) -> &'static str {
        match self {
            Level::Subscriber => "subscriber",
            Level::Tenant => "tenant",
            Level::Total => "process",
        }
    }
}

/// A reservation that would pass a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("over the {} limit of {limit} bytes", level.name())]
pub struct Exceeded {
    /// The level that refused.
    pub level: Level,
    /// Its limit, bytes.
    pub limit: usize,
}

/// A byte budget with a parent.
#[derive(Debug)]
pub struct Budget {
    level: Level,
    limit: usize,
    used: AtomicUsize,
    parent: Option<Arc<Budget>>,
}

impl Budget {
    /// A budget without a parent.
    pub fn root(level: Level, limit: usize) -> Arc<Budget> {
        Arc::new(Budget { level, limit, used: AtomicUsize::new(0), parent: None })
    }

    /// A budget under `self`.
    pub fn child(self: &Arc<Self>, level: Level, limit: usize) -> Arc<Budget> {
        Arc::new(Budget { level, limit, used: AtomicUsize::new(0), parent: Some(self.clone()) })
    }

    /// Reserves `bytes` here and at every level above, or nowhere.
    pub fn try_reserve(&self, bytes: usize) -> Result<(), Exceeded> {
        let mut current = self.used.load(Ordering::Relaxed);
        loop {
            if current.saturating_add(bytes) > self.limit {
                return Err(Exceeded { level: self.level, limit: self.limit });
            }
            match self.used.compare_exchange_weak(current, current + bytes, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => break,
                Err(now) => current = now,
            }
        }
        if let Some(parent) = &self.parent
            && let Err(e) = parent.try_reserve(bytes)
        {
            self.used.fetch_sub(bytes, Ordering::AcqRel);
            return Err(e);
        }
        Ok(())
    }

    /// Gives back `bytes` reserved earlier, here and above.
    pub fn release(&self, bytes: usize) {
        let _ = self.used.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |u| Some(u.saturating_sub(bytes)));
        if let Some(parent) = &self.parent {
            parent.release(bytes);
        }
    }

    /// Bytes reserved here now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The limit, bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

/// Per-tenant budgets under one total. `Budgets::new(total, per_tenant)`.
#[derive(Debug)]
pub struct Budgets {
    total: Arc<Budget>,
    per_tenant: usize,
    tenants: Mutex<HashMap<String, Weak<Budget>>>,
}

impl Budgets {
    /// A total of `total` bytes, of which one tenant may hold `per_tenant`.
    pub fn new(total: usize, per_tenant: usize) -> Self {
        Budgets { total: Budget::root(Level::Total, total), per_tenant, tenants: Mutex::new(HashMap::new()) }
    }

    /// `tenant`'s budget (the same one while anybody holds it).
    pub fn tenant(&self, tenant: &str) -> Arc<Budget> {
        let mut tenants = self.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(budget) = tenants.get(tenant).and_then(Weak::upgrade) {
            return budget;
        }
        tenants.retain(|_, b| b.strong_count() > 0);
        let budget = self.total.child(Level::Tenant, self.per_tenant);
        tenants.insert(tenant.to_owned(), Arc::downgrade(&budget));
        budget
    }

    /// The total budget.
    pub fn total(&self) -> &Arc<Budget> {
        &self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_hold_at_every_level_or_none() {
        let budgets = Budgets::new(100, 60);
        let a = budgets.tenant("a").child(Level::Subscriber, 50);
        let a2 = budgets.tenant("a").child(Level::Subscriber, 50);
        let b = budgets.tenant("b").child(Level::Subscriber, 50);
        assert_eq!(a.try_reserve(51), Err(Exceeded { level: Level::Subscriber, limit: 50 }));
        a.try_reserve(40).unwrap();
        assert_eq!(a2.try_reserve(30), Err(Exceeded { level: Level::Tenant, limit: 60 }));
        assert_eq!(a2.used(), 0, "a refused reservation leaves nothing behind");
        b.try_reserve(50).unwrap();
        assert_eq!(a2.try_reserve(15), Err(Exceeded { level: Level::Total, limit: 100 }));
        assert_eq!(budgets.tenant("a").used(), 40);
        a.release(40);
        assert_eq!(budgets.total().used(), 50);
        a2.try_reserve(15).unwrap();
    }
}
