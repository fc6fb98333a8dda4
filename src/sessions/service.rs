//! Starting, touching, extending and ending sessions; the scheduler's scan.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use serde_json::json;

use super::{Session, SessionPolicy, SessionState, expires_at, next_due_at};
use crate::audit::{Action, AuditEvent};
use crate::auth::Identity;
use crate::clock::Timestamp;
use crate::error::Error;
use crate::realtime::rooms::session_room;
use std::sync::Arc;

use crate::config::Config;
use crate::realtime::events;
use crate::realtime::hub::Hub;
use crate::store::Store;
use crate::store::sessions as sql;
use crate::store::{StoreError, audit};

/// What session bookkeeping uses.
#[derive(Clone)]
pub struct Sessions {
    pub config: Arc<Config>,
    pub store: Store,
    pub hub: Hub,
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// A socket's view of its session, kept in the socket's extensions so that
/// activity can be answered and coalesced without a database round trip.
#[derive(Debug)]
pub struct SessionClock {
    pub session_id: String,
    pub started_at: Timestamp,
    pub idle_timeout: Duration,
    pub max_lifetime: Duration,
    /// When this socket last wrote activity to the database (ms).
    last_written: AtomicI64,
}

impl SessionClock {
    /// The expiry that activity at `at` gives the session.
    pub fn expires_after_activity(&self, at: Timestamp) -> Timestamp {
        at.plus(self.idle_timeout)
            .min(self.started_at.plus(self.max_lifetime))
    }
}

/// What a connecting socket finds.
pub enum OnConnect {
    /// No session id in the token.
    NoSession,
    Active(SessionClock),
    /// The session ended before; the socket must be told and dropped.
    Ended {
        reason: String,
    },
    /// The session id belongs to another user.
    Foreign,
}

/// Starts the token's session if it is new, or records the connection as
/// activity if it is active.
pub async fn on_connect(sessions: &Sessions, identity: &Identity) -> Result<OnConnect, Error> {
    let Some(session_id) = identity.session_id.as_deref() else {
        return Ok(OnConnect::NoSession);
    };
    let now = Timestamp::now();
    let policy = SessionPolicy::for_roles(&sessions.config.sessions, &identity.roles);
    let mut tx = sessions.store.begin().await?;
    let fresh = new_session(session_id, &identity.user_id, now, &policy);
    let started = sql::insert(
        &mut tx,
        &fresh,
        next_due_at(fresh.expires_at, None, policy.warning_before),
    )
    .await?;
    let session = if started {
        audit::append(
            &mut tx,
            &AuditEvent::new(Action::SessionStarted, now)
                .by(identity)
                .user(identity.user_id.clone())
                .session(Some(session_id))
                .detail(json!({ "via": "socket.io", "expiresAt": fresh.expires_at })),
        )
        .await?;
        fresh
    } else {
        let existing = sql::find(&mut tx, session_id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("session {session_id} not found")))?;
        if existing.user_id != identity.user_id {
            return Ok(OnConnect::Foreign);
        }
        if existing.state != SessionState::Active {
            return Ok(OnConnect::Ended {
                reason: existing.end_reason.unwrap_or_else(|| "idle".into()),
            });
        }
        sql::touch(&mut tx, session_id, now).await?;
        existing
    };
    tx.commit().await.map_err(StoreError::from)?;
    Ok(OnConnect::Active(SessionClock {
        session_id: session.id,
        started_at: session.started_at,
        idle_timeout: Duration::from_millis(session.idle_timeout_ms.max(0) as u64),
        max_lifetime: Duration::from_millis(session.max_lifetime_ms.max(0) as u64),
        last_written: AtomicI64::new(now.as_millis()),
    }))
}

fn new_session(id: &str, user_id: &str, now: Timestamp, policy: &SessionPolicy) -> Session {
    Session {
        id: id.to_string(),
        user_id: user_id.to_string(),
        state: SessionState::Active,
        started_at: now,
        last_activity_at: now,
        idle_timeout_ms: millis(policy.idle_timeout),
        max_lifetime_ms: millis(policy.max_lifetime),
        warning_before_ms: millis(policy.warning_before),
        expires_at: expires_at(now, now, policy),
        warned_for: None,
        ended_at: None,
        end_reason: None,
    }
}

