//! The SQLite store against a real database file: group commit, fencing,
//! idempotent usage reports and paged hydration.

use cadre::store::{Checkpoints, Durability, NewActivity, NewUser, OrgRow, SqlStore};
use cadre_actors::audit::AuditEntry;
use cadre_actors::budget::{BudgetLimits, Period, Usage};
use cadre_actors::domain::{
    AgentId, AgentRecord, AgentSpec, DeployTarget, HealthOverrides, OrgId, Transition, Who,
};
use cadre_actors::lifecycle::State;
use cadre_actors::ports::{AgentInsert, AgentWrite, Charge, Store, StoreError, WriteOutcome};

async fn store() -> (SqlStore, tempfile::TempDir, OrgId) {
    store_with(Checkpoints::default()).await
}

async fn store_with(checkpoints: Checkpoints) -> (SqlStore, tempfile::TempDir, OrgId) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let store = SqlStore::open_with(&url, Durability::Normal, 2, checkpoints)
        .await
        .expect("open");
    store.migrate().await.expect("migrate");
    let org = OrgRow {
        id: "org".into(),
        name: "org".into(),
        slug: "org".into(),
        plan: "free".into(),
        limits: "{}".into(),
        suspended_at: None,
        created_at: 0,
        activity_retention_days: None,
        timezone: "UTC".into(),
        budget_period: "monthly".into(),
        instructions: None,
        delegation: "chart".into(),
    };
    let owner = NewUser {
        id: "u",
        org_id: "org",
        email: "a@b.c",
        name: "A",
        role: "owner",
        password_hash: "hash",
        instance_admin: true,
        now: 0,
    };
    let oid = OrgId("org".into());
    store
        .tables()
        .create_org(&org, &owner, &audit_of(&oid, "org.create", "org:org"))
        .await
        .expect("org");
    (store, dir, oid)
}

fn audit_of(org: &OrgId, action: &str, target: &str) -> AuditEntry {
    AuditEntry::new(
        org,
        &Who::system(),
        action,
        target,
        serde_json::json!({}),
        1,
    )
}

/// An insert with its audit entry and no agent limit.
fn ins<'a>(record: &'a AgentRecord, created: &'a Transition) -> AgentInsert<'a> {
    limited(record, created, None)
}

fn limited<'a>(
    record: &'a AgentRecord,
    created: &'a Transition,
    max_agents: Option<u64>,
) -> AgentInsert<'a> {
    let audit = Box::leak(Box::new(audit_of(
        &record.org_id,
        "agent.create",
        &format!("agent:{}", record.id),
    )));
    let version = Box::leak(Box::new(cadre_actors::domain::AgentVersion {
        agent_id: record.id.clone(),
        org_id: record.org_id.clone(),
        n: 1,
        definition: cadre_actors::domain::definition(&record.spec),
        by: "system".into(),
        at: 1,
    }));
    AgentInsert {
        record,
        created,
        audit,
        max_agents,
        version,
    }
}

fn record(org: &OrgId, name: &str) -> AgentRecord {
    AgentRecord {
        id: AgentId(uuid::Uuid::now_v7().to_string()),
        org_id: org.clone(),
        spec: AgentSpec {
            name: name.into(),
            role: None,
            model: None,
            target: DeployTarget::Local,
            health: HealthOverrides::default(),
            budget: BudgetLimits::default(),
            profile: None,
            runtime: Default::default(),
            job: Default::default(),
        },
        state: State::Draft,
        state_reason: None,
        restart_count: 0,
        usage: Usage::empty(Period::parse("2026-11").expect("period")),
        deployment_ref: None,
        runtime_token_hash: None,
        epoch: 1,
        created_at: 1,
        updated_at: 1,
    }
}

fn created() -> Transition {
    Transition {
        from: None,
        to: State::Draft,
        reason: Some("created".into()),
        by: "system".into(),
        at: 1,
    }
}

