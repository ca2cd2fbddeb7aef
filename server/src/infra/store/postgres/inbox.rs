//! The shared store's notifications, grants, comments, due dates and webhook outbox
//! ([`crate::infra::store::inbox`]). Notification ids come from a per-user counter row
//! (`inbox_users`), locked until commit like a document's sid counter, so a user's ids commit
//! in order and a stream resuming after 41 never misses a 40 committed later. Outbox claims
//! take the head row of each `(endpoint, doc)` with `FOR UPDATE SKIP LOCKED` and lease it, so
//! two nodes never deliver one document's events at once or out of order.

use bytes::Bytes;
use deadpool_postgres::Object;
use tokio_postgres::Row;

use super::{big, execute, get, query, query_one, unsigned, PostgresStore, Tx};
use crate::infra::store::inbox::{
    DeliveryState, DueEntry, Grant, InboxLimits, NewNotification, Notification, OutboxEvent,
    OutboxRow, ReadMark, BATCH,
};
use crate::infra::store::{SidRange, StoreError};

/// Most rows a claim absorbs into one batch row.
const MAX_ABSORBED: i64 = 256;

pub(super) const V2: &str = "
CREATE TABLE inbox_users (
    user_id TEXT PRIMARY KEY,
    last_id BIGINT NOT NULL
);
CREATE TABLE notifications (
    user_id TEXT NOT NULL,
    id BIGINT NOT NULL,
    kind TEXT NOT NULL,
    doc TEXT NOT NULL,
    field TEXT NOT NULL,
    from_user TEXT,
    at BIGINT NOT NULL,
    excerpt TEXT NOT NULL,
    read BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (user_id, id)
);
CREATE TABLE grants (
    user_id TEXT NOT NULL,
    pattern TEXT NOT NULL,
    role TEXT NOT NULL,
    expires_at BIGINT,
    issued_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, pattern, role)
);
CREATE TABLE comments (
    doc TEXT NOT NULL,
    field TEXT NOT NULL,
    author TEXT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (doc, field)
);
CREATE TABLE due_dates (
    doc TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    due_at BIGINT NOT NULL,
    assignee TEXT,
    reminded BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX due_dates_at ON due_dates (reminded, due_at);
CREATE TABLE outbox (
    id BIGSERIAL PRIMARY KEY,
    endpoint TEXT NOT NULL,
    doc TEXT NOT NULL,
    kind TEXT NOT NULL,
    first_sid BIGINT NOT NULL,
    last_sid BIGINT NOT NULL,
    payload BYTEA NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    next_at BIGINT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    last_error TEXT,
    lease_until BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX outbox_key ON outbox (endpoint, doc, state, id);
";

fn now_ms() -> u64 {
    super::unix_ms()
}

pub(super) async fn insert_events(
    client: &Object,
    doc: &str,
    range: SidRange,
    events: &[OutboxEvent],
    now: u64,
) -> Result<(), StoreError> {
    for e in events {
        execute(
            client,
            "INSERT INTO outbox (endpoint, doc, kind, first_sid, last_sid, payload, created_at,
                                 next_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
            &[
                &e.endpoint,
                &doc,
                &e.kind,
                &big(range.first),
                &big(range.last),
                &&e.payload[..],
                &big(now),
            ],
        )
        .await?;
    }
    Ok(())
}

const NOTIFICATION_COLUMNS: &str = "id, user_id, kind, doc, field, from_user, at, excerpt, read";

fn notification(r: &Row) -> Result<Notification, StoreError> {
    let user: String = get(r, 1)?;
    Ok(Notification {
        id: unsigned(&user, "notification id", get(r, 0)?)?,
        new: NewNotification {
            kind: get(r, 2)?,
            doc: get(r, 3)?,
            field: get(r, 4)?,
            from: get(r, 5)?,
            at: unsigned(&user, "time", get(r, 6)?)?,
            excerpt: get(r, 7)?,
            user,
        },
        read: get(r, 8)?,
    })
}

const OUTBOX_COLUMNS: &str = "id, endpoint, doc, kind, first_sid, last_sid, payload, attempts, \
                              created_at, next_at, state, last_error";

fn outbox_row(r: &Row) -> Result<OutboxRow, StoreError> {
    let doc: String = get(r, 2)?;
    let state: String = get(r, 10)?;
    Ok(OutboxRow {
        id: unsigned(&doc, "outbox id", get(r, 0)?)?,
        endpoint: get(r, 1)?,
        kind: get(r, 3)?,
        first_sid: unsigned(&doc, "sid", get(r, 4)?)?,
        last_sid: unsigned(&doc, "sid", get(r, 5)?)?,
        payload: Bytes::from(get::<Vec<u8>>(r, 6)?),
        attempts: u32::try_from(get::<i32>(r, 7)?).unwrap_or(0),
        created_at: unsigned(&doc, "time", get(r, 8)?)?,
        next_at: unsigned(&doc, "time", get(r, 9)?)?,
        state: DeliveryState::parse(&state).unwrap_or(DeliveryState::Pending),
        last_error: get(r, 11)?,
        doc,
    })
}

fn due_entry(r: &Row) -> Result<DueEntry, StoreError> {
    let doc: String = get(r, 0)?;
    Ok(DueEntry {
        value: get(r, 1)?,
        due_at: unsigned(&doc, "due time", get(r, 2)?)?,
        assignee: get(r, 3)?,
        doc,
    })
}

macro_rules! transaction {
    ($self:ident, |$tx:ident| $work:expr) => {{
        let $tx = $self.begin().await?;
        let result = $work;
        match result {
            Ok(value) => $tx.commit().await.map(|()| value),
            Err(e) => {
                $tx.rollback().await;
                Err(e)
            }
        }
    }};
}

async fn add_in(
    tx: &Tx,
    items: Vec<NewNotification>,
    events: Vec<(String, OutboxEvent)>,
    limits: InboxLimits,
    now: u64,
) -> Result<Vec<Notification>, StoreError> {
    let c = tx.conn();
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let row = query_one(
            c,
            "INSERT INTO inbox_users (user_id, last_id) VALUES ($1, 1)
             ON CONFLICT (user_id) DO UPDATE SET last_id = inbox_users.last_id + 1
             RETURNING last_id",
            &[&item.user],
        )
        .await?;
        let id = unsigned(&item.user, "notification id", get(&row, 0)?)?;
        execute(
            c,
            "INSERT INTO notifications (user_id, id, kind, doc, field, from_user, at, excerpt)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &item.user,
                &big(id),
                &item.kind,
                &item.doc,
                &item.field,
                &item.from,
                &big(item.at),
                &item.excerpt,
            ],
        )
        .await?;
        execute(
            c,
            "DELETE FROM notifications WHERE user_id = $1 AND (id <= $2 OR at < $3)",
            &[
                &item.user,
                &(big(id) - big(limits.per_user)),
                &big(item.at.saturating_sub(limits.ttl_ms)),
            ],
        )
        .await?;
        out.push(Notification {
            id,
            new: item,
            read: false,
        });
    }
    for (doc, event) in events {
        insert_events(c, &doc, SidRange { first: 0, last: 0 }, &[event], now).await?;
    }
    Ok(out)
}