/// Records activity on a socket's session. Writes at most once per
/// `sessions.activity_coalesce` per socket; the scheduler judges due times
/// that much late, so coalescing never expires a session early.
/// Returns the expiry the session now has.
pub async fn touch(sessions: &Sessions, clock: &SessionClock) -> Timestamp {
    let now = Timestamp::now();
    let window = millis(sessions.config.sessions.activity_coalesce);
    let last = clock.last_written.load(Ordering::Relaxed);
    if now.as_millis() - last >= window
        && clock
            .last_written
            .compare_exchange(last, now.as_millis(), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        let written = async {
            let mut conn = sessions.store.conn().await?;
            sql::touch(&mut conn, &clock.session_id, now).await
        }
        .await;
        if let Err(e) = written {
            // Let the next event try again.
            clock.last_written.store(last, Ordering::Relaxed);
            tracing::warn!(session_id = %clock.session_id, error = %e, "could not record activity");
        }
    }
    clock.expires_after_activity(now)
}

/// `extend_session`: resets the idle clock now (not coalesced) and tells
/// every socket of the session.
pub async fn extend(
    sessions: &Sessions,
    caller: &Identity,
    session_id: &str,
) -> Result<Timestamp, Error> {
    if caller.session_id.as_deref() != Some(session_id) {
        return Err(Error::Forbidden(
            "you may only extend your own session".into(),
        ));
    }
    let now = Timestamp::now();
    let mut tx = sessions.store.begin().await?;
    let expires = match sql::touch(&mut tx, session_id, now).await? {
        Some(expires) => expires,
        None => {
            let session = sql::find(&mut tx, session_id)
                .await?
                .ok_or_else(|| Error::NotFound(format!("session {session_id} not found")))?;
            if session.user_id != caller.user_id {
                return Err(Error::Forbidden(
                    "you may only extend your own session".into(),
                ));
            }
            if session.state != SessionState::Active {
                return Err(Error::Expired(format!("session {session_id} has ended")));
            }
            // Activity at the same millisecond: already extended.
            session.expires_at
        }
    };
    audit::append(
        &mut tx,
        &AuditEvent::new(Action::SessionExtended, now)
            .by(caller)
            .user(caller.user_id.clone())
            .session(Some(session_id))
            .detail(json!({ "expiresAt": expires })),
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    sessions
        .hub
        .send(
            vec![session_room(session_id)],
            events::SESSION_EXTENDED,
            &events::SessionExtended {
                session_id,
                extended_at: now,
                expires_at: expires,
            },
        )
        .await;
    Ok(expires)
}

/// The body of `PUT /api/v1/sessions/{id}`, validated.
pub struct Registration {
    pub user_id: String,
    pub idle_timeout: Option<Duration>,
    pub max_lifetime: Option<Duration>,
}

/// Registers a session (or changes an active one's timing). Returns the
/// session and whether it was created.
pub async fn register(
    sessions: &Sessions,
    caller: &Identity,
    id: &str,
    registration: Registration,
) -> Result<(Session, bool), Error> {
    let config = &sessions.config.sessions;
    let mut policy = SessionPolicy::for_roles(config, &[]);
    if let Some(max) = registration.max_lifetime {
        policy.max_lifetime = max;
    }
    if let Some(idle) = registration.idle_timeout {
        policy.idle_timeout = idle;
        policy.warning_before = config.warning_before.min(idle / 2);
    }
    let now = Timestamp::now();
    let mut tx = sessions.store.begin().await?;
    let fresh = new_session(id, &registration.user_id, now, &policy);
    let created = sql::insert(
        &mut tx,
        &fresh,
        next_due_at(fresh.expires_at, None, policy.warning_before),
    )
    .await?;
    let session = if created {
        fresh
    } else {
        let existing = sql::find(&mut tx, id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("session {id} not found")))?;
        if existing.user_id != registration.user_id {
            return Err(Error::Conflict(format!(
                "session {id} belongs to another user"
            )));
        }
        if existing.state != SessionState::Active {
            return Err(Error::Conflict(format!("session {id} has ended")));
        }
        let mut updated = existing.clone();
        updated.idle_timeout_ms = millis(policy.idle_timeout);
        updated.max_lifetime_ms = millis(policy.max_lifetime);
        updated.warning_before_ms = millis(policy.warning_before);
        updated.expires_at = expires_at(existing.started_at, existing.last_activity_at, &policy);
        let due = next_due_at(
            updated.expires_at,
            existing.warned_for,
            policy.warning_before,
        );
        sql::update_policy(&mut tx, &updated, due).await?;
        updated
    };
    audit::append(
        &mut tx,
        &AuditEvent::new(Action::SessionRegistered, now)
            .by(caller)
            .user(session.user_id.clone())
            .session(Some(id))
            .detail(json!({
                "created": created,
                "idleTimeout": session.idle_timeout_ms,
                "maxLifetime": session.max_lifetime_ms,
                "expiresAt": session.expires_at,
            })),
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok((session, created))
}

pub async fn get(sessions: &Sessions, id: &str) -> Result<Session, Error> {
    let mut conn = sessions.store.conn().await?;
    sql::find(&mut conn, id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("session {id} not found")))
}