#[tokio::test]
async fn concurrent_creates_refuse_only_the_duplicate_name() {
    let (store, _dir, org) = store().await;
    let mut records: Vec<AgentRecord> = (0..40).map(|i| record(&org, &format!("a{i}"))).collect();
    records.push(record(&org, "a7"));
    let created = created();
    let results = futures_util::future::join_all(
        records.iter().map(|r| store.insert_agent(ins(r, &created))),
    )
    .await;
    let conflicts = results
        .iter()
        .filter(|r| matches!(r, Err(StoreError::Conflict(_))))
        .count();
    assert_eq!(conflicts, 1, "{results:?}");
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 40);
    let mut loaded = 0;
    for r in &records {
        if store
            .load_agent(r.id.as_str())
            .await
            .expect("load")
            .is_some()
        {
            loaded += 1;
        }
    }
    assert_eq!(
        loaded, 40,
        "every acknowledged create is stored, the refused one is not"
    );
    for r in &records[..3] {
        let history = store
            .tables()
            .history("org", r.id.as_str(), 0, 10)
            .await
            .expect("history");
        assert_eq!(history.len(), 1);
        assert_eq!(history[0].to, "draft");
    }
}

#[tokio::test]
async fn writes_from_a_replaced_incarnation_are_fenced() {
    let (store, _dir, org) = store().await;
    let rec = record(&org, "f");
    store
        .insert_agent(ins(&rec, &created()))
        .await
        .expect("insert");
    let claimed = store
        .claim_agent(&org, &rec.id)
        .await
        .expect("claim")
        .expect("exists");
    assert_eq!(claimed.epoch, 2);
    let mut stale = rec.clone();
    stale.state = State::Error;
    let w = AgentWrite {
        record: &stale,
        transitions: &[],
        event: None,
        usage: None,
        audit: None,
        versions: &[],
    };
    assert_eq!(store.write_agent(w).await, Err(StoreError::Fenced));
    assert_eq!(
        store
            .delete_agent(
                &stale,
                5,
                &audit_of(&stale.org_id, "agent.delete", "agent:x")
            )
            .await,
        Err(StoreError::Fenced)
    );
    let mut fresh = claimed.clone();
    fresh.state = State::Configuring;
    let w = AgentWrite {
        record: &fresh,
        transitions: &[],
        event: None,
        usage: None,
        audit: None,
        versions: &[],
    };
    assert_eq!(store.write_agent(w).await, Ok(WriteOutcome::Written));
    assert_eq!(
        store
            .load_agent(rec.id.as_str())
            .await
            .expect("load")
            .expect("row")
            .state,
        State::Configuring
    );
    // Another org cannot claim it.
    assert!(
        store
            .claim_agent(&OrgId("other".into()), &rec.id)
            .await
            .expect("claim")
            .is_none()
    );
}

#[tokio::test]
async fn usage_reports_count_once_even_in_one_batch() {
    let (store, _dir, org) = store().await;
    let mut rec = record(&org, "u");
    store
        .insert_agent(ins(&rec, &created()))
        .await
        .expect("insert");
    rec.usage = rec.usage.add(10, 0);
    let charge = Charge {
        report_id: "r1",
        tokens: 10,
        cost_micros: 7,
        org_period: Period::parse("2026-11").expect("period"),
    };
    let w = AgentWrite {
        record: &rec,
        transitions: &[],
        event: None,
        usage: Some(charge),
        audit: None,
        versions: &[],
    };
    let mut double = rec.clone();
    double.usage = double.usage.add(10, 0);
    let w2 = AgentWrite {
        record: &double,
        transitions: &[],
        event: None,
        usage: Some(charge),
        audit: None,
        versions: &[],
    };
    let (a, b) = tokio::join!(store.write_agent(w), store.write_agent(w2));
    let outcomes = [a.expect("a"), b.expect("b")];
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == WriteOutcome::Written)
            .count(),
        1
    );
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == WriteOutcome::Duplicate)
            .count(),
        1
    );
    let tokens = store
        .load_agent(rec.id.as_str())
        .await
        .expect("load")
        .expect("row")
        .usage
        .tokens;
    assert!(
        tokens == 10 || tokens == 20,
        "one of the two writes, never both: {tokens}"
    );
    // The organization's spend counts the report once too, and keeps it
    // after the agent is deleted.
    let period = rec.usage.period.to_string();
    let spend = |rows: Vec<(String, String, u64, u64)>| {
        rows.into_iter()
            .find(|(o, p, _, _)| o == org.as_str() && *p == period)
            .map(|(_, _, t, c)| (t, c))
    };
    assert_eq!(
        spend(store.tables().org_spend().await.expect("spend")),
        Some((10, 7))
    );
    let at = rec.updated_at + 1;
    let gone = store
        .load_agent(rec.id.as_str())
        .await
        .expect("load")
        .expect("row");
    store
        .delete_agent(&gone, at, &audit_of(&org, "agent.delete", "agent"))
        .await
        .expect("delete");
    assert_eq!(
        spend(store.tables().org_spend().await.expect("spend")),
        Some((10, 7))
    );
    assert_eq!(
        store
            .tables()
            .org_usage(org.as_str(), &period)
            .await
            .expect("usage")
            .tokens,
        10
    );
}