async fn unread_in(c: &Object, user: &str) -> Result<u64, StoreError> {
    let row = query_one(
        c,
        "SELECT count(*) FROM notifications WHERE user_id = $1 AND NOT read",
        &[&user],
    )
    .await?;
    unsigned(user, "count", get(&row, 0)?)
}

async fn claim_in(
    tx: &Tx,
    now: u64,
    lease_until: u64,
    limit: u32,
) -> Result<Vec<OutboxRow>, StoreError> {
    let c = tx.conn();
    let rows = query(
        c,
        &format!(
            "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE id IN (
                 SELECT min(id) FROM outbox WHERE state = 'pending' GROUP BY endpoint, doc)
             AND next_at <= $1 AND lease_until <= $1 ORDER BY id LIMIT $2
             FOR UPDATE SKIP LOCKED"
        ),
        &[&big(now), &i64::from(limit)],
    )
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let mut head = outbox_row(row)?;
        if head.kind == BATCH && head.attempts == 0 {
            let next = query(
                c,
                &format!(
                    "SELECT {OUTBOX_COLUMNS} FROM outbox
                     WHERE endpoint = $1 AND doc = $2 AND state = 'pending' AND id > $3
                     ORDER BY id LIMIT $4 FOR UPDATE"
                ),
                &[&head.endpoint, &head.doc, &big(head.id), &MAX_ABSORBED],
            )
            .await?;
            let mut absorbed = Vec::new();
            for r in &next {
                let r = outbox_row(r)?;
                if r.kind != BATCH || r.attempts != 0 {
                    break;
                }
                absorbed.push(r);
            }
            if !absorbed.is_empty() {
                let mut payload = head.payload.to_vec();
                let mut ids = Vec::with_capacity(absorbed.len());
                for r in &absorbed {
                    payload.push(b'\n');
                    payload.extend_from_slice(&r.payload);
                    head.last_sid = head.last_sid.max(r.last_sid);
                    ids.push(big(r.id));
                }
                head.payload = Bytes::from(payload);
                execute(c, "DELETE FROM outbox WHERE id = ANY($1)", &[&ids]).await?;
                execute(
                    c,
                    "UPDATE outbox SET payload = $2, last_sid = $3 WHERE id = $1",
                    &[&big(head.id), &&head.payload[..], &big(head.last_sid)],
                )
                .await?;
            }
        }
        execute(
            c,
            "UPDATE outbox SET lease_until = $2 WHERE id = $1",
            &[&big(head.id), &big(lease_until)],
        )
        .await?;
        out.push(head);
    }
    Ok(out)
}