/// Active sessions, soonest expiry first (`GET /api/v1/sessions`).
pub async fn list_active(
    sessions: &Sessions,
    user_id: Option<&str>,
    limit: i64,
) -> Result<Vec<Session>, Error> {
    let mut conn = sessions.store.conn().await?;
    Ok(sql::list_active(&mut conn, user_id, limit).await?)
}

/// Ends a session now (`DELETE /api/v1/sessions/{id}`): its sockets get
/// `session_expired` with reason `terminated` and are disconnected.
pub async fn terminate(sessions: &Sessions, caller: &Identity, id: &str) -> Result<Session, Error> {
    let now = Timestamp::now();
    let mut tx = sessions.store.begin().await?;
    let ended = sql::end(&mut tx, id, "terminated", now).await?;
    let session = sql::find(&mut tx, id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("session {id} not found")))?;
    if ended {
        audit::append(
            &mut tx,
            &AuditEvent::new(Action::SessionTerminated, now)
                .by(caller)
                .user(session.user_id.clone())
                .session(Some(id)),
        )
        .await?;
    }
    tx.commit().await.map_err(StoreError::from)?;
    if ended {
        end_sockets(sessions, id, "terminated", now).await;
    }
    Ok(session)
}

async fn end_sockets(sessions: &Sessions, session_id: &str, reason: &str, now: Timestamp) {
    sessions
        .hub
        .send(
            vec![session_room(session_id)],
            events::SESSION_EXPIRED,
            &events::SessionExpired {
                session_id: Some(session_id),
                reason,
                timestamp: now,
            },
        )
        .await;
    sessions.hub.disconnect_session(session_id).await;
}

/// One scheduler tick: claim and announce due expiries, then due warnings.
/// Returns how many of each were handled.
pub async fn scan(sessions: &Sessions) -> Result<(usize, usize), Error> {
    let now = Timestamp::now();
    // Judge due times late by the coalescing window: activity not yet
    // written is never older than that.
    let due = Timestamp::from_millis(
        now.as_millis() - millis(sessions.config.sessions.activity_coalesce),
    );

    let mut tx = sessions.store.begin().await?;
    let expired = sql::claim_expired(&mut tx, due, now).await?;
    let warned = sql::claim_warnings(&mut tx, due).await?;
    let mut events = Vec::with_capacity(expired.len() + warned.len());
    for session in &expired {
        events.push(
            AuditEvent::new(Action::SessionExpired, now)
                .by_system()
                .user(session.user_id.clone())
                .session(Some(&session.id))
                .detail(json!({ "reason": session.reason, "expiresAt": session.expires_at })),
        );
    }
    for session in &warned {
        events.push(
            AuditEvent::new(Action::SessionWarned, now)
                .by_system()
                .user(session.user_id.clone())
                .session(Some(&session.id))
                .detail(json!({ "expiresAt": session.expires_at })),
        );
    }
    audit::append_all(&mut tx, events).await?;
    tx.commit().await.map_err(StoreError::from)?;

    for session in &expired {
        let reason = session.reason.as_deref().unwrap_or("idle");
        tracing::info!(session_id = %session.id, reason, "session expired");
        end_sockets(sessions, &session.id, reason, now).await;
    }
    for session in &warned {
        tracing::info!(session_id = %session.id, "session warned");
        sessions
            .hub
            .send(
                vec![session_room(&session.id)],
                events::SESSION_TIMEOUT_WARNING,
                &events::SessionTimeoutWarning {
                    session_id: &session.id,
                    time_remaining: session.expires_at.millis_since(now).max(0),
                    expires_at: session.expires_at,
                    timestamp: now,
                },
            )
            .await;
    }
    if !expired.is_empty() || !warned.is_empty() {
        sessions.hub.console_update("session", None, None).await;
    }
    Ok((expired.len(), warned.len()))
}