#[tokio::test]
async fn hydration_pages_cover_every_live_agent_once() {
    let (store, _dir, org) = store().await;
    let created = created();
    let mut ids = Vec::new();
    for i in 0..2500 {
        let r = record(&org, &format!("h{i}"));
        ids.push(r.id.clone());
        store.insert_agent(ins(&r, &created)).await.expect("insert");
    }
    let gone = store
        .load_agent(ids[10].as_str())
        .await
        .expect("load")
        .expect("row");
    store
        .delete_agent(&gone, 9, &audit_of(&gone.org_id, "agent.delete", "agent:x"))
        .await
        .expect("delete");
    store.claim_org(&org).await.expect("claim");
    let mut seen = Vec::new();
    let mut after: Option<AgentId> = None;
    loop {
        let page = store
            .org_page(&org, after.as_ref(), 1000)
            .await
            .expect("page");
        assert!(page.iter().all(|r| r.epoch == 2), "claimed before read");
        after = page.last().map(|r| r.id.clone());
        let full = page.len() == 1000;
        seen.extend(page.into_iter().map(|r| r.id));
        if !full {
            break;
        }
    }
    let mut expected = ids.clone();
    expected.remove(10);
    assert_eq!(seen, expected, "every live agent once, in id order");
}

/// 100 rows of ~4 KB each: ~400 KB for one commit.
fn bulk_rows(org: &OrgId) -> Vec<NewActivity> {
    let payload = format!("\"{}\"", "x".repeat(4000));
    (0..100)
        .map(|_| NewActivity {
            org_id: org.as_str().to_string(),
            agent_id: None,
            kind: "bulk".into(),
            payload: payload.clone(),
            at: 0,
            record: None,
        })
        .collect()
}

/// The WAL header's checkpoint sequence number (bytes 12..16, big-endian),
/// which SQLite increments each time it rewinds the log. `None` while the
/// file is missing or holds no valid header.
fn wal_sequence(wal: &std::path::Path) -> Option<u32> {
    use std::io::Read;
    let mut header = [0u8; 16];
    std::fs::File::open(wal)
        .ok()?
        .read_exact(&mut header)
        .ok()?;
    let magic = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    (magic & !1 == 0x377f_0682)
        .then(|| u32::from_be_bytes([header[12], header[13], header[14], header[15]]))
}

/// The WAL's hard cap holds whatever the background checkpointer does:
/// here it never gets a turn (its period is an hour), 160 MB are written
/// back to back, and the file may exceed the 4 MiB cap by one commit at
/// most, because the writer checkpoints and truncates it before the next
/// write whenever it is larger. Without the cap the file ends above 160 MB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_never_outgrows_its_cap_even_without_background_checkpoints() {
    let cap = 4 * 1024 * 1024;
    let (store, dir, org) = store_with(Checkpoints {
        every: std::time::Duration::from_secs(3600),
        restart_frames: 256,
        truncate_bytes: cap,
    })
    .await;
    let wal = dir.path().join("t.db-wal");
    let rows = bulk_rows(&org);
    let refs: Vec<&NewActivity> = rows.iter().collect();
    let mut largest = 0u64;
    for flush in 0..400 {
        store
            .tables()
            .write_activity(1_000 + flush, &refs, 1)
            .await
            .expect("write");
        let size = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        largest = largest.max(size);
    }
    // One commit is ~100 pages of 4 KiB plus their frame headers.
    assert!(
        largest <= cap + 1024 * 1024,
        "the WAL reached {largest} bytes with a cap of {cap} while 160 MB were written"
    );
    assert_eq!(
        store
            .tables()
            .activity_count(org.as_str(), Some("bulk"))
            .await
            .expect("count"),
        40_000
    );
}