impl PostgresStore {
    pub(super) async fn inbox_add(
        &self,
        items: Vec<NewNotification>,
        events: Vec<(String, OutboxEvent)>,
        limits: InboxLimits,
    ) -> Result<Vec<Notification>, StoreError> {
        transaction!(self, |tx| add_in(&tx, items, events, limits, now_ms())
            .await)
    }

    pub(super) async fn inbox_list(
        &self,
        user: &str,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError> {
        let c = self.client().await?;
        let before = big(before.unwrap_or(i64::MAX as u64));
        query(
            &c,
            &format!(
                "SELECT {NOTIFICATION_COLUMNS} FROM notifications
                 WHERE user_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3"
            ),
            &[&user, &before, &i64::from(limit)],
        )
        .await?
        .iter()
        .map(notification)
        .collect()
    }

    pub(super) async fn inbox_after(
        &self,
        user: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError> {
        let c = self.client().await?;
        query(
            &c,
            &format!(
                "SELECT {NOTIFICATION_COLUMNS} FROM notifications
                 WHERE user_id = $1 AND id > $2 ORDER BY id LIMIT $3"
            ),
            &[&user, &big(after), &i64::from(limit)],
        )
        .await?
        .iter()
        .map(notification)
        .collect()
    }

    pub(super) async fn inbox_unread(&self, user: &str) -> Result<u64, StoreError> {
        let c = self.client().await?;
        unread_in(&c, user).await
    }

    pub(super) async fn inbox_mark(&self, user: &str, mark: ReadMark) -> Result<u64, StoreError> {
        let c = self.client().await?;
        match mark {
            ReadMark::All => {
                execute(
                    &c,
                    "UPDATE notifications SET read = TRUE WHERE user_id = $1 AND NOT read",
                    &[&user],
                )
                .await?
            }
            ReadMark::Ids(ids) => {
                let ids: Vec<i64> = ids.into_iter().map(big).collect();
                execute(
                    &c,
                    "UPDATE notifications SET read = TRUE WHERE user_id = $1 AND id = ANY($2)",
                    &[&user, &ids],
                )
                .await?
            }
        };
        unread_in(&c, user).await
    }

    pub(super) async fn grant_record(&self, g: Grant) -> Result<(), StoreError> {
        let c = self.client().await?;
        execute(
            &c,
            "INSERT INTO grants (user_id, pattern, role, expires_at, issued_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (user_id, pattern, role) DO UPDATE SET
               expires_at = CASE WHEN grants.expires_at IS NULL OR EXCLUDED.expires_at IS NULL
                            THEN NULL ELSE GREATEST(grants.expires_at, EXCLUDED.expires_at) END,
               issued_at = GREATEST(grants.issued_at, EXCLUDED.issued_at)",
            &[
                &g.user,
                &g.pattern,
                &g.role,
                &g.expires_at.map(big),
                &big(g.issued_at),
            ],
        )
        .await?;
        Ok(())
    }

    pub(super) async fn grant_list(&self, user: &str) -> Result<Vec<Grant>, StoreError> {
        let c = self.client().await?;
        let rows = query(
            &c,
            "SELECT user_id, pattern, role, expires_at, issued_at FROM grants WHERE user_id = $1",
            &[&user],
        )
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Grant {
                    user: get(r, 0)?,
                    pattern: get(r, 1)?,
                    role: get(r, 2)?,
                    expires_at: get::<Option<i64>>(r, 3)?
                        .map(|v| unsigned(user, "expiry", v))
                        .transpose()?,
                    issued_at: unsigned(user, "issue time", get(r, 4)?)?,
                })
            })
            .collect()
    }

    pub(super) async fn comment_record(
        &self,
        doc: &str,
        field: &str,
        author: &str,
        at: u64,
    ) -> Result<(), StoreError> {
        let c = self.client().await?;
        execute(
            &c,
            "INSERT INTO comments (doc, field, author, at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (doc, field) DO NOTHING",
            &[&doc, &field, &author, &big(at)],
        )
        .await?;
        Ok(())
    }

    pub(super) async fn comment_list(
        &self,
        doc: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let c = self.client().await?;
        let rows = query(
            &c,
            "SELECT field, author FROM comments WHERE doc = $1 ORDER BY at, field",
            &[&doc],
        )
        .await?;
        rows.iter().map(|r| Ok((get(r, 0)?, get(r, 1)?))).collect()
    }

    pub(super) async fn due_set(
        &self,
        doc: &str,
        entry: Option<DueEntry>,
    ) -> Result<(), StoreError> {
        let c = self.client().await?;
        match entry {
            None => {
                execute(&c, "DELETE FROM due_dates WHERE doc = $1", &[&doc]).await?;
            }
            Some(e) => {
                execute(
                    &c,
                    "INSERT INTO due_dates (doc, value, due_at, assignee, reminded)
                     VALUES ($1, $2, $3, $4, FALSE)
                     ON CONFLICT (doc) DO UPDATE SET
                       reminded = CASE WHEN due_dates.value = EXCLUDED.value
                                  THEN due_dates.reminded ELSE FALSE END,
                       value = EXCLUDED.value, due_at = EXCLUDED.due_at,
                       assignee = EXCLUDED.assignee",
                    &[&doc, &e.value, &big(e.due_at), &e.assignee],
                )
                .await?;
            }
        }
        Ok(())
    }

    pub(super) async fn due_list(
        &self,
        until: u64,
        limit: u32,
    ) -> Result<Vec<DueEntry>, StoreError> {
        let c = self.client().await?;
        query(
            &c,
            "SELECT doc, value, due_at, assignee FROM due_dates
             WHERE NOT reminded AND due_at <= $1 ORDER BY due_at LIMIT $2",
            &[&big(until), &i64::from(limit)],
        )
        .await?
        .iter()
        .map(due_entry)
        .collect()
    }

    pub(super) async fn due_reminded(&self, doc: &str, value: &str) -> Result<(), StoreError> {
        let c = self.client().await?;
        execute(
            &c,
            "UPDATE due_dates SET reminded = TRUE WHERE doc = $1 AND value = $2",
            &[&doc, &value],
        )
        .await?;
        Ok(())
    }

    pub(super) async fn outbox_push(
        &self,
        doc: &str,
        events: Vec<OutboxEvent>,
    ) -> Result<(), StoreError> {
        let c = self.client().await?;
        insert_events(&c, doc, SidRange { first: 0, last: 0 }, &events, now_ms()).await
    }

    pub(super) async fn outbox_take(
        &self,
        now: u64,
        lease_until: u64,
        limit: u32,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        transaction!(self, |tx| claim_in(&tx, now, lease_until, limit).await)
    }

    pub(super) async fn outbox_delete(&self, id: u64) -> Result<(), StoreError> {
        let c = self.client().await?;
        execute(&c, "DELETE FROM outbox WHERE id = $1", &[&big(id)]).await?;
        Ok(())
    }

    pub(super) async fn outbox_fail(
        &self,
        id: u64,
        next_at: u64,
        error: &str,
        dead: bool,
    ) -> Result<(), StoreError> {
        let c = self.client().await?;
        let state = if dead { "dead" } else { "pending" };
        execute(
            &c,
            "UPDATE outbox SET attempts = attempts + 1, next_at = $2, last_error = $3,
             state = $4, lease_until = 0 WHERE id = $1",
            &[&big(id), &big(next_at), &error, &state],
        )
        .await?;
        Ok(())
    }

    pub(super) async fn outbox_rows(
        &self,
        state: DeliveryState,
        limit: u32,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        let c = self.client().await?;
        query(
            &c,
            &format!("SELECT {OUTBOX_COLUMNS} FROM outbox WHERE state = $1 ORDER BY id LIMIT $2"),
            &[&state.as_str(), &i64::from(limit)],
        )
        .await?
        .iter()
        .map(outbox_row)
        .collect()
    }

    pub(super) async fn outbox_again(&self, id: u64, now: u64) -> Result<bool, StoreError> {
        let c = self.client().await?;
        let n = execute(
            &c,
            "UPDATE outbox SET state = 'pending', attempts = 0, next_at = $2, lease_until = 0
             WHERE id = $1",
            &[&big(id), &big(now)],
        )
        .await?;
        Ok(n > 0)
    }

    pub(super) async fn outbox_count(&self) -> Result<(u64, u64), StoreError> {
        let c = self.client().await?;
        let row = query_one(
            &c,
            "SELECT count(*) FILTER (WHERE state = 'pending'),
                    count(*) FILTER (WHERE state = 'dead') FROM outbox",
            &[],
        )
        .await?;
        Ok((
            unsigned("", "count", get(&row, 0)?)?,
            unsigned("", "count", get(&row, 1)?)?,
        ))
    }
}
