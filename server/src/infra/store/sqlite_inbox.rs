//! The embedded store's notifications, grants, comments, due dates and webhook outbox
//! ([`super::inbox`]); tables in [`super::sqlite`]'s schema. Writes run in the writer
//! thread's transaction ([`SqliteStore::write`]), reads on the read pool.

use bytes::Bytes;
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::inbox::{
    DeliveryState, DueEntry, Grant, InboxLimits, NewNotification, Notification, OutboxEvent,
    OutboxRow, ReadMark, BATCH,
};
use super::sqlite::SqliteStore;
use super::{SidRange, StoreError};

/// Most rows a claim absorbs into one batch row.
const MAX_ABSORBED: u32 = 256;

pub(super) fn insert_events(
    conn: &Connection,
    doc: &str,
    range: SidRange,
    events: &[OutboxEvent],
    now: u64,
) -> Result<(), StoreError> {
    let mut insert = conn.prepare_cached(
        "INSERT INTO outbox (endpoint, doc, kind, first_sid, last_sid, payload, created_at, next_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
    )?;
    for e in events {
        insert.execute(params![
            e.endpoint,
            doc,
            e.kind,
            range.first,
            range.last,
            &e.payload[..],
            now
        ])?;
    }
    Ok(())
}

const NOTIFICATION_COLUMNS: &str = "id, user, kind, doc, field, from_user, at, excerpt, read";

fn notification(r: &Row<'_>) -> rusqlite::Result<Notification> {
    Ok(Notification {
        id: r.get(0)?,
        new: NewNotification {
            user: r.get(1)?,
            kind: r.get(2)?,
            doc: r.get(3)?,
            field: r.get(4)?,
            from: r.get(5)?,
            at: r.get(6)?,
            excerpt: r.get(7)?,
        },
        read: r.get::<_, i64>(8)? != 0,
    })
}

fn add_notifications(
    conn: &Connection,
    items: Vec<NewNotification>,
    events: Vec<(String, OutboxEvent)>,
    limits: InboxLimits,
    now: u64,
) -> Result<Vec<Notification>, StoreError> {
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let id: u64 = conn
            .prepare_cached(
                "INSERT INTO inbox_users (user, last_id) VALUES (?1, 1)
                 ON CONFLICT (user) DO UPDATE SET last_id = last_id + 1 RETURNING last_id",
            )?
            .query_row([&item.user], |r| r.get(0))?;
        conn.prepare_cached(
            "INSERT INTO notifications (user, id, kind, doc, field, from_user, at, excerpt)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![
            item.user,
            id,
            item.kind,
            item.doc,
            item.field,
            item.from,
            item.at,
            item.excerpt
        ])?;
        conn.prepare_cached(
            "DELETE FROM notifications WHERE user = ?1 AND (id <= ?2 - ?3 OR at < ?4)",
        )?
        .execute(params![
            item.user,
            id,
            limits.per_user,
            item.at.saturating_sub(limits.ttl_ms)
        ])?;
        out.push(Notification {
            id,
            new: item,
            read: false,
        });
    }
    for (doc, event) in events {
        insert_events(conn, &doc, SidRange { first: 0, last: 0 }, &[event], now)?;
    }
    Ok(out)
}

fn mark_read(conn: &Connection, user: &str, mark: &ReadMark) -> Result<u64, StoreError> {
    match mark {
        ReadMark::All => {
            conn.prepare_cached("UPDATE notifications SET read = 1 WHERE user = ?1 AND read = 0")?
                .execute([user])?;
        }
        ReadMark::Ids(ids) => {
            let mut stmt = conn
                .prepare_cached("UPDATE notifications SET read = 1 WHERE user = ?1 AND id = ?2")?;
            for id in ids {
                stmt.execute(params![user, id])?;
            }
        }
    }
    unread(conn, user)
}

fn unread(conn: &Connection, user: &str) -> Result<u64, StoreError> {
    Ok(conn
        .prepare_cached("SELECT count(*) FROM notifications WHERE user = ?1 AND read = 0")?
        .query_row([user], |r| r.get(0))?)
}

fn outbox_row(r: &Row<'_>) -> rusqlite::Result<OutboxRow> {
    let state: String = r.get(10)?;
    Ok(OutboxRow {
        id: r.get(0)?,
        endpoint: r.get(1)?,
        doc: r.get(2)?,
        kind: r.get(3)?,
        first_sid: r.get(4)?,
        last_sid: r.get(5)?,
        payload: Bytes::from(r.get::<_, Vec<u8>>(6)?),
        attempts: r.get(7)?,
        created_at: r.get(8)?,
        next_at: r.get(9)?,
        state: DeliveryState::parse(&state).unwrap_or(DeliveryState::Pending),
        last_error: r.get(11)?,
    })
}

const OUTBOX_COLUMNS: &str = "id, endpoint, doc, kind, first_sid, last_sid, payload, attempts, \
                              created_at, next_at, state, last_error";

