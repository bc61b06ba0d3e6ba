//! The usage operations of the SQL stores, written once as macros that each
//! store expands (sqlx's executors are not generic in a way one function
//! could share without the `Send` trouble the stores' `*_impl` boxing
//! avoids): they run the statements of [`UsageQueries`](super::sql_usage::UsageQueries).

/// The usage operations of a SQL store, written once: expands to inherent
/// `*_impl` methods of `$store`, which has `pool` and
/// `queries.usage: UsageQueries`, and whose connections are `$conn`.
macro_rules! usage_operations {
    ($store:ty, $conn:ty) => {
        impl $store {
            /// In an update's transaction: deletes the states of limits
            /// `record` no longer carries.
            async fn prune_rates(
                &self,
                tx: &mut $conn,
                record: &$crate::key::KeyRecord,
            ) -> Result<(), StoreError> {
                let limits = &record.usage.rate_limits;
                let text = self.queries.usage.prune_rates(limits);
                let mut q = sqlx::query(&text).bind(record.id.as_str());
                for limit in limits {
                    q = q.bind(limit.name().as_str());
                }
                q.execute(tx)
                    .await
                    .map_err(|e| super::sql::backend("delete states of removed limits", e))?;
                Ok(())
            }

            async fn lease_credits_impl(
                &self,
                id: &$crate::ids::KeyId,
                want: u64,
                refill: Option<$crate::usage::RefillDue>,
            ) -> Result<Option<$crate::usage::CreditGrant>, StoreError> {
                use sqlx::Row;
                let b = super::sql_usage::lease_binds(want, refill);
                let row = sqlx::query(&self.queries.usage.lease_credits)
                    .bind(id.as_str())
                    .bind(b.want)
                    .bind(b.period_start)
                    .bind(b.refill_amount)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| super::sql::backend("lease credits", e))?;
                if let Some(row) = row {
                    let read = |f: &'static str| {
                        row.try_get::<i64, _>(f)
                            .map_err(|e| super::sql::corrupt(id.as_str(), f, e))
                    };
                    return super::sql_usage::credit_grant(
                        id,
                        read("credits_last_grant")?,
                        read("credits_remaining")?,
                    )
                    .map(Some);
                }
                match self.credits_of(id).await? {
                    None => Err(StoreError::NotFound(id.clone())),
                    Some(_) => Ok(None),
                }
            }

            /// The key's stored balance: `None` no key, `Some(None)` no credits.
            async fn credits_of(
                &self,
                id: &$crate::ids::KeyId,
            ) -> Result<Option<Option<i64>>, StoreError> {
                sqlx::query_scalar::<_, Option<i64>>(&self.queries.usage.credits_of)
                    .bind(id.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| super::sql::backend("read credits", e))
            }

            async fn settle_credits_impl(
                &self,
                id: &$crate::ids::KeyId,
                returned: u64,
                spent: u64,
            ) -> Result<(), StoreError> {
                sqlx::query(&self.queries.usage.settle_credits)
                    .bind(id.as_str())
                    .bind(super::sql_usage::amount(returned))
                    .bind(super::sql_usage::amount(spent))
                    .execute(&self.pool)
                    .await
                    .map_err(|e| super::sql::backend("settle credits", e))?;
                Ok(())
            }

            async fn change_credits_impl(
                &self,
                id: &$crate::ids::KeyId,
                change: $crate::usage::CreditChange,
            ) -> Result<Option<$crate::usage::Credits>, StoreError> {
                use sqlx::Row;
                use $crate::usage::CreditChange;
                // A guard that failed because the balance moved meanwhile
                // is tried again; a few rounds, then the caller retries.
                for _ in 0..4 {
                    let (text, n) = match change {
                        CreditChange::Set(n) => (&self.queries.usage.set_credits, n),
                        CreditChange::Add(n) => (&self.queries.usage.add_credits, n),
                    };
                    let row = if n <= $crate::usage::Credits::MAX {
                        sqlx::query(text)
                            .bind(id.as_str())
                            .bind(super::sql_usage::amount(n))
                            .fetch_optional(&self.pool)
                            .await
                            .map_err(|e| super::sql::backend("change credits", e))?
                    } else {
                        None
                    };
                    if let Some(row) = row {
                        let c = |e| super::sql::corrupt(id.as_str(), "credits", e);
                        return super::sql_usage::decode_credits(
                            id.as_str(),
                            row.try_get("credits_remaining").map_err(c)?,
                            row.try_get("credits_leased").map_err(c)?,
                            row.try_get("credits_refill").map_err(c)?,
                            row.try_get("credits_refilled_for").map_err(c)?,
                        );
                    }
                    let stored = self.credits_of(id).await?;
                    if super::sql_usage::unmatched_change(id, change, stored)?.is_none() {
                        return Ok(None);
                    }
                }
                Err(StoreError::Backend(format!(
                    "change credits of key {id}: the balance kept changing; try again"
                )))
            }

            async fn lease_rate_impl(
                &self,
                id: &$crate::ids::KeyId,
                lease: &$crate::usage::RateLease,
            ) -> Result<$crate::usage::RateGrant, StoreError> {
                use sqlx::Row;
                let b = super::sql_usage::rate_binds(id, lease)?;
                let row = sqlx::query(&self.queries.usage.lease_rate)
                    .bind(id.as_str())
                    .bind(lease.name.as_str())
                    .bind(b.now)
                    .bind(b.want)
                    .bind(b.interval)
                    .bind(b.burst)
                    .bind(b.fresh_granted)
                    .bind(b.fresh_tat)
                    .bind(b.fresh_lease)
                    .fetch_optional(&self.pool)
                    .await;
                let row = match row {
                    Ok(Some(row)) => row,
                    Ok(None) => return Err(StoreError::NotFound(id.clone())),
                    // The key was deleted between the read and the insert.
                    Err(e)
                        if e.as_database_error()
                            .is_some_and(|d| d.is_foreign_key_violation()) =>
                    {
                        return Err(StoreError::NotFound(id.clone()));
                    }
                    Err(e) => return Err(super::sql::backend("lease rate", e)),
                };
                let read = |f: &'static str| {
                    row.try_get::<i64, _>(f)
                        .map_err(|e| super::sql::corrupt(id.as_str(), f, e))
                };
                let granted = read("last_grant")?;
                let number = read("lease")?;
                Ok($crate::usage::RateGrant {
                    lease: u64::try_from(number).map_err(|_| {
                        super::sql::corrupt(
                            id.as_str(),
                            "lease",
                            format!("{number} is out of range"),
                        )
                    })?,
                    granted: u32::try_from(granted).map_err(|_| {
                        super::sql::corrupt(
                            id.as_str(),
                            "last_grant",
                            format!("{granted} is out of range"),
                        )
                    })?,
                    tat_us: read("tat")?,
                })
            }

            async fn return_rate_impl(
                &self,
                id: &$crate::ids::KeyId,
                name: &$crate::usage::LimitName,
                tokens: u32,
                interval_us: u64,
                lease: u64,
            ) -> Result<(), StoreError> {
                sqlx::query(&self.queries.usage.return_rate)
                    .bind(id.as_str())
                    .bind(name.as_str())
                    .bind(super::sql_usage::rate_return(tokens, interval_us))
                    .bind(i64::MIN)
                    // Past `i64::MAX` (no bucket numbers a lease so): matches no row.
                    .bind(i64::try_from(lease).unwrap_or(-1))
                    .execute(&self.pool)
                    .await
                    .map_err(|e| super::sql::backend("return rate", e))?;
                Ok(())
            }
        }
    };
}
pub(crate) use usage_operations;

