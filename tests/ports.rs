//! The actors' ports (`Store`, `GovStore`) as every backend must keep them:
//! one suite, run against SQLite's store on a file and the server store on a
//! fresh PostgreSQL and a fresh MariaDB/MySQL database of its own (random name, dropped after). Concurrency is
//! real: the operations race on the store's own connections.
//!
//! - agents: insert, claim (epochs), fenced writes and deletes, duplicate
//!   live names, a deleted agent's name free again, hydration pages in
//!   byte order of ids;
//! - the plan's agent limit under concurrent creates;
//! - usage reports counted once under concurrent retries, and the
//!   organization's spend equal to the sum of distinct reports;
//! - approvals: concurrent settlements with exactly one winner, a vote that
//!   arrives after the settlement lost, duplicate call ids refused, grants
//!   and their revocation, kill switches, governance documents;
//! - tasks: open ones in id order, updates, a step re-sent stored once, a
//!   replay starting with copies of its parent's earlier steps;
//! - identity (`Tables`: organizations, users, sessions,
//!   keys, login throttling and the audit log): the plan's user limit under
//!   concurrent creates, one refresh token used by concurrent rotations
//!   (exactly one rotates, the family is revoked), every concurrent failed
//!   login counted, key revocation, role changes ending sessions, pages in
//!   byte order, audit filters, usage sums read back as integers;
//! - the HTTP layer's reads (history, events, approvals and grants pages,
//!   tasks and steps) over what the checks above wrote, and schedules;
//! - activity: idempotent flushes with consecutive ids never reused, tool
//!   calls, conversations and hourly counts added up across flushes, every
//!   page, filter and cursor, stream resume, retention per organization.
//!
//! Servers: `CADRE_TEST_POSTGRES_URL` (default
//! `postgres://cadre:cadre@127.0.0.1:5432/postgres`) and
//! `CADRE_TEST_MYSQL_URL` (default `mysql://cadre:cadre@127.0.0.1:3306/mysql`);
//! unreachable, a test skips unless `CADRE_REQUIRE_SERVICES=1`.

mod support;

use cadre::store::backend::Backend;
use cadre::store::server::{MySqlStore, PgStore};
use cadre::store::{
    ApprovalFilter, AuditFilter, Durability, KeyRecord, NewRefresh, NewUser, OrgRow, Rotation,
    Schedule, SqlStore, UserChange,
};
use cadre_actors::approval::{ApprovalRecord, ApprovalState, Vote};
use cadre_actors::audit::AuditEntry;
use cadre_actors::budget::Period;
use cadre_actors::domain::{AgentEvent, AgentId, AgentRecord, OrgId, Transition, Who};
use cadre_actors::governance::{Grant, HaltScope};
use cadre_actors::lifecycle::State;
use cadre_actors::ports::{
    AgentInsert, AgentWrite, Cas, Charge, GovStore, Store, StoreError, WriteOutcome,
};
use cadre_actors::task::{TaskLimits, TaskRecord, TaskState, TaskStep, TaskStore};
use sqlx::{Connection, Executor, MySqlConnection, PgConnection, SqliteConnection};
use std::sync::Arc;

/// A store under test and a way to read its tables directly.
struct Subject<S> {
    store: Arc<S>,
    backend: Backend,
    url: String,
}

impl<S> Subject<S> {
    /// One integer a query returns, read on a connection of its own.
    async fn scalar(&self, sql: &str) -> i64 {
        match self.backend {
            Backend::Postgres => {
                let mut c = PgConnection::connect(&self.url).await.expect("connect");
                sqlx::query_scalar::<_, i64>(sql)
                    .fetch_one(&mut c)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"))
            }
            Backend::Mysql => {
                let mut c = MySqlConnection::connect(&self.url).await.expect("connect");
                sqlx::query_scalar::<_, i64>(&format!("SELECT CAST(({sql}) AS SIGNED)"))
                    .fetch_one(&mut c)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"))
            }
            Backend::Sqlite => {
                let mut c = SqliteConnection::connect(&self.url).await.expect("connect");
                sqlx::query_scalar::<_, i64>(sql)
                    .fetch_one(&mut c)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"))
            }
        }
    }

    /// The text column a query returns, one value a row.
    async fn strings(&self, sql: &str) -> Vec<String> {
        use cadre::store::DecodeRow;
        fn first<R: DecodeRow>(rows: Vec<R>) -> Vec<String>
        where
            usize: sqlx::ColumnIndex<R>,
        {
            rows.iter().map(|r| r.cell(0usize).expect("text")).collect()
        }
        match self.backend {
            Backend::Postgres => {
                let mut c = PgConnection::connect(&self.url).await.expect("connect");
                first(sqlx::query(sql).fetch_all(&mut c).await.expect("query"))
            }
            Backend::Mysql => {
                let mut c = MySqlConnection::connect(&self.url).await.expect("connect");
                first(sqlx::query(sql).fetch_all(&mut c).await.expect("query"))
            }
            Backend::Sqlite => {
                let mut c = SqliteConnection::connect(&self.url).await.expect("connect");
                first(sqlx::query(sql).fetch_all(&mut c).await.expect("query"))
            }
        }
    }

    async fn execute(&self, sql: &str) {
        match self.backend {
            Backend::Postgres => {
                let mut c = PgConnection::connect(&self.url).await.expect("connect");
                c.execute(sql).await.expect("statement");
            }
            Backend::Mysql => {
                let mut c = MySqlConnection::connect(&self.url).await.expect("connect");
                c.execute(sql).await.expect("statement");
            }
            Backend::Sqlite => {
                let mut c = SqliteConnection::connect(&self.url).await.expect("connect");
                c.execute(sql).await.expect("statement");
            }
        }
    }
}

fn org() -> OrgId {
    OrgId("org-1".into())
}

fn audit(action: &str, target: &str) -> AuditEntry {
    AuditEntry::new(
        &org(),
        &Who::system(),
        action,
        target,
        serde_json::json!({ "why": "test" }),
        1,
    )
}

fn record(id: &str, name: &str) -> AgentRecord {
    record_in(&org(), id, name)
}

fn record_in(org: &OrgId, id: &str, name: &str) -> AgentRecord {
    support::agent_record(org, id, name)
}

async fn insert<S: Store>(
    store: &S,
    rec: &AgentRecord,
    max: Option<u64>,
) -> Result<(), StoreError> {
    let audit = audit("agent.create", &format!("agent:{}", rec.id));
    store
        .insert_agent(AgentInsert {
            record: rec,
            created: &support::created(),
            audit: &audit,
            max_agents: max,
            version: &support::first_version(rec),
        })
        .await
}

/// Charges a usage report of `tokens` and `cost` micro-dollars to `rec`
/// in the organization's period 2026-11.
async fn charge<S: Store>(
    store: &S,
    rec: &AgentRecord,
    report: &str,
    tokens: u64,
    cost: u64,
) -> Result<WriteOutcome, StoreError> {
    store
        .write_agent(AgentWrite {
            record: rec,
            transitions: &[],
            event: None,
            usage: Some(Charge {
                report_id: report,
                tokens,
                cost_micros: cost,
                org_period: Period::parse("2026-11").expect("period"),
            }),
            audit: None,
            versions: &[],
        })
        .await
}

fn plain_write(rec: &AgentRecord) -> AgentWrite<'_> {
    AgentWrite {
        record: rec,
        transitions: &[],
        event: None,
        usage: None,
        audit: None,
        versions: &[],
    }
}