fn claim(
    conn: &Connection,
    now: u64,
    lease_until: u64,
    limit: u32,
) -> Result<Vec<OutboxRow>, StoreError> {
    let heads: Vec<OutboxRow> = {
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE id IN (
                 SELECT min(id) FROM outbox WHERE state = 'pending' GROUP BY endpoint, doc)
             AND next_at <= ?1 AND lease_until <= ?1 ORDER BY id LIMIT ?2"
        ))?;
        let rows = stmt
            .query_map(params![now, limit], outbox_row)?
            .collect::<Result<_, _>>()?;
        rows
    };
    let mut out = Vec::with_capacity(heads.len());
    for mut head in heads {
        if head.kind == BATCH && head.attempts == 0 {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {OUTBOX_COLUMNS} FROM outbox
                 WHERE endpoint = ?1 AND doc = ?2 AND state = 'pending' AND id > ?3
                 ORDER BY id LIMIT ?4"
            ))?;
            let next: Vec<OutboxRow> = stmt
                .query_map(
                    params![head.endpoint, head.doc, head.id, MAX_ABSORBED],
                    outbox_row,
                )?
                .collect::<Result<_, _>>()?;
            let absorbed: Vec<OutboxRow> = next
                .into_iter()
                .take_while(|r| r.kind == BATCH && r.attempts == 0)
                .collect();
            if !absorbed.is_empty() {
                let mut payload = head.payload.to_vec();
                for r in &absorbed {
                    payload.push(b'\n');
                    payload.extend_from_slice(&r.payload);
                    head.last_sid = head.last_sid.max(r.last_sid);
                    conn.prepare_cached("DELETE FROM outbox WHERE id = ?1")?
                        .execute([r.id])?;
                }
                head.payload = Bytes::from(payload);
                conn.prepare_cached("UPDATE outbox SET payload = ?2, last_sid = ?3 WHERE id = ?1")?
                    .execute(params![head.id, &head.payload[..], head.last_sid])?;
            }
        }
        conn.prepare_cached("UPDATE outbox SET lease_until = ?2 WHERE id = ?1")?
            .execute(params![head.id, lease_until])?;
        out.push(head);
    }
    Ok(out)
}

fn due_entry(r: &Row<'_>) -> rusqlite::Result<DueEntry> {
    Ok(DueEntry {
        doc: r.get(0)?,
        value: r.get(1)?,
        due_at: r.get(2)?,
        assignee: r.get(3)?,
    })
}

fn grant(r: &Row<'_>) -> rusqlite::Result<Grant> {
    Ok(Grant {
        user: r.get(0)?,
        pattern: r.get(1)?,
        role: r.get(2)?,
        expires_at: r.get(3)?,
        issued_at: r.get(4)?,
    })
}

impl SqliteStore {
    pub(super) async fn inbox_add(
        &self,
        items: Vec<NewNotification>,
        events: Vec<(String, OutboxEvent)>,
        limits: InboxLimits,
    ) -> Result<Vec<Notification>, StoreError> {
        self.write(move |c, now| add_notifications(c, items, events, limits, now))
            .await
    }