/// The [`KeyStore`](crate::KeyStore) methods of the usage operations, each
/// boxing its `*_impl` future (see the stores' `KeyStore` impls). Expands
/// inside an `impl KeyStore for ...` block.
macro_rules! usage_trait_methods {
    () => {
        async fn lease_credits(
            &self,
            id: &KeyId,
            want: u64,
            refill: Option<$crate::usage::RefillDue>,
        ) -> Result<Option<$crate::usage::CreditGrant>, StoreError> {
            boxed(self.lease_credits_impl(id, want, refill)).await
        }
        async fn settle_credits(
            &self,
            id: &KeyId,
            returned: u64,
            spent: u64,
        ) -> Result<(), StoreError> {
            boxed(self.settle_credits_impl(id, returned, spent)).await
        }
        async fn change_credits(
            &self,
            id: &KeyId,
            change: $crate::usage::CreditChange,
        ) -> Result<Option<$crate::usage::Credits>, StoreError> {
            boxed(self.change_credits_impl(id, change)).await
        }
        async fn lease_rate(
            &self,
            id: &KeyId,
            lease: &$crate::usage::RateLease,
        ) -> Result<$crate::usage::RateGrant, StoreError> {
            boxed(self.lease_rate_impl(id, lease)).await
        }
        async fn return_rate(
            &self,
            id: &KeyId,
            name: &$crate::usage::LimitName,
            tokens: u32,
            interval_us: u64,
            lease: u64,
        ) -> Result<(), StoreError> {
            boxed(self.return_rate_impl(id, name, tokens, interval_us, lease)).await
        }
    };
}
pub(crate) use usage_trait_methods;