async fn agents_claims_fencing_and_pages<S: Store>(s: &Subject<S>) {
    let store = &*s.store;
    let a = record("agent-a", "support");
    insert(store, &a, None).await.expect("insert");
    assert!(
        matches!(
            insert(store, &record("agent-b", "support"), None).await,
            Err(StoreError::Conflict(_))
        ),
        "two live agents of one organization share a name"
    );
    // A claim bumps the epoch; the old incarnation's writes are refused.
    let claimed = store
        .claim_agent(&org(), &a.id)
        .await
        .expect("claim")
        .expect("the agent");
    assert_eq!(claimed.epoch, 2);
    assert_eq!(claimed.spec, a.spec);
    let mut stale = a.clone();
    stale.state = State::Configuring;
    assert_eq!(
        store.write_agent(plain_write(&stale)).await,
        Err(StoreError::Fenced)
    );
    let mut next = claimed.clone();
    next.state = State::Ready;
    next.state_reason = Some("configured".into());
    next.usage.warned = true;
    next.spec.runtime =
        serde_json::from_value(serde_json::json!({ "llm": { "provider": "anthropic" } }))
            .expect("runtime settings");
    let moved = Transition {
        from: Some(State::Draft),
        to: State::Ready,
        reason: Some("configured".into()),
        by: "user:u".into(),
        at: 2,
    };
    let event = AgentEvent {
        kind: "budget_warning".into(),
        detail: serde_json::json!({ "share": 0.8 }),
        at: 2,
    };
    let change = audit("agent.update", "agent:agent-a");
    assert_eq!(
        store
            .write_agent(AgentWrite {
                record: &next,
                transitions: std::slice::from_ref(&moved),
                event: Some(&event),
                usage: None,
                audit: Some(&change),
                versions: &[],
            })
            .await,
        Ok(WriteOutcome::Written)
    );
    assert_eq!(
        s.scalar("SELECT COUNT(*) FROM agent_transitions WHERE agent_id = 'agent-a'")
            .await,
        2
    );
    assert_eq!(
        s.scalar("SELECT COUNT(*) FROM agent_events WHERE agent_id = 'agent-a'")
            .await,
        1
    );
    let page = store.org_page(&org(), None, 10).await.expect("page");
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].state, State::Ready);
    assert_eq!(page[0].state_reason.as_deref(), Some("configured"));
    assert!(page[0].usage.warned);
    assert_eq!(page[0].spec.runtime, next.spec.runtime);

    // Deleting is fenced too, and frees the name.
    assert_eq!(
        store
            .delete_agent(&a, 3, &audit("agent.delete", "agent:agent-a"))
            .await,
        Err(StoreError::Fenced)
    );
    store
        .delete_agent(&next, 3, &audit("agent.delete", "agent:agent-a"))
        .await
        .expect("delete");
    assert!(
        store
            .claim_agent(&org(), &a.id)
            .await
            .expect("claim")
            .is_none()
    );
    insert(store, &record("agent-c", "support"), None)
        .await
        .expect("a deleted agent's name is free again");
    assert_eq!(
        s.scalar("SELECT agent_count FROM orgs WHERE id = 'org-1'")
            .await,
        1
    );

    // Pages cover every live agent once, in the byte order of their ids
    // (upper case before lower, '-' before letters), whatever the locale.
    let ids: Vec<String> = (0..57)
        .map(|i| match i % 3 {
            0 => format!("Z-{i:03}"),
            1 => format!("a-{i:03}"),
            _ => format!("a{i:03}"),
        })
        .collect();
    for id in &ids {
        insert(store, &record(id, &format!("n-{id}")), None)
            .await
            .expect("insert");
    }
    store.claim_org(&org()).await.expect("claim org");
    let mut seen = Vec::new();
    let mut after: Option<AgentId> = None;
    loop {
        let page = store
            .org_page(&org(), after.as_ref(), 10)
            .await
            .expect("page");
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        assert!(
            page.iter().all(|r| r.epoch == 2),
            "claim_org bumped every epoch"
        );
        seen.extend(page.into_iter().map(|r| r.id.0));
    }
    let mut want: Vec<String> = ids.clone();
    want.push("agent-c".into());
    want.sort();
    assert_eq!(seen, want);
    assert_eq!(store.list_orgs().await.expect("orgs"), vec![org()]);
    assert_eq!(
        s.scalar("SELECT agent_count FROM orgs WHERE id = 'org-1'")
            .await,
        58,
        "the live-agent count is exact (a refused create took no slot)"
    );
    store.ping().await.expect("ping");
}

async fn the_agent_limit_holds_under_concurrent_creates<S: Store>(s: &Subject<S>) {
    s.execute("INSERT INTO orgs (id, name, created_at, slug) VALUES ('org-2', 'Two', 1, 'org-2')")
        .await;
    let two = OrgId("org-2".into());
    let tasks: Vec<_> = (0..24)
        .map(|i| {
            let store = s.store.clone();
            let rec = record_in(&two, &format!("l-{i:02}"), &format!("l{i}"));
            tokio::spawn(async move { insert(&*store, &rec, Some(5)).await })
        })
        .collect();
    let mut made = 0;
    let mut refused = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(()) => made += 1,
            Err(StoreError::LimitReached(_)) => refused += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!((made, refused), (5, 19));
    assert_eq!(
        s.scalar("SELECT COUNT(*) FROM agents WHERE org_id = 'org-2' AND deleted_at IS NULL")
            .await,
        5
    );
    assert_eq!(
        s.scalar("SELECT agent_count FROM orgs WHERE id = 'org-2'")
            .await,
        5
    );
}

async fn usage_reports_count_once_under_concurrency<S: Store>(s: &Subject<S>) {
    let a = record("agent-u", "spender");
    insert(&*s.store, &a, None).await.expect("insert");
    // The same report, retried ten times at once, and 15 distinct ones.
    let reports: Vec<String> = std::iter::repeat_n("r-same".to_string(), 10)
        .chain((0..15).map(|i| format!("r-{i}")))
        .collect();
    let tasks: Vec<_> = reports
        .into_iter()
        .map(|report| {
            let store = s.store.clone();
            let mut rec = a.clone();
            rec.usage.tokens = 100;
            tokio::spawn(async move { charge(&*store, &rec, &report, 100, 7).await })
        })
        .collect();
    let mut written = 0;
    let mut duplicates = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(WriteOutcome::Written) => written += 1,
            Ok(WriteOutcome::Duplicate) => duplicates += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!((written, duplicates), (16, 9));
    assert_eq!(
        s.scalar("SELECT tokens FROM org_usage WHERE org_id = 'org-1' AND period = '2026-11'")
            .await,
        1_600
    );
    assert_eq!(
        s.scalar("SELECT cost_micros FROM org_usage WHERE org_id = 'org-1'")
            .await,
        112
    );
    assert_eq!(
        s.scalar("SELECT COUNT(*) FROM usage_reports WHERE agent_id = 'agent-u'")
            .await,
        16
    );
    // A fenced charge counts nothing.
    let mut stale = a.clone();
    stale.epoch = 0;
    assert_eq!(
        charge(&*s.store, &stale, "r-fenced", 1, 1).await,
        Err(StoreError::Fenced)
    );
    assert_eq!(
        s.scalar("SELECT COUNT(*) FROM usage_reports WHERE report_id = 'r-fenced'")
            .await,
        0
    );
}

fn approval(i: usize) -> ApprovalRecord {
    ApprovalRecord {
        id: format!("ap-{i:03}"),
        org_id: org(),
        agent_id: AgentId("agent-x".into()),
        call_id: format!("call-{i}"),
        tool: "shell.exec".into(),
        args_hash: "h".into(),
        arguments: serde_json::json!({ "cmd": "rm -rf /tmp/x", "n": i }),
        trigger: "risk:critical".into(),
        policy: "default".into(),
        levels: Vec::new(),
        level: 0,
        state: ApprovalState::Pending,
        outcome: None,
        requested_by: "runtime:agent-x".into(),
        created_at: 1,
        expires_at: 1_000_000,
        decided_by: None,
        decided_at: None,
        comment: None,
        grant_id: None,
        votes: Vec::new(),
    }
}

fn vote(by: &str, approve: bool) -> Vote {
    Vote {
        by: by.into(),
        level: 0,
        approve,
        comment: Some(format!("{by} says so")),
        at: 3,
    }
}