    pub(super) async fn inbox_list(
        &self,
        user: &str,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError> {
        let user = user.to_owned();
        let before = before.unwrap_or(i64::MAX as u64);
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {NOTIFICATION_COLUMNS} FROM notifications
                 WHERE user = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3"
            ))?;
            let rows = stmt
                .query_map(params![user, before, limit], notification)?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
        .await
    }

    pub(super) async fn inbox_after(
        &self,
        user: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError> {
        let user = user.to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {NOTIFICATION_COLUMNS} FROM notifications
                 WHERE user = ?1 AND id > ?2 ORDER BY id LIMIT ?3"
            ))?;
            let rows = stmt
                .query_map(params![user, after, limit], notification)?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
        .await
    }

    pub(super) async fn inbox_unread(&self, user: &str) -> Result<u64, StoreError> {
        let user = user.to_owned();
        self.read(move |c| unread(c, &user)).await
    }

    pub(super) async fn inbox_mark(&self, user: &str, mark: ReadMark) -> Result<u64, StoreError> {
        let user = user.to_owned();
        self.write(move |c, _| mark_read(c, &user, &mark)).await
    }

    pub(super) async fn grant_record(&self, g: Grant) -> Result<(), StoreError> {
        self.write(move |c, _| {
            c.prepare_cached(
                "INSERT INTO grants (user, pattern, role, expires_at, issued_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (user, pattern, role) DO UPDATE SET
                   expires_at = CASE WHEN expires_at IS NULL OR excluded.expires_at IS NULL
                                THEN NULL ELSE max(expires_at, excluded.expires_at) END,
                   issued_at = max(issued_at, excluded.issued_at)",
            )?
            .execute(params![
                g.user,
                g.pattern,
                g.role,
                g.expires_at,
                g.issued_at
            ])?;
            Ok(())
        })
        .await
    }

    pub(super) async fn grant_list(&self, user: &str) -> Result<Vec<Grant>, StoreError> {
        let user = user.to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT user, pattern, role, expires_at, issued_at FROM grants WHERE user = ?1",
            )?;
            let rows = stmt.query_map([user], grant)?.collect::<Result<_, _>>()?;
            Ok(rows)
        })
        .await
    }

    pub(super) async fn comment_record(
        &self,
        doc: &str,
        field: &str,
        author: &str,
        at: u64,
    ) -> Result<(), StoreError> {
        let (doc, field, author) = (doc.to_owned(), field.to_owned(), author.to_owned());
        self.write(move |c, _| {
            c.prepare_cached(
                "INSERT INTO comments (doc, field, author, at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (doc, field) DO NOTHING",
            )?
            .execute(params![doc, field, author, at])?;
            Ok(())
        })
        .await
    }

    pub(super) async fn comment_list(
        &self,
        doc: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let doc = doc.to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT field, author FROM comments WHERE doc = ?1 ORDER BY at, field",
            )?;
            let rows = stmt
                .query_map([doc], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
        .await
    }

    pub(super) async fn due_set(
        &self,
        doc: &str,
        entry: Option<DueEntry>,
    ) -> Result<(), StoreError> {
        let doc = doc.to_owned();
        self.write(move |c, _| {
            match entry {
                None => {
                    c.prepare_cached("DELETE FROM due_dates WHERE doc = ?1")?
                        .execute([&doc])?;
                }
                Some(e) => {
                    c.prepare_cached(
                        "INSERT INTO due_dates (doc, value, due_at, assignee, reminded)
                         VALUES (?1, ?2, ?3, ?4, 0)
                         ON CONFLICT (doc) DO UPDATE SET
                           reminded = CASE WHEN value = excluded.value THEN reminded ELSE 0 END,
                           value = excluded.value, due_at = excluded.due_at,
                           assignee = excluded.assignee",
                    )?
                    .execute(params![doc, e.value, e.due_at, e.assignee])?;
                }
            }
            Ok(())
        })
        .await
    }

    pub(super) async fn due_list(
        &self,
        until: u64,
        limit: u32,
    ) -> Result<Vec<DueEntry>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT doc, value, due_at, assignee FROM due_dates
                 WHERE reminded = 0 AND due_at <= ?1 ORDER BY due_at LIMIT ?2",
            )?;
            let rows = stmt
                .query_map(params![until, limit], due_entry)?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
        .await
    }

    pub(super) async fn due_reminded(&self, doc: &str, value: &str) -> Result<(), StoreError> {
        let (doc, value) = (doc.to_owned(), value.to_owned());
        self.write(move |c, _| {
            c.prepare_cached("UPDATE due_dates SET reminded = 1 WHERE doc = ?1 AND value = ?2")?
                .execute(params![doc, value])?;
            Ok(())
        })
        .await
    }

    pub(super) async fn outbox_push(
        &self,
        doc: &str,
        events: Vec<OutboxEvent>,
    ) -> Result<(), StoreError> {
        let doc = doc.to_owned();
        self.write(move |c, now| {
            insert_events(c, &doc, SidRange { first: 0, last: 0 }, &events, now)
        })
        .await
    }

    pub(super) async fn outbox_take(
        &self,
        now: u64,
        lease_until: u64,
        limit: u32,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        self.write(move |c, _| claim(c, now, lease_until, limit))
            .await
    }

    pub(super) async fn outbox_delete(&self, id: u64) -> Result<(), StoreError> {
        self.write(move |c, _| {
            c.prepare_cached("DELETE FROM outbox WHERE id = ?1")?
                .execute([id])?;
            Ok(())
        })
        .await
    }

    pub(super) async fn outbox_fail(
        &self,
        id: u64,
        next_at: u64,
        error: &str,
        dead: bool,
    ) -> Result<(), StoreError> {
        let error = error.to_owned();
        let state = if dead { "dead" } else { "pending" };
        self.write(move |c, _| {
            c.prepare_cached(
                "UPDATE outbox SET attempts = attempts + 1, next_at = ?2, last_error = ?3,
                 state = ?4, lease_until = 0 WHERE id = ?1",
            )?
            .execute(params![id, next_at, error, state])?;
            Ok(())
        })
        .await
    }

    pub(super) async fn outbox_rows(
        &self,
        state: DeliveryState,
        limit: u32,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE state = ?1 ORDER BY id LIMIT ?2"
            ))?;
            let rows = stmt
                .query_map(params![state.as_str(), limit], outbox_row)?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
        .await
    }

    pub(super) async fn outbox_again(&self, id: u64, now: u64) -> Result<bool, StoreError> {
        self.write(move |c, _| {
            let n = c
                .prepare_cached(
                    "UPDATE outbox SET state = 'pending', attempts = 0, next_at = ?2,
                     lease_until = 0 WHERE id = ?1",
                )?
                .execute(params![id, now])?;
            Ok(n > 0)
        })
        .await
    }

    pub(super) async fn outbox_count(&self) -> Result<(u64, u64), StoreError> {
        self.read(|c| {
            let row = c
                .prepare_cached(
                    "SELECT count(*) FILTER (WHERE state = 'pending'),
                            count(*) FILTER (WHERE state = 'dead') FROM outbox",
                )?
                .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            Ok(row.unwrap_or((0, 0)))
        })
        .await
    }
}