/// Under a steady stream of commits a passive checkpoint alone never
/// rewinds the WAL (there is always a frame written after the copy began),
/// so the file grew without bound: 1.4 GB in 25 s of approval decisions.
/// The background checkpointer therefore rewinds a large log between two
/// writes. Here it runs every 20 ms and rewinds beyond 1 MiB, the hard cap
/// is off, and commits of ~400 KB follow each other with no pause: the log
/// must be rewound (the header's sequence number moves) while they go on.
/// The writes stop at 160 MB; without the rewind the sequence never moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpointer_rewinds_the_wal_under_continuous_writes() {
    let (store, dir, org) = store_with(Checkpoints {
        every: std::time::Duration::from_millis(20),
        restart_frames: 256,
        truncate_bytes: u64::MAX,
    })
    .await;
    let wal = dir.path().join("t.db-wal");
    let rows = bulk_rows(&org);
    let refs: Vec<&NewActivity> = rows.iter().collect();
    store
        .tables()
        .write_activity(1_000, &refs, 1)
        .await
        .expect("write");
    let first = wal_sequence(&wal).expect("a WAL with a header after the first write");
    let mut rewound_after = None;
    for flush in 1..400 {
        store
            .tables()
            .write_activity(1_000 + flush, &refs, 1)
            .await
            .expect("write");
        if wal_sequence(&wal).is_some_and(|seq| seq != first) {
            rewound_after = Some(flush);
            break;
        }
    }
    assert!(
        rewound_after.is_some(),
        "the WAL was never rewound while 160 MB were written"
    );
}

/// Settlements queued together share one transaction and one statement per
/// table. Here half of 40 requests were settled already: settling all 40 at
/// once must apply exactly the other 20 and write one vote and one audit
/// entry per applied settlement, none for a lost one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settlements_in_one_batch_apply_only_the_winners() {
    use cadre_actors::approval::{ApprovalRecord, ApprovalState, Vote};
    use cadre_actors::ports::{Cas, GovStore};
    let (store, _dir, org) = store().await;
    let who = Who::user("u");
    let record = |i: usize| ApprovalRecord {
        id: format!("ap-{i:03}"),
        org_id: org.clone(),
        agent_id: AgentId("agent".into()),
        call_id: format!("call-{i}"),
        tool: "echo".into(),
        args_hash: "h".into(),
        arguments: serde_json::json!({}),
        trigger: "policy".into(),
        policy: "p".into(),
        levels: Vec::new(),
        level: 0,
        state: ApprovalState::Pending,
        outcome: None,
        requested_by: "runtime:agent".into(),
        created_at: 1,
        expires_at: 1_000_000,
        decided_by: None,
        decided_at: None,
        comment: None,
        grant_id: None,
        votes: Vec::new(),
    };
    let audit = |action: &str, i: usize| {
        AuditEntry::new(
            &org,
            &who,
            action,
            format!("approval:ap-{i:03}"),
            serde_json::json!({}),
            2,
        )
    };
    for i in 0..40 {
        store
            .insert_approval(&record(i), &audit("approval.request", i))
            .await
            .expect("insert");
    }
    let decided = |i: usize, by: &str| {
        let mut r = record(i);
        r.state = ApprovalState::Approved;
        r.decided_by = Some(by.into());
        r.decided_at = Some(3);
        (
            r,
            Vote {
                by: by.into(),
                level: 0,
                approve: true,
                comment: None,
                at: 3,
            },
        )
    };
    for i in (0..40).step_by(2) {
        let (r, v) = decided(i, "first");
        let cas = store
            .settle_approval(&r, 0, Some(&v), None, &audit("approval.approve", i))
            .await
            .expect("settle");
        assert_eq!(cas, Cas::Applied);
    }
    let all = futures_util::future::join_all((0..40).map(|i| {
        let store = &store;
        let (r, v) = decided(i, "second");
        let a = audit("approval.approve", i);
        async move { store.settle_approval(&r, 0, Some(&v), None, &a).await }
    }))
    .await;
    for (i, cas) in all.into_iter().enumerate() {
        let expected = if i % 2 == 0 { Cas::Lost } else { Cas::Applied };
        assert_eq!(cas.expect("settle"), expected, "request {i}");
        let stored = store
            .approval(&org, &format!("ap-{i:03}"))
            .await
            .expect("read")
            .expect("exists");
        let by = if i % 2 == 0 { "first" } else { "second" };
        assert_eq!(stored.decided_by.as_deref(), Some(by), "request {i}");
        assert_eq!(stored.votes.len(), 1, "one vote on request {i}");
        assert_eq!(stored.votes[0].by, by);
    }
    let approves = store
        .tables()
        .audit_since(0, 1_000)
        .await
        .expect("audit")
        .into_iter()
        .filter(|e| e.4 == "approval.approve")
        .count();
    assert_eq!(
        approves, 40,
        "20 first decisions and 20 winning second ones; none for a loser"
    );
}