async fn approvals_settle_exactly_once<S: GovStore>(s: &Subject<S>) {
    let store = &*s.store;
    let first = approval(1);
    store
        .insert_approval(&first, &audit("approval.request", "approval:ap-001"))
        .await
        .expect("insert");
    store
        .insert_approval(&approval(2), &audit("approval.request", "approval:ap-002"))
        .await
        .expect("insert");
    let mut again = approval(9);
    again.call_id = first.call_id.clone();
    assert!(
        matches!(
            store
                .insert_approval(&again, &audit("approval.request", "approval:ap-009"))
                .await,
            Err(StoreError::Conflict(_))
        ),
        "one request per (agent, call)"
    );
    let found = store
        .approval_by_call(&first.agent_id, &first.call_id)
        .await
        .expect("by call")
        .expect("found");
    assert_eq!(found.arguments, first.arguments);
    assert_eq!(found.state, ApprovalState::Pending);

    // A vote at the current level is kept and read back.
    assert_eq!(
        store
            .add_vote(
                &first,
                &vote("early", true),
                &audit("approval.vote", "approval:ap-001")
            )
            .await,
        Ok(Cas::Applied)
    );

    // Twelve deciders at once: one wins, the others lose and write nothing.
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let store = s.store.clone();
            tokio::spawn(async move {
                let by = format!("user-{i}");
                let mut decided = approval(1);
                decided.state = if i % 2 == 0 {
                    ApprovalState::Approved
                } else {
                    ApprovalState::Denied
                };
                decided.outcome = Some(i % 2 == 0);
                decided.decided_by = Some(by.clone());
                decided.decided_at = Some(3);
                decided.comment = Some(format!("{by} says so"));
                let grant = (i % 2 == 0).then(|| Grant {
                    id: format!("grant-{i}"),
                    org_id: org(),
                    agent_id: AgentId("agent-x".into()),
                    tool: "shell.exec".into(),
                    args_hash: "h".into(),
                    approval_id: "ap-001".into(),
                    granted_by: by.clone(),
                    created_at: 3,
                    expires_at: 5_000,
                });
                decided.grant_id = grant.as_ref().map(|g| g.id.clone());
                let v = vote(&by, i % 2 == 0);
                let outcome = store
                    .settle_approval(
                        &decided,
                        0,
                        Some(&v),
                        grant.as_ref(),
                        &audit("approval.decide", "approval:ap-001"),
                    )
                    .await;
                (by, outcome)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for t in tasks {
        let (by, outcome) = t.await.expect("task");
        match outcome {
            Ok(Cas::Applied) => winners.push(by),
            Ok(Cas::Lost) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one decision wins: {winners:?}");
    let settled = store
        .approval(&org(), "ap-001")
        .await
        .expect("read")
        .expect("found");
    assert_eq!(settled.decided_by.as_deref(), Some(winners[0].as_str()));
    assert_ne!(settled.state, ApprovalState::Pending);
    assert_eq!(
        settled
            .votes
            .iter()
            .map(|v| v.by.as_str())
            .collect::<Vec<_>>(),
        vec!["early", winners[0].as_str()],
        "the early vote and the winner's, no loser's"
    );
    assert_eq!(
        s.scalar("SELECT COUNT(*) FROM audit_log WHERE action = 'approval.decide'")
            .await,
        1
    );
    // A vote after the settlement is lost.
    assert_eq!(
        store
            .add_vote(
                &first,
                &vote("late", true),
                &audit("approval.vote", "approval:ap-001")
            )
            .await,
        Ok(Cas::Lost)
    );
    let pending = store.pending_approvals(&org()).await.expect("pending");
    assert_eq!(
        pending.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
        vec!["ap-002"]
    );

    // Grants: the winner's (if it approved) is live until revoked.
    let live = store.live_grants(4).await.expect("grants");
    let approved = settled.state == ApprovalState::Approved;
    assert_eq!(live.len(), usize::from(approved));
    assert!(store.live_grants(6_000).await.expect("grants").is_empty());
    if let Some(g) = live.first() {
        let revoked = store
            .revoke_grant(&org(), &g.id, "user:u", 5, &audit("grant.revoke", "grant"))
            .await
            .expect("revoke");
        assert_eq!(revoked.as_ref().map(|r| r.id.as_str()), Some(g.id.as_str()));
        assert!(store.live_grants(4).await.expect("grants").is_empty());
        assert!(
            store
                .revoke_grant(&org(), &g.id, "user:u", 6, &audit("grant.revoke", "grant"))
                .await
                .expect("revoke again")
                .is_none()
        );
    }
}

async fn halts_and_documents<S: GovStore>(s: &Subject<S>) {
    let store = &*s.store;
    let agent = HaltScope::Agent(org(), AgentId("agent-h".into()));
    store
        .set_halt(
            &HaltScope::Instance,
            Some("maintenance"),
            "user:u",
            1,
            &audit("halt", "instance"),
        )
        .await
        .expect("halt");
    store
        .set_halt(
            &agent,
            Some("runaway"),
            "user:u",
            2,
            &audit("halt", "agent"),
        )
        .await
        .expect("halt");
    store
        .set_halt(
            &agent,
            Some("still runaway"),
            "user:u",
            3,
            &audit("halt", "agent"),
        )
        .await
        .expect("halt again replaces");
    assert_eq!(
        store.halts().await.expect("halts"),
        vec![HaltScope::Instance, agent.clone()]
    );
    store
        .set_halt(
            &HaltScope::Instance,
            None,
            "user:u",
            4,
            &audit("resume", "instance"),
        )
        .await
        .expect("resume");
    assert_eq!(store.halts().await.expect("halts"), vec![agent]);

    let body = r#"{"risk":"critical","skill":"ops"}"#;
    assert!(
        store
            .put_doc(
                &org(),
                "tool",
                "shell.exec",
                Some(body),
                &audit("tool.put", "tool")
            )
            .await
            .expect("put")
    );
    store
        .put_doc(
            &org(),
            "profile",
            "ops",
            Some(r#"{"max_risk":"low"}"#),
            &audit("profile.put", "p"),
        )
        .await
        .expect("put");
    let docs = store.docs(&org()).await.expect("docs");
    assert_eq!(
        docs.iter()
            .map(|d| (d.kind.as_str(), d.name.as_str()))
            .collect::<Vec<_>>(),
        vec![("profile", "ops"), ("tool", "shell.exec")]
    );
    let stored: serde_json::Value = serde_json::from_str(&docs[1].body).expect("json body");
    assert_eq!(
        stored,
        serde_json::json!({ "risk": "critical", "skill": "ops" })
    );
    assert!(
        store
            .put_doc(
                &org(),
                "tool",
                "shell.exec",
                None,
                &audit("tool.delete", "tool")
            )
            .await
            .expect("delete")
    );
    assert!(
        !store
            .put_doc(
                &org(),
                "tool",
                "shell.exec",
                None,
                &audit("tool.delete", "tool")
            )
            .await
            .expect("delete again")
    );
    assert_eq!(store.docs(&org()).await.expect("docs").len(), 1);
}

fn task(id: &str) -> TaskRecord {
    let mut t = TaskRecord::queued(
        "org-1",
        "agent-t",
        format!("do {id}"),
        serde_json::json!({ "ticket": 7, "text": "ü \"quoted\"" }),
        TaskLimits {
            max_steps: 9,
            max_seconds: 60,
            max_tokens: 1000,
        },
        "user:u".into(),
    );
    t.id = id.into();
    t.created_at = 5;
    t
}

fn step(task: &str, seq: u32, text: &str) -> TaskStep {
    TaskStep {
        task_id: task.into(),
        seq,
        kind: "model".into(),
        body: serde_json::json!({ "text": text }),
        tokens: 12,
        latency_ms: 30,
        at: 6,
    }
}

async fn tasks_and_their_steps<S: TaskStore>(s: &Subject<S>) {
    let store = &*s.store;
    for id in ["task-1", "task-2", "task-3"] {
        store
            .insert_task(&task(id), &audit("task.create", id))
            .await
            .expect("insert task");
    }
    let mut running = task("task-1");
    running.state = TaskState::Running;
    running.started_at = Some(7);
    running.runner_pid = Some(4242);
    store.update_task(&running, None).await.expect("update");
    let mut done = task("task-3");
    done.state = TaskState::Succeeded;
    done.result = Some("done".into());
    done.finished_at = Some(8);
    store
        .update_task(&done, Some(&audit("task.finish", "task-3")))
        .await
        .expect("update");
    let open = store.open_tasks("org-1", "agent-t").await.expect("open");
    assert_eq!(
        open.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        vec!["task-1", "task-2"]
    );
    assert_eq!(open[0].state, TaskState::Running);
    assert_eq!(open[0].runner_pid, Some(4242));
    assert_eq!(open[1].input, task("task-2").input);
    assert_eq!(open[1].limits.max_steps, 9);
    assert!(
        store
            .open_tasks("org-1", "nobody")
            .await
            .expect("open")
            .is_empty()
    );

    // A step re-sent after a reconnect is stored once, as first sent.
    store
        .add_step(&step("task-1", 1, "first"))
        .await
        .expect("step");
    store
        .add_step(&step("task-1", 2, "second"))
        .await
        .expect("step");
    store
        .add_step(&step("task-1", 1, "resent"))
        .await
        .expect("step again");
    assert_eq!(
        s.scalar("SELECT COUNT(*) FROM task_steps WHERE task_id = 'task-1'")
            .await,
        2
    );
    assert_eq!(
        s.scalar("SELECT tokens FROM task_steps WHERE task_id = 'task-1' AND seq = 1")
            .await,
        12
    );
    // A replay from step 2 starts with a copy of step 1.
    let mut replay = task("task-r");
    replay.parent_id = Some("task-1".into());
    replay.from_step = Some(2);
    store
        .insert_task(&replay, &audit("task.replay", "task-r"))
        .await
        .expect("replay");
    assert_eq!(
        s.scalar("SELECT COUNT(*) FROM task_steps WHERE task_id = 'task-r' AND seq = 1")
            .await,
        1
    );
    assert_eq!(
        s.scalar("SELECT COUNT(*) FROM task_steps WHERE task_id = 'task-r'")
            .await,
        1
    );
    let open = store.open_tasks("org-1", "agent-t").await.expect("open");
    let r = open.iter().find(|t| t.id == "task-r").expect("replay open");
    assert_eq!(
        (r.parent_id.as_deref(), r.from_step),
        (Some("task-1"), Some(2))
    );
}

/// Every check, in order, on one store (each check uses its own agents and
/// requests, so they share the database).
async fn conformance<S: Store + GovStore + TaskStore>(s: &Subject<S>) {
    s.execute("INSERT INTO orgs (id, name, created_at, slug) VALUES ('org-1', 'Org', 1, 'org-1')")
        .await;
    agents_claims_fencing_and_pages(s).await;
    the_agent_limit_holds_under_concurrent_creates(s).await;
    usage_reports_count_once_under_concurrency(s).await;
    approvals_settle_exactly_once(s).await;
    halts_and_documents(s).await;
    tasks_and_their_steps(s).await;
    // Every change above wrote its audit entry in its transaction.
    assert!(s.scalar("SELECT COUNT(*) FROM audit_log").await > 40);
}

/// The HTTP layer's reads and the schedules on one backend's `Tables`,
/// over what [`conformance`] wrote through the ports: each answer is
/// compared with the tables themselves.
macro_rules! reads_suite {
    ($s:expr) => {{
        let s = $s;
        let t = s.store.tables();
        let t = &t;
        assert_eq!(t.org_count().await.expect("orgs"), s.scalar("SELECT COUNT(*) FROM orgs").await);

        // Agents: live counts by state, ids by name, history and events.
        let live = s.scalar("SELECT COUNT(*) FROM agents WHERE deleted_at IS NULL AND org_id = 'org-1'").await;
        let counts = t.agent_state_counts().await.expect("counts");
        assert_eq!(counts.iter().filter(|c| c.0 == "org-1").map(|c| c.2).sum::<i64>(), live);
        let ids = s.strings("SELECT id FROM agents WHERE deleted_at IS NULL AND org_id = 'org-1' ORDER BY id").await;
        let names = s.strings("SELECT name FROM agents WHERE deleted_at IS NULL AND org_id = 'org-1' ORDER BY id").await;
        assert_eq!(t.agent_id_by_name("org-1", &names[0]).await.expect("by name"), Some(ids[0].clone()));
        assert_eq!(t.agent_id_by_name("org-1", &ids[0]).await.expect("by id"), Some(ids[0].clone()));
        assert_eq!(t.agent_id_by_name("org-x", &names[0]).await.expect("by name"), None);
        assert!(t.agent_exists("org-1", &ids[0]).await.expect("exists"));
        assert!(!t.agent_exists("org-x", &ids[0]).await.expect("exists"));
        let with_history = s.strings("SELECT agent_id FROM agent_transitions ORDER BY id").await;
        let a = &with_history[0];
        let n = s.scalar(&format!("SELECT COUNT(*) FROM agent_transitions WHERE agent_id = '{a}'")).await;
        let h = t.history("org-1", a, 0, 1000).await.expect("history");
        assert_eq!(h.len() as i64, n);
        assert!(h.windows(2).all(|w| w[0].id < w[1].id));
        let rest = t.history("org-1", a, h[0].id, 1000).await.expect("history");
        assert_eq!(rest.len(), h.len() - 1);
        assert!(t.history_between("org-1", a, 0, (0, 1), 1000).await.expect("between").is_empty());
        let with_events = s.strings("SELECT agent_id FROM agent_events ORDER BY id").await;
        let a = &with_events[0];
        let n = s.scalar(&format!("SELECT COUNT(*) FROM agent_events WHERE agent_id = '{a}'")).await;
        let ev = t.events("org-1", a, 0, 1000).await.expect("events");
        assert_eq!(ev.len() as i64, n);
        assert!(ev.iter().all(|e| !e.detail.is_null()), "{ev:?}");

        // Approvals newest first in byte order, filters, pages, votes.
        let all = t.approvals_page("org-1", &ApprovalFilter::default(), 1000).await.expect("approvals");
        assert_eq!(all.len() as i64, s.scalar("SELECT COUNT(*) FROM approvals WHERE org_id = 'org-1'").await);
        assert!(all.windows(2).all(|w| w[0].id.as_bytes() > w[1].id.as_bytes()));
        assert!(all.iter().map(|a| a.votes.len()).sum::<usize>() > 0);
        let approved = t
            .approvals_page("org-1", &ApprovalFilter { state: Some("approved".into()), ..Default::default() }, 1000)
            .await
            .expect("approved");
        assert_eq!(approved.len() as i64, s.scalar("SELECT COUNT(*) FROM approvals WHERE org_id = 'org-1' AND state = 'approved'").await);
        assert!(approved.iter().all(|a| a.state == ApprovalState::Approved));
        let first = t.approvals_page("org-1", &ApprovalFilter::default(), 2).await.expect("page");
        let next = t
            .approvals_page("org-1", &ApprovalFilter { before: Some(first[1].id.clone()), ..Default::default() }, 2)
            .await
            .expect("page");
        assert_eq!(first.iter().chain(&next).map(|a| a.id.clone()).collect::<Vec<_>>(), all.iter().take(4).map(|a| a.id.clone()).collect::<Vec<_>>());
        let grants = t.grants_page("org-1", None, 1000).await.expect("grants");
        assert_eq!(grants.len() as i64, s.scalar("SELECT COUNT(*) FROM grants WHERE org_id = 'org-1'").await);
        assert_eq!(
            grants.iter().filter(|g| g.1.is_some()).count() as i64,
            s.scalar("SELECT COUNT(*) FROM grants WHERE org_id = 'org-1' AND revoked_at IS NOT NULL").await
        );
        assert_eq!(t.halt_rows().await.expect("halts").len() as i64, s.scalar("SELECT COUNT(*) FROM halts").await);

        // Tasks and their steps.
        let one = t.task("org-1", "task-1").await.expect("task").expect("there");
        assert_eq!((one.state, one.runner_pid), (TaskState::Running, Some(4242)));
        assert!(t.task("org-x", "task-1").await.expect("task").is_none());
        let tasks = t.tasks_page("org-1", "agent-t", None, None, 100).await.expect("tasks");
        assert_eq!(tasks.len() as i64, s.scalar("SELECT COUNT(*) FROM tasks WHERE agent_id = 'agent-t'").await);
        assert!(tasks.windows(2).all(|w| w[0].id.as_bytes() > w[1].id.as_bytes()));
        let running = t.tasks_page("org-1", "agent-t", Some(TaskState::Running), None, 100).await.expect("tasks");
        assert_eq!(running.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), vec!["task-1"]);
        let older = t.tasks_page("org-1", "agent-t", None, Some(&tasks[0].id), 100).await.expect("tasks");
        assert_eq!(older.len(), tasks.len() - 1);
        let steps = t.task_steps("task-1", 0, 100).await.expect("steps");
        assert_eq!(steps.iter().map(|s| (s.seq, s.body["text"].clone())).collect::<Vec<_>>(), vec![(1, "first".into()), (2, "second".into())]);
        assert_eq!(t.task_steps("task-1", 1, 100).await.expect("steps").len(), 1);

        // Schedules: saved, replaced, read, only enabled ones started, deleted once.
        let mut sch = Schedule {
            id: "sch-1".into(),
            org_id: "org-1".into(),
            agent_id: "agent-t".into(),
            cron: "0 9 * * *".into(),
            timezone: "Europe/Paris".into(),
            instruction: "report".into(),
            input: serde_json::json!({ "quote": "ü \"x\"" }),
            limits: TaskLimits { max_steps: 3, max_seconds: 30, max_tokens: 99 },
            enabled: true,
            next_run_at: Some(10),
            last_run_at: None,
            last_task_id: None,
            last_error: None,
            created_by: "user:u".into(),
            created_at: 1,
            updated_at: 1,
        };
        t.save_schedule(&sch, Some(&audit("schedule.create", "sch-1"))).await.expect("save");
        let mut off = sch.clone();
        off.id = "sch-0".into();
        off.enabled = false;
        off.next_run_at = None;
        t.save_schedule(&off, None).await.expect("save");
        sch.last_run_at = Some(11);
        sch.last_task_id = Some("task-9".into());
        sch.updated_at = 2;
        t.save_schedule(&sch, None).await.expect("save again");
        assert_eq!(t.schedule("org-1", "sch-1").await.expect("schedule"), Some(sch.clone()));
        assert_eq!(t.agent_schedules("org-1", "agent-t").await.expect("list"), vec![off.clone(), sch.clone()]);
        assert_eq!(t.enabled_schedules().await.expect("enabled"), vec![sch.clone()]);
        assert!(t.delete_schedule("org-1", "sch-1", &audit("schedule.delete", "sch-1")).await.expect("delete"));
        assert!(!t.delete_schedule("org-1", "sch-1", &audit("schedule.delete", "sch-1")).await.expect("delete"));
        assert_eq!(s.scalar("SELECT COUNT(*) FROM audit_log WHERE action LIKE 'schedule.%'").await, 2);
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keeps_the_ports() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("p.db").display());
    let store = SqlStore::open(&url, Durability::Normal, 4)
        .await
        .expect("open");
    store.migrate().await.expect("migrate");
    let s = Subject {
        store: Arc::new(store),
        backend: Backend::Sqlite,
        url,
    };
    conformance(&s).await;
    reads_suite!(s);
}

/// Runs `body` on a store `connect` opens (and migrates) on a fresh database
/// of `backend`'s server, or skips when the server is not there.
async fn on_server<S, C, CF, B, BF>(backend: Backend, connect: C, body: B)
where
    C: FnOnce(String) -> CF,
    CF: std::future::Future<Output = S>,
    B: FnOnce(Subject<S>) -> BF,
    BF: std::future::Future<Output = ()>,
{
    let (var, default) = match backend {
        Backend::Postgres => ("CADRE_TEST_POSTGRES_URL", support::POSTGRES_URL),
        _ => ("CADRE_TEST_MYSQL_URL", support::MYSQL_URL),
    };
    let Some(admin) = support::server(var, default, backend).await else {
        return;
    };
    support::on_fresh_database(backend, &admin, |url| async move {
        let store = connect(url.clone()).await;
        body(Subject {
            store: Arc::new(store),
            backend,
            url,
        })
        .await;
    })
    .await;
}

async fn postgres(url: String) -> PgStore {
    let store = PgStore::connect(&url, 8).await.expect("connect");
    store.migrate().await.expect("migrate");
    store
}

async fn mysql(url: String) -> MySqlStore {
    let store = MySqlStore::connect(&url, 8).await.expect("connect");
    store.migrate().await.expect("migrate");
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keeps_the_ports() {
    on_server(Backend::Postgres, postgres, |s| async move {
        conformance(&s).await;
        reads_suite!(s);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_keeps_the_ports() {
    on_server(Backend::Mysql, mysql, |s| async move {
        conformance(&s).await;
        reads_suite!(s);
    })
    .await;
}

/// The identity checks on one backend's `Identity` (a macro, not a generic
/// function: the store's sqlx bounds are the crate's own).
macro_rules! identity_suite {
    ($s:expr) => {{
        let s = $s;
        let id = s.store.tables();
        let id = &id;
        let now = 1_000_000i64;
        let who = |action: &str, target: &str| {
            AuditEntry::new(
                &OrgId("org-i".into()),
                &Who::user("u-owner"),
                action,
                target,
                serde_json::json!({ "test": true }),
                now,
            )
        };
        let org_row = OrgRow {
            id: "org-i".into(),
            name: "Identity".into(),
            slug: "identity".into(),
            plan: "team".into(),
            limits: r#"{"max_users":5}"#.into(),
            suspended_at: None,
            created_at: now,
            activity_retention_days: None,
            timezone: "Europe/Paris".into(),
            budget_period: "monthly".into(),
            instructions: None,
            delegation: "chart".into(),
        };
        let user = |uid: &'static str, email: &'static str, role: &'static str| NewUser {
            id: uid,
            org_id: "org-i",
            email,
            name: "N",
            role,
            password_hash: "$argon2id$fake",
            instance_admin: false,
            now,
        };
        id.create_org(&org_row, &user("u-owner", "Owner@Example.com", "owner"), &who("org.create", "org:org-i"))
            .await
            .expect("create org");
        // The slug is unique.
        let mut twin = org_row.clone();
        twin.id = "org-twin".into();
        assert!(matches!(
            id.create_org(&twin, &user("u-twin", "twin@example.com", "owner"), &who("org.create", "org:twin"))
                .await,
            Err(StoreError::Conflict(_))
        ));
        let got = id.org("org-i").await.expect("org").expect("there");
        assert_eq!((got.plan.as_str(), got.timezone.as_str()), ("team", "Europe/Paris"));
        assert_eq!(serde_json::from_str::<serde_json::Value>(&got.limits).expect("json")["max_users"], 5);
        assert!(id.all_orgs().await.expect("orgs").iter().any(|o| o.id == "org-i"));
        assert_eq!(
            id.user_record_by_email("owner@EXAMPLE.com").await.expect("by email").map(|u| u.id),
            Some("u-owner".into())
        );

        // 16 concurrent creates against a limit of 5 users (the owner is one).
        let ids: Vec<String> = (0..16).map(|i| format!("u-{i:02}")).collect();
        let emails: Vec<String> = (0..16).map(|i| format!("u{i}@example.com")).collect();
        let results = futures_util::future::join_all((0..16).map(|i| {
            let u = NewUser {
                id: &ids[i],
                org_id: "org-i",
                email: &emails[i],
                name: "N",
                role: "member",
                password_hash: "$argon2id$fake",
                instance_admin: false,
                now,
            };
            let a = who("user.create", &ids[i]);
            async move { id.create_user(&u, Some(5), &a).await }
        }))
        .await;
        let made = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(made, 4, "{results:?}");
        let won: Vec<usize> = (0..16).filter(|&i| results[i].is_ok()).collect();
        let (m0, m1) = (ids[won[0]].as_str(), ids[won[1]].as_str());
        assert!(results.iter().all(|r| matches!(r, Ok(()) | Err(StoreError::LimitReached(_)))));
        assert_eq!(s.scalar("SELECT COUNT(*) FROM users WHERE org_id = 'org-i'").await, 5);
        // A duplicate email is a conflict, without a limit too.
        assert!(matches!(
            id.create_user(&NewUser { email: &emails[won[0]], ..user("u-dup", "", "viewer") }, None, &who("user.create", "u-dup")).await,
            Err(StoreError::Conflict(_))
        ));
        // Pages in byte order of ids ('Z' < 'a' < 'u').
        for (uid, email) in [("Zed", "zed@example.com"), ("alpha", "alpha@example.com")] {
            id.create_user(&user(uid, email, "viewer"), None, &who("user.create", uid))
                .await
                .expect("create");
        }
        let first = id.users_page("org-i", "", 3).await.expect("page");
        assert_eq!(first.len(), 3);
        assert_eq!(first[0].id, "Zed");
        assert_eq!(first[1].id, "alpha");
        let rest = id.users_page("org-i", &first[2].id, 100).await.expect("page");
        assert_eq!(first.len() + rest.len(), 7);
        assert!(rest.iter().all(|u| u.id > first[2].id));

        // One refresh token, rotated by 8 callers at once: one rotation,
        // the rest see a reuse, and the family is revoked.
        let t = NewRefresh {
            hash: "h-0",
            family: "fam-1",
            user: "u-owner",
            org: "org-i",
            now_ms: now,
            expires_ms: now + 60_000,
        };
        id.insert_refresh(&t, Some(&who("user.login", "u-owner"))).await.expect("refresh");
        let news: Vec<String> = (0..8).map(|i| format!("h-new-{i}")).collect();
        let rotations = futures_util::future::join_all(
            news.iter().map(|n| id.rotate_refresh("h-0", n, now + 1, now + 60_000)),
        )
        .await;
        let rotated = rotations.iter().filter(|r| matches!(r, Ok(Rotation::Rotated { .. }))).count();
        let reused = rotations.iter().filter(|r| matches!(r, Ok(Rotation::Reused { .. }))).count();
        assert_eq!((rotated, reused), (1, 7), "{rotations:?}");
        assert!(id.revoked_families(now - 1).await.expect("revoked").contains(&"fam-1".to_string()));
        assert_eq!(id.family_of("h-0").await.expect("family"), Some("fam-1".into()));
        assert_eq!(id.rotate_refresh("h-missing", "x", now, now).await.expect("rotate"), Rotation::Invalid);
        // Logout revokes the family of a fresh login and audits it.
        let t2 = NewRefresh { hash: "h-2", family: "fam-2", ..t };
        id.insert_refresh(&t2, None).await.expect("refresh");
        assert_eq!(
            id.revoke_refresh_family("h-2", now + 2, |u, _| who("user.logout", u)).await.expect("logout"),
            Some(("u-owner".to_string(), "org-i".to_string()))
        );
        assert!(matches!(
            id.rotate_refresh("h-2", "h-3", now + 3, now + 60_000).await,
            Ok(Rotation::Reused { .. })
        ));

        // A role change ends the user's sessions.
        id.insert_refresh(&NewRefresh { hash: "h-u0", family: "fam-u0", user: m0, ..t }, None)
            .await
            .expect("refresh");
        let change = UserChange { role: Some("admin".into()), ..Default::default() };
        let changed = id
            .update_user("org-i", m0, &change, now + 5, &who("user.update", m0))
            .await
            .expect("update")
            .expect("there");
        assert_eq!((changed.role.as_str(), changed.sessions_after), ("admin", now + 5));
        assert!(!changed.instance_admin);
        assert!(id.revoked_families(now).await.expect("revoked").contains(&"fam-u0".to_string()));
        assert!(id.update_user("other-org", m0, &change, now, &who("user.update", m0)).await.expect("update").is_none());

        // Ten failed logins at once from one address with a threshold of 5:
        // that address is locked twice; the email-wide counter (threshold
        // 100) counted all ten and locks nobody.
        let limits = cadre::store::LoginLimits { threshold: 5, email_threshold: 100, base_ms: 1_000, max_ms: 60_000 };
        let fails = futures_util::future::join_all(
            (0..10).map(|_| id.login_failed("victim@example.com", "10.0.0.9", now, &limits)),
        )
        .await;
        let locks = fails.iter().filter(|r| matches!(r, Ok(Some(_)))).count();
        // The fifth locks the address; each later one finds it locked.
        assert_eq!(locks, 6, "{fails:?}");
        assert_eq!(s.scalar("SELECT lockouts FROM login_locks WHERE email = 'victim@example.com' AND client = '10.0.0.9'").await, 2);
        assert_eq!(s.scalar("SELECT failures FROM login_locks WHERE email = 'victim@example.com' AND client = ''").await, 10);
        assert!(id.login_lock("victim@example.com", "10.0.0.9", now).await.expect("lock").is_some());
        assert_eq!(id.login_lock("victim@example.com", "10.0.0.8", now).await.expect("lock"), None);
        id.login_succeeded("victim@example.com", "10.0.0.9", now, now + 60_000).await.expect("success");
        assert_eq!(id.login_lock("victim@example.com", "10.0.0.9", now).await.expect("lock"), None);

        // Keys: scopes kept, revocation idempotent, gone with their creator.
        let key = KeyRecord {
            id: "k-1".into(),
            org_id: "org-i".into(),
            name: "ci".into(),
            secret_hash: "abc".into(),
            scopes: vec!["agents:read".into()],
            created_by: m1.into(),
            created_at: now,
            expires_at: None,
            last_used_at: None,
            revoked_at: None,
        };
        id.create_key(&key, &who("key.create", "k-1")).await.expect("key");
        id.touch_key("k-1", now + 9).await.expect("touch");
        let keys = id.keys_page("org-i", "", 10).await.expect("keys");
        assert_eq!(keys.len(), 1);
        assert_eq!((keys[0].scopes.clone(), keys[0].last_used_at), (vec!["agents:read".to_string()], Some(now + 9)));
        let r1 = id.revoke_key("org-i", "k-1", now + 10, &who("key.revoke", "k-1")).await.expect("revoke").expect("there");
        let r2 = id.revoke_key("org-i", "k-1", now + 20, &who("key.revoke", "k-1")).await.expect("revoke").expect("there");
        assert_eq!((r1.revoked_at, r2.revoked_at), (Some(now + 10), Some(now + 10)));
        assert!(id.revoke_key("org-i", "k-none", now, &who("key.revoke", "k-none")).await.expect("revoke").is_none());
        id.create_key(&KeyRecord { id: "k-2".into(), secret_hash: "def".into(), ..key.clone() }, &who("key.create", "k-2"))
            .await
            .expect("key");
        assert!(id.delete_user("org-i", m1, now + 30, &who("user.delete", m1)).await.expect("delete"));
        assert!(!id.delete_user("org-i", m1, now + 30, &who("user.delete", m1)).await.expect("delete"));
        let all = id.all_keys().await.expect("keys");
        assert!(all.iter().all(|k| k.revoked_at.is_some()), "{all:?}");

        // Organization changes; usage sums come back as integers.
        assert!(id
            .update_org("org-i", Some("enterprise"), Some(r#"{"max_agents":9}"#), Some(Some(30)), cadre::store::OrgSettings { budget_period: Some("weekly"), ..Default::default() }, &who("org.update", "org:org-i"))
            .await
            .expect("update org"));
        assert!(!id.update_org("nope", Some("x"), None, None, cadre::store::OrgSettings::default(), &who("org.update", "org:nope")).await.expect("update org"));
        let got = id.org("org-i").await.expect("org").expect("there");
        assert_eq!((got.plan.as_str(), got.activity_retention_days, got.budget_period.as_str(), got.timezone.as_str()), ("enterprise", Some(30), "weekly", "Europe/Paris"));
        assert!(id.set_org_suspended("org-i", Some(now), &who("org.suspend", "org:org-i")).await.expect("suspend"));
        assert_eq!(id.org("org-i").await.expect("org").expect("there").suspended_at, Some(now));
        s.execute("INSERT INTO org_usage (org_id, period, tokens, cost_micros) VALUES ('org-i', '2026-12', 5000000000, 7), ('org-i', '2026-11', 1, 2)").await;
        let usage = id.org_usage("org-i", "2026-12").await.expect("usage");
        assert_eq!((usage.users, usage.tokens, usage.cost_micros), (6, 5_000_000_000, 7));
        let spend = id.org_spend().await.expect("spend");
        assert!(spend.contains(&("org-i".to_string(), "2026-12".to_string(), 5_000_000_000, 7)), "{spend:?}");

        // The audit log: filters, a prefix, newest first, the bridge's order.
        let page = id.audit_page("org-i", &AuditFilter { action: Some("user.".into()), ..Default::default() }, 100).await.expect("audit");
        assert!(page.len() >= 8 && page.iter().all(|a| a.action.starts_with("user.")), "{page:?}");
        assert!(page.windows(2).all(|w| w[0].id > w[1].id));
        assert_eq!(page[0].summary["test"], true);
        let one = id.audit_page("org-i", &AuditFilter { target: Some("k-1".into()), action: Some("key.revoke".into()), ..Default::default() }, 100).await.expect("audit");
        assert_eq!(one.len(), 2);
        let older = id.audit_page("org-i", &AuditFilter { before: Some(page[0].id), action: Some("user.".into()), ..Default::default() }, 100).await.expect("audit");
        assert_eq!(older.len(), page.len() - 1);
        let last = id.last_audit_id().await.expect("last");
        let since = id.audit_since(last - 3, 10).await.expect("since");
        assert_eq!(since.iter().map(|e| e.0).collect::<Vec<_>>(), vec![last - 2, last - 1, last]);
        id.append_audit(&who("user.login", "u-owner")).await.expect("append");
        assert_eq!(id.last_audit_id().await.expect("last"), last + 1);
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keeps_identity() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("i.db").display());
    let store = SqlStore::open(&url, Durability::Normal, 4)
        .await
        .expect("open");
    store.migrate().await.expect("migrate");
    identity_suite!(Subject {
        store: Arc::new(store),
        backend: Backend::Sqlite,
        url,
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keeps_identity() {
    on_server(Backend::Postgres, postgres, |s| async move {
        identity_suite!(s)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_keeps_identity() {
    on_server(Backend::Mysql, mysql, |s| async move { identity_suite!(s) }).await;
}

/// The activity tables on one backend's `Tables`: flushes (idempotent by
/// flush id, consecutive ids never reused), their typed records (tool
/// calls, messages, conversations added up across flushes, hourly counts),
/// every page and filter the API offers, stream resume, and retention (per
/// organization, in batches, sparing the audit log and hours not yet past).
macro_rules! activity_suite {
    ($s:expr) => {{
        use cadre::store::{
            ActivityFilter, MessageRecord, NewActivity, Record, ToolCallFilter, ToolCallRecord,
        };
        use serde_json::json;
        const DAY: i64 = 86_400_000;
        const HOUR: i64 = 3_600_000;
        let s = $s;
        let t = s.store.tables();
        let t = &t;
        // An organization that keeps its activity 400 days; "org-a" has none
        // of its own (the default, 90 days, applies).
        let keep = OrgRow {
            id: "org-keep".into(),
            name: "Keeps".into(),
            slug: "keeps".into(),
            plan: "team".into(),
            limits: "{}".into(),
            suspended_at: None,
            created_at: 1,
            activity_retention_days: Some(400),
            timezone: "UTC".into(),
            budget_period: "monthly".into(),
            instructions: None,
            delegation: "chart".into(),
        };
        let owner = NewUser {
            id: "u-keep",
            org_id: "org-keep",
            email: "keep@example.com",
            name: "K",
            role: "owner",
            password_hash: "$argon2id$fake",
            instance_admin: false,
            now: 1,
        };
        t.create_org(&keep, &owner, &audit("org.create", "org:org-keep")).await.expect("org");
        assert!(t.update_org("org-keep", None, None, Some(Some(400)), cadre::store::OrgSettings::default(), &audit("org.update", "org:org-keep")).await.expect("retention"));
        let audits = s.scalar("SELECT COUNT(*) FROM audit_log").await;
        let ev = |org: &str, agent: Option<&str>, kind: &str, payload: serde_json::Value, at: i64, record: Option<Record>| NewActivity {
            org_id: org.into(),
            agent_id: agent.map(Into::into),
            kind: kind.into(),
            payload: payload.to_string(),
            at,
            record,
        };
        let call = |tool: &str, status: &str, tokens, cost_micros| {
            Some(Record::ToolCall(ToolCallRecord { tool_id: tool.into(), status: status.into(), tokens, cost_micros }))
        };
        let said = |conv: &str, title: Option<&str>, tokens| {
            Some(Record::Message(MessageRecord { conversation_id: conv.into(), title: title.map(Into::into), tokens }))
        };
        let said_payload = |text: &str, tokens: i64| json!({ "role": "user", "content": text, "tokens": tokens, "conversation_id": "conv" });
        let first_flush = [
            ev("org-a", Some("ag-1"), "tool_call", json!({ "call_id": "c1", "arguments": { "q": "x" }, "result_summary": "found", "duration_ms": 12, "tokens": 2, "cost_usd": 0.000003 }), 2 * HOUR + 5, call("search", "ok", 2, 3)),
            ev("org-a", Some("ag-1"), "tool_call", json!({ "call_id": "c2", "arguments": {}, "duration_ms": 40, "tokens": 4 }), 2 * HOUR + 6, call("fetch", "error", 4, 5)),
            ev("org-a", Some("ag-1"), "message", said_payload("hello", 1), 3 * HOUR, said("conv", Some("Greeting"), 1)),
            ev("org-a", Some("ag-1"), "message", said_payload("again", 2), 3 * HOUR + 1, said("conv", None, 2)),
            ev("org-a", None, "org.note", json!({ "n": "é ✓" }), 0, None),
            ev("org-keep", Some("ag-k"), "message", said_payload("kept", 1), HOUR, said("kc", None, 1)),
            ev("org-a", Some("ag-2"), "agent.state_changed", json!({ "to": "running" }), 2 * HOUR, None),
        ];
        let rows: Vec<&NewActivity> = first_flush.iter().collect();
        let first = t.write_activity(7, &rows, 1_000).await.expect("flush");
        assert!(!first.replayed);
        let f = first.first_id;
        assert_eq!(t.last_activity_id().await.expect("last"), f + 6, "consecutive ids");
        assert_eq!(s.scalar("SELECT MIN(id) FROM activity").await, f);
        // The same flush again (a replacement writer) writes nothing and
        // answers the first commit's ids.
        let again = t.write_activity(7, &rows, 1_500).await.expect("reflush");
        assert_eq!((again.first_id, again.replayed), (f, true));
        assert_eq!(t.activity_count("org-a", None).await.expect("count"), 6);
        let late = ev("org-a", Some("ag-1"), "message", said_payload("earlier", 3), HOUR, said("conv", Some("Renamed"), 3));
        let second = t.write_activity(8, &[&late], 2_000).await.expect("flush");
        assert_eq!(second.first_id, f + 7, "the next flush follows on");
        let h = f + 7;
        assert_eq!(t.activity_count("org-a", None).await.expect("count"), 7);
        assert_eq!(t.activity_count("org-a", Some("tool_call")).await.expect("count"), 2);
        assert_eq!(t.activity_count("org-keep", None).await.expect("count"), 1);

        // Pages: newest first, filters, cursors, payloads read back as JSON.
        let page = |f: ActivityFilter, before: Option<i64>, limit: i64| async move {
            t.activity_page("org-a", &f, before, limit).await.expect("page").iter().map(|r| r.id).collect::<Vec<_>>()
        };
        let all = page(ActivityFilter::default(), None, 100).await;
        assert_eq!(all, vec![h, f + 6, f + 4, f + 3, f + 2, f + 1, f]);
        let rows_a = t.activity_page("org-a", &ActivityFilter::default(), None, 100).await.expect("page");
        let a0 = rows_a.iter().find(|r| r.id == f).expect("first row");
        assert_eq!(a0.payload["arguments"], json!({ "q": "x" }));
        assert_eq!((a0.agent_id.as_deref(), a0.kind.as_str(), a0.at_ms), (Some("ag-1"), "tool_call", 2 * HOUR + 5));
        let note = rows_a.iter().find(|r| r.id == f + 4).expect("note");
        assert_eq!(note.payload, json!({ "n": "é ✓" }), "text beyond ASCII survives");
        assert_eq!(note.agent_id, None);
        let by = |agent: Option<&str>, kind: Option<&str>, since: Option<i64>, until: Option<i64>| ActivityFilter {
            agent: agent.map(Into::into),
            kind: kind.map(Into::into),
            since,
            until,
        };
        assert_eq!(page(by(Some("ag-1"), None, None, None), None, 100).await, vec![h, f + 3, f + 2, f + 1, f]);
        assert_eq!(page(by(None, Some("tool_call"), None, None), None, 100).await, vec![f + 1, f]);
        assert_eq!(page(by(None, Some("agent."), None, None), None, 100).await, vec![f + 6], "a kind prefix");
        assert_eq!(page(by(None, Some("agent"), None, None), None, 100).await, Vec::<i64>::new(), "exact without the dot");
        assert_eq!(page(by(None, None, Some(3 * HOUR), None), None, 100).await, vec![f + 3, f + 2]);
        assert_eq!(page(by(None, None, None, Some(2 * HOUR + 6)), None, 100).await, vec![h, f + 6, f + 4, f]);
        let mut walked: Vec<i64> = Vec::new();
        let mut before = None;
        loop {
            let p = page(ActivityFilter::default(), before, 3).await;
            walked.extend(p.iter().copied());
            before = p.last().copied();
            if p.len() < 3 {
                break;
            }
        }
        assert_eq!(walked, all, "cursor pages cover everything once");
        let after = t.activity_after("org-a", &ActivityFilter::default(), f + 1, 100).await.expect("after");
        assert_eq!(after.iter().map(|r| r.id).collect::<Vec<_>>(), vec![f + 2, f + 3, f + 4, f + 6, h]);
        let after = t.activity_after("org-a", &by(Some("ag-1"), None, None, None), f + 1, 2).await.expect("after");
        assert_eq!(after.iter().map(|r| r.id).collect::<Vec<_>>(), vec![f + 2, f + 3]);
        assert_eq!(t.activity_page("org-keep", &ActivityFilter::default(), None, 100).await.expect("page").len(), 1);

        // Tool calls.
        let calls = t.tool_calls_page("org-a", "ag-1", &ToolCallFilter::default(), None, 10).await.expect("calls");
        assert_eq!(calls.iter().map(|c| c.id).collect::<Vec<_>>(), vec![f + 1, f]);
        let c = &calls[1];
        assert_eq!((c.tool_id.as_str(), c.status.as_str(), c.duration_ms, c.tokens), ("search", "ok", 12, 2));
        assert_eq!((c.call_id.clone(), c.arguments.clone(), c.result_summary.clone()), (Some(json!("c1")), json!({ "q": "x" }), Some(json!("found"))));
        assert!((c.cost_usd - 0.000003).abs() < 1e-12);
        let only = |tool: Option<&str>, status: Option<&str>| ToolCallFilter { tool: tool.map(Into::into), status: status.map(Into::into), since: None, until: None };
        let ids = |v: Vec<cadre::store::ToolCallRow>| v.iter().map(|c| c.id).collect::<Vec<_>>();
        assert_eq!(ids(t.tool_calls_page("org-a", "ag-1", &only(None, Some("error")), None, 10).await.expect("calls")), vec![f + 1]);
        assert_eq!(ids(t.tool_calls_page("org-a", "ag-1", &only(Some("search"), None), None, 10).await.expect("calls")), vec![f]);
        assert_eq!(ids(t.tool_calls_page("org-a", "ag-1", &ToolCallFilter::default(), Some(f + 1), 10).await.expect("calls")), vec![f]);
        assert!(t.tool_calls_page("org-keep", "ag-1", &ToolCallFilter::default(), None, 10).await.expect("calls").is_empty(), "another organization's");

        // Conversations add up across flushes; the latest title given wins.
        let convs = t.conversations_page("org-a", "ag-1", None, 10).await.expect("conversations");
        assert_eq!(convs.len(), 1);
        let conv = &convs[0];
        assert_eq!((conv.id.as_str(), conv.title.as_deref(), conv.messages, conv.tokens), ("conv", Some("Renamed"), 3, 6));
        assert_eq!((conv.started_at.clone(), conv.last_at.clone()), (cadre_actors::domain::rfc3339(HOUR), cadre_actors::domain::rfc3339(3 * HOUR + 1)));
        assert_eq!(t.conversation("org-a", "ag-1", "conv").await.expect("conversation").as_ref(), Some(conv));
        assert_eq!(t.conversation("org-keep", "ag-1", "conv").await.expect("conversation"), None);
        let said: Vec<_> = t.messages_page("org-a", "ag-1", "conv", None, 10).await.expect("messages").into_iter().map(|m| (m.id, m.content, m.tokens)).collect();
        assert_eq!(said, vec![(f + 2, json!("hello"), 1), (f + 3, json!("again"), 2), (h, json!("earlier"), 3)]);
        let next = t.messages_page("org-a", "ag-1", "conv", Some(f + 2), 1).await.expect("messages");
        assert_eq!(next.iter().map(|m| m.id).collect::<Vec<_>>(), vec![f + 3]);
        assert_eq!(next[0].role, json!("user"));

        // The day by hour.
        let day = t.timeline("org-a", "ag-1", 0).await.expect("timeline");
        assert_eq!(day.hours.len(), 24);
        assert_eq!((day.hours[2].tool_calls, day.hours[2].tool_errors, day.hours[2].tool_tokens), (2, 1, 6));
        assert!((day.hours[2].tool_cost_usd - 0.000008).abs() < 1e-12);
        assert_eq!((day.hours[3].messages, day.hours[3].message_tokens), (2, 3));
        assert_eq!((day.hours[1].messages, day.hours[1].message_tokens), (1, 3));
        assert_eq!((day.totals.events, day.totals.tool_calls, day.totals.messages), (5, 2, 3));
        assert_eq!(day.kinds.into_iter().collect::<Vec<_>>(), vec![("message".to_string(), 3), ("tool_call".to_string(), 2)]);
        assert_eq!(t.timeline("org-a", "ag-1", DAY).await.expect("timeline").totals.events, 0);
        assert_eq!(t.timeline("org-keep", "ag-1", 0).await.expect("timeline").totals.events, 0);

        // Retention: 90 days (and two hours) after the flushes, org-a's rows
        // go in batches of two; org-keep's stay; so do hours not yet past.
        let now = 2_000 + 90 * DAY + 2 * HOUR;
        let mut deleted = 0;
        let mut passes = 0;
        loop {
            let e = t.expire_activity(now, 90, 2).await.expect("expire");
            deleted += e.activity;
            passes += 1;
            assert!(e.activity <= 2, "a batch holds at most its size");
            if !e.more() || passes > 20 {
                break;
            }
        }
        assert_eq!(deleted, 7);
        assert_eq!(t.activity_count("org-a", None).await.expect("count"), 0);
        assert_eq!(t.activity_count("org-keep", None).await.expect("count"), 1, "its own retention");
        assert!(t.tool_calls_page("org-a", "ag-1", &ToolCallFilter::default(), None, 10).await.expect("calls").is_empty());
        assert!(t.conversations_page("org-a", "ag-1", None, 10).await.expect("conversations").is_empty());
        assert!(t.messages_page("org-a", "ag-1", "conv", None, 10).await.expect("messages").is_empty());
        assert_eq!(s.scalar("SELECT COUNT(*) FROM tool_calls").await, 0);
        assert_eq!(s.scalar("SELECT COUNT(*) FROM messages").await, 1, "org-keep's message");
        let day = t.timeline("org-a", "ag-1", 0).await.expect("timeline");
        assert_eq!((day.hours[1].events, day.hours[2].events, day.hours[3].events), (0, 2, 2), "an hour goes once all of it is past");
        assert_eq!(t.timeline("org-keep", "ag-k", 0).await.expect("timeline").totals.events, 1);
        t.expire_activity(now + 2 * HOUR, 90, 10).await.expect("expire");
        assert_eq!(t.timeline("org-a", "ag-1", 0).await.expect("timeline").totals.events, 0);
        assert_eq!(s.scalar("SELECT COUNT(*) FROM audit_log").await, audits, "retention never deletes audit entries");
        assert_eq!(s.scalar("SELECT COUNT(*) FROM activity_flushes").await, 0, "flush markers live a day");
        // Ids are never reused, even after deletions.
        let last = t.last_activity_id().await.expect("last");
        assert!((f + 5..=h).contains(&last), "{last}: at least the highest stored");
        let next = t.write_activity(9, &[&late], now).await.expect("flush");
        assert_eq!(next.first_id, h + 1);
        assert_eq!(t.last_activity_id().await.expect("last"), h + 1);
        // An hour's counts add up within a flush and across flushes (the
        // upsert's update path).
        let tool = ev("org-a", Some("ag-9"), "tool_call", json!({}), 5 * HOUR, call("x", "error", 2, 7));
        t.write_activity(10, &[&tool, &tool], now).await.expect("flush");
        t.write_activity(11, &[&tool], now).await.expect("flush");
        let day = t.timeline("org-a", "ag-9", 0).await.expect("timeline");
        assert_eq!((day.hours[5].tool_calls, day.hours[5].tool_errors, day.hours[5].tool_tokens), (3, 3, 6));
        assert!((day.hours[5].tool_cost_usd - 0.000021).abs() < 1e-12);
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keeps_activity() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("a.db").display());
    let store = SqlStore::open(&url, Durability::Normal, 4)
        .await
        .expect("open");
    store.migrate().await.expect("migrate");
    activity_suite!(Subject {
        store: Arc::new(store),
        backend: Backend::Sqlite,
        url,
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keeps_activity() {
    on_server(Backend::Postgres, postgres, |s| async move {
        activity_suite!(s)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_keeps_activity() {
    on_server(Backend::Mysql, mysql, |s| async move { activity_suite!(s) }).await;
}

/// Connection loss under load: 8 writers charge usage reports while every
/// connection of the store is killed from outside, four times, each time
/// after another batch of writes was acknowledged. A write that loses its
/// connection before its commit is tried again on a new one, so few writes
/// fail (only those whose commit was cut off); a failure is only ever
/// `Unavailable`; every acknowledged report is stored and counted once in
/// the organization's spend; and the store goes on without being reopened.
async fn writes_survive_lost_connections<S: Store>(
    s: &Subject<S>,
    kill: impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = usize> + Send>>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    s.execute("INSERT INTO orgs (id, name, created_at, slug) VALUES ('org-1', 'Org', 1, 'org-1')")
        .await;
    let agent = record("agent-k", "kept");
    insert(&*s.store, &agent, None).await.expect("insert");
    let acked = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (store, acked, agent) = (s.store.clone(), acked.clone(), agent.clone());
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                for i in 0..40 {
                    let report = format!("r-{w}-{i:02}");
                    let done = charge(&*store, &agent, &report, 100, 1).await;
                    if done == Ok(WriteOutcome::Written) {
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                    outcomes.push((report, done));
                }
                outcomes
            })
        })
        .collect();
    let mut killed = Vec::new();
    for round in 1..=4 {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while acked.load(Ordering::SeqCst) < round * 50 {
            assert!(
                std::time::Instant::now() < deadline,
                "writes stalled at {} acknowledged",
                acked.load(Ordering::SeqCst)
            );
            tokio::task::yield_now().await;
        }
        // Right after a kill the pool may have no connection yet: kill
        // again until this round ends at least one.
        loop {
            let n = kill().await;
            if n > 0 {
                killed.push(n);
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no connection to kill"
            );
            tokio::task::yield_now().await;
        }
    }
    let mut ok = Vec::new();
    let mut failed = 0;
    for w in writers {
        for (report, done) in w.await.expect("writer") {
            match done {
                Ok(WriteOutcome::Written) => ok.push(report),
                Err(StoreError::Unavailable(e)) => {
                    eprintln!("{report}: unavailable: {e}");
                    failed += 1
                }
                other => panic!("{report}: {other:?}"),
            }
        }
    }
    eprintln!(
        "{:?}: {} acknowledged, {failed} unavailable, connections killed {killed:?}",
        s.backend,
        ok.len()
    );
    // Without the retry, about one write per killed connection fails
    // (22-28 of 320 for 32 kills here); with it, only a write whose commit
    // was cut off (0-8): at most half the killed connections may cost one.
    let kills: usize = killed.iter().sum();
    assert!(
        failed * 2 <= kills,
        "{failed} writes failed for {kills} killed connections: lost connections are not retried"
    );
    // Nothing acknowledged is lost; what is stored is counted exactly once.
    let stored = s
        .scalar("SELECT COUNT(*) FROM usage_reports WHERE agent_id = 'agent-k'")
        .await;
    let kept: std::collections::BTreeSet<String> = s
        .strings("SELECT report_id FROM usage_reports WHERE agent_id = 'agent-k'")
        .await
        .into_iter()
        .collect();
    let lost: Vec<&String> = ok.iter().filter(|r| !kept.contains(*r)).collect();
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");
    assert!(stored >= i64::try_from(ok.len()).expect("count"));
    assert_eq!(
        s.scalar("SELECT tokens FROM org_usage WHERE org_id = 'org-1'")
            .await,
        stored * 100,
        "the spend counts each stored report once"
    );
    // It recovers without being reopened.
    assert_eq!(
        charge(&*s.store, &agent, "after", 1, 1).await,
        Ok(WriteOutcome::Written)
    );
    s.store.ping().await.expect("ping");
}

/// Kills every other connection to the PostgreSQL database `url` names.
async fn terminate_postgres(url: String) -> usize {
    let mut c = PgConnection::connect(&url).await.expect("connect");
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_all(&mut c)
    .await
    .expect("terminate");
    killed.into_iter().filter(|k| *k).count()
}

/// Kills every other connection to the MySQL database `url` names.
async fn kill_mysql(url: String) -> usize {
    let mut c = MySqlConnection::connect(&url).await.expect("connect");
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT CAST(id AS SIGNED) FROM information_schema.processlist \
         WHERE db = DATABASE() AND id <> CONNECTION_ID()",
    )
    .fetch_all(&mut c)
    .await
    .expect("processlist");
    let mut killed = 0usize;
    for id in ids {
        // A connection may have closed meanwhile.
        if c.execute(format!("KILL {id}").as_str()).await.is_ok() {
            killed += 1;
        }
    }
    killed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_writes_survive_lost_connections() {
    on_server(Backend::Postgres, postgres, |s| async move {
        let url = s.url.clone();
        writes_survive_lost_connections(&s, move || Box::pin(terminate_postgres(url.clone())))
            .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_writes_survive_lost_connections() {
    on_server(Backend::Mysql, mysql, |s| async move {
        let url = s.url.clone();
        writes_survive_lost_connections(&s, move || Box::pin(kill_mysql(url.clone()))).await;
    })
    .await;
}

/// Cancels `cadre::store::begin` on a one-connection pool again and again,
/// each time with the connection idle so that the cancelled `BEGIN` really
/// reaches the server, and then checks that the connection is not left in a
/// transaction: rows the pool then writes outside any transaction must be
/// visible at once to another connection. With sqlx's own `pool.begin()`
/// each cancellation leaves the connection inside a transaction nothing
/// ends (transact-rs/sqlx#4393), and these rows stay invisible.
macro_rules! cancelled_begins_leave_nothing_open {
    ($url:expr, $pool:ty, $conn:ty) => {{
        use futures_util::FutureExt;
        let url: String = $url;
        let pool = <$pool>::new()
            .max_connections(1)
            // Else acquiring pings first and a cancel would land before BEGIN.
            .test_before_acquire(false)
            .connect(&url)
            .await
            .expect("pool");
        pool.execute("CREATE TABLE probe (n INTEGER NOT NULL)")
            .await
            .expect("create probe");
        const ROUNDS: i64 = 100;
        let mut cancelled = 0;
        for n in 0..ROUNDS {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while pool.num_idle() == 0 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the connection came back"
                );
                tokio::task::yield_now().await;
            }
            // One poll sends BEGIN and waits for its answer; then the
            // future is dropped.
            match cadre::store::begin(&pool).now_or_never() {
                None => cancelled += 1,
                // Preempted long enough for the round trip: nothing cancelled.
                Some(done) => drop(done.expect("begin")),
            }
            sqlx::query(
                "INSERT INTO probe (n) VALUES (?)"
                    .replace(
                        '?',
                        if url.starts_with("postgres") {
                            "$1"
                        } else {
                            "?"
                        },
                    )
                    .as_str(),
            )
            .bind(n)
            .execute(&pool)
            .await
            .expect("insert");
        }
        let mut other = <$conn>::connect(&url).await.expect("connect");
        let seen: i64 = sqlx::query_scalar(
            "SELECT CAST(COUNT(*) AS SIGNED) FROM probe"
                .replace(
                    "SIGNED",
                    if url.starts_with("postgres") {
                        "BIGINT"
                    } else {
                        "SIGNED"
                    },
                )
                .as_str(),
        )
        .fetch_one(&mut other)
        .await
        .expect("count");
        assert!(
            cancelled >= 10,
            "BEGINs were cancelled in flight ({cancelled} of {ROUNDS})"
        );
        assert_eq!(
            seen, ROUNDS,
            "writes after a cancelled BEGIN were committed, not held in a stale transaction"
        );
        pool.close().await;
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cancelled_begins_leave_nothing_open() {
    let Some(admin) = support::server(
        "CADRE_TEST_POSTGRES_URL",
        support::POSTGRES_URL,
        Backend::Postgres,
    )
    .await
    else {
        return;
    };
    support::on_fresh_database(Backend::Postgres, &admin, |url| async move {
        cancelled_begins_leave_nothing_open!(url, sqlx::postgres::PgPoolOptions, PgConnection);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_cancelled_begins_leave_nothing_open() {
    let Some(admin) =
        support::server("CADRE_TEST_MYSQL_URL", support::MYSQL_URL, Backend::Mysql).await
    else {
        return;
    };
    support::on_fresh_database(Backend::Mysql, &admin, |url| async move {
        cancelled_begins_leave_nothing_open!(url, sqlx::mysql::MySqlPoolOptions, MySqlConnection);
    })
    .await;
}
