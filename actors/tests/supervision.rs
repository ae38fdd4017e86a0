//! Actor tests: the real tree on in-memory fakes. Supervision, health,
//! budget and write-through behaviour.

mod common;

use cadre_actors::domain::{AgentId, AgentPatch};
use cadre_actors::lifecycle::{Command, State, TRANSITIONS};
use cadre_actors::{ChaosMode, ChaosTarget, Error};
use common::*;
use std::sync::atomic::Ordering;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(10);

async fn running_agent(h: &Harness, name: &str) -> AgentId {
    let snap = h.create(spec(name)).await;
    let id = snap.id.clone();
    h.cmd(&id, Command::Deploy).await.expect("deploy");
    h.wait_state(&id, State::Running, LIMIT).await;
    id
}

/// Ends the agent's actor with `mode` and waits for its replacement.
async fn crash_and_wait(h: &Harness, id: &AgentId, mode: ChaosMode) {
    let actor = h.actor_id(id).expect("actor");
    h.cadre
        .chaos(ChaosTarget::Agent, id.as_str(), mode)
        .expect("chaos");
    replaced(h, id, actor).await;
}

async fn replaced(h: &Harness, id: &AgentId, before: ractor::ActorId) {
    wait_until("replacement actor", LIMIT, || {
        h.actor_id(id).is_some_and(|a| a != before)
    })
    .await;
}

#[tokio::test]
async fn restarts_agent_after_kill_with_state_intact() {
    let h = start(fast_settings()).await;
    let id = running_agent(&h, "a").await;
    let before = h.cadre.get_agent(&h.org, &id).await.expect("get");
    crash_and_wait(&h, &id, ChaosMode::Kill).await;
    let after = h
        .cadre
        .get_agent(&h.org, &id)
        .await
        .expect("get after restart");
    assert_eq!(after.view().name, before.view().name);
    assert_eq!(after.view().state, State::Running);
    assert_eq!(after.view().restart_count, before.view().restart_count);
    // Rebuilt from the persisted record, under a new epoch.
    let stored = h.store.record(&id).expect("stored");
    assert!(stored.epoch > 1, "the replacement claimed a new epoch");
    // And it still works: commands go to the new incarnation.
    h.cmd(&id, Command::Stop).await.expect("stop after restart");
    assert_eq!(h.store.record(&id).expect("stored").state, State::Stopped);
}

#[tokio::test]
async fn restarts_agent_after_panic() {
    let h = start(fast_settings()).await;
    let snap = h.create(spec("p")).await;
    let id = snap.id.clone();
    let patch = AgentPatch {
        role: Some(Some("writer".into())),
        ..Default::default()
    };
    h.cadre
        .patch_agent(&h.org, &id, patch, user())
        .await
        .expect("patch");
    crash_and_wait(&h, &id, ChaosMode::Panic).await;
    let after = h.cadre.get_agent(&h.org, &id).await.expect("get");
    assert_eq!(after.view().role.as_deref(), Some("writer"));
    assert_eq!(after.view().state, State::Draft);
}

#[tokio::test]
async fn tenant_restart_rehydrates_all_agents() {
    let h = start(fast_settings()).await;
    let mut ids = Vec::new();
    for i in 0..8 {
        let snap = h.create(spec(&format!("t{i}"))).await;
        ids.push(snap.id.clone());
    }
    let live = running_agent(&h, "live").await;
    h.cmd(&ids[0], Command::Deploy).await.expect("deploy");
    h.wait_state(&ids[0], State::Running, LIMIT).await;
    h.cmd(&ids[0], Command::Stop).await.expect("stop");
    ids.push(live.clone());
    let mut before = Vec::new();
    for id in &ids {
        before.push(
            h.cadre
                .get_agent(&h.org, id)
                .await
                .expect("get")
                .view()
                .clone(),
        );
    }
    let tenant = h
        .cadre
        .ctx()
        .registry
        .tenant(&h.org)
        .expect("tenant")
        .actor
        .get_id();
    let agent_actors: Vec<_> = ids.iter().map(|id| h.actor_id(id)).collect();
    h.cadre
        .chaos(ChaosTarget::Tenant, h.org.as_str(), ChaosMode::Kill)
        .expect("kill tenant");
    wait_until("new tenant", LIMIT, || {
        h.cadre
            .ctx()
            .registry
            .tenant(&h.org)
            .is_some_and(|t| t.actor.get_id() != tenant)
    })
    .await;
    for (id, old) in ids.iter().zip(agent_actors) {
        wait_until("agent back", LIMIT, || {
            h.actor_id(id).is_some_and(|a| Some(a) != old)
        })
        .await;
    }
    for (id, view) in ids.iter().zip(before) {
        let now = h
            .cadre
            .get_agent(&h.org, id)
            .await
            .expect("get after tenant restart");
        assert_eq!(now.view().state, view.state, "{id}");
        assert_eq!(now.view().name, view.name);
    }
    // The read index came back too.
    let page = h
        .cadre
        .list_agents(
            &h.org,
            cadre_actors::tenant::ListQuery {
                state: None,
                cursor: None,
                limit: 100,
            },
        )
        .await
        .expect("list");
    assert_eq!(page.items.len(), ids.len());
    h.wait_state(&live, State::Running, LIMIT).await;
}

#[tokio::test]
async fn escalates_to_error_after_max_restarts() {
    let h = start(fast_settings()).await; // 3 restarts per 60 s
    let snap = h.create(spec("e")).await;
    let id = snap.id.clone();
    for _ in 0..4 {
        crash_and_wait(&h, &id, ChaosMode::Panic).await;
    }
    let view = h
        .cadre
        .get_agent(&h.org, &id)
        .await
        .expect("get")
        .view()
        .clone();
    assert_eq!(view.state, State::Error);
    assert!(
        view.state_reason
            .as_deref()
            .unwrap_or("")
            .contains("restart intensity exceeded"),
        "{view:?}"
    );
    let history = h.store.history(&id);
    assert!(
        history
            .iter()
            .any(|t| t.from == Some(State::Draft) && t.to == State::Error)
    );
    assert!(
        h.store
            .events(&id)
            .iter()
            .any(|e| e.kind == "supervisor_escalated")
    );
    // An operator can still act on it.
    let err = h
        .cmd(&id, Command::Start)
        .await
        .expect_err("start from error");
    assert!(matches!(
        err,
        Error::IllegalTransition {
            state: State::Error,
            ..
        }
    ));
}

#[tokio::test]
async fn health_failures_degrade_then_recover() {
    let h = start(fast_settings()).await;
    let id = running_agent(&h, "h").await;
    let starts = h.deployer.starts.load(Ordering::SeqCst);
    h.deployer.crash(id.as_str());
    // A runtime the deployer reports gone is recovered at once: `degraded`
    // may be too short to be polled, the history keeps it.
    wait_until("the crashed runtime is replaced", LIMIT, || {
        h.store.history(&id).iter().any(|t| t.to == State::Degraded)
            && h.store.history(&id).last().map(|t| t.to) == Some(State::Running)
    })
    .await;
    let view = h.cadre.get_agent(&h.org, &id).await.expect("get");
    assert_eq!(view.view().restart_count, 1);
    assert!(h.deployer.starts.load(Ordering::SeqCst) > starts);
    let history = h.store.history(&id);
    let tail: Vec<_> = history.iter().rev().take(3).map(|t| t.to).collect();
    assert_eq!(tail, vec![State::Running, State::Starting, State::Degraded]);
}

/// What the deployer cannot tell (a failed status check) waits for
/// `failure_threshold` failed probes; what it knows (the runtime is gone)
/// is recovered at once, whatever the threshold.
#[tokio::test]
async fn a_failed_check_waits_for_the_threshold_but_a_known_exit_does_not() {
    let h = start(fast_settings()).await;
    let mut s = spec("t");
    s.health.failure_threshold = Some(1000);
    let snap = h.create(s).await;
    let id = snap.id.clone();
    h.cmd(&id, Command::Deploy).await.expect("deploy");
    h.wait_state(&id, State::Running, LIMIT).await;
    h.deployer.fail_status.store(true, Ordering::SeqCst);
    h.wait_state(&id, State::Degraded, LIMIT).await;
    let checks = h.deployer.status_checks.load(Ordering::SeqCst);
    wait_until("ten more failed checks", LIMIT, || {
        h.deployer.status_checks.load(Ordering::SeqCst) >= checks + 10
    })
    .await;
    let view = h.cadre.get_agent(&h.org, &id).await.expect("get");
    assert_eq!(
        view.view().restart_count,
        0,
        "recovered before the threshold"
    );
    assert!(
        view.view()
            .state_reason
            .as_deref()
            .is_some_and(|r| r.contains("status check failed")),
        "{:?}",
        view.view().state_reason
    );
    // Now the deployer knows: the runtime is gone. No threshold to wait out.
    h.deployer.fail_status.store(false, Ordering::SeqCst);
    h.deployer.crash(id.as_str());
    wait_until("the gone runtime is recovered", LIMIT, || {
        h.store.history(&id).iter().any(|t| {
            t.to == State::Starting
                && t.reason
                    .as_deref()
                    .is_some_and(|r| r.contains("fake runtime not running"))
        })
    })
    .await;
    h.wait_state(&id, State::Running, LIMIT).await;
}

#[tokio::test]
async fn restart_limit_moves_agent_to_error() {
    let h = start(fast_settings()).await; // max_recoveries = 2
    let id = running_agent(&h, "l").await;
    h.deployer.fail_start.store(true, Ordering::SeqCst);
    h.deployer.crash(id.as_str());
    h.wait_state(&id, State::Error, LIMIT).await;
    let view = h
        .cadre
        .get_agent(&h.org, &id)
        .await
        .expect("get")
        .view()
        .clone();
    assert!(
        view.state_reason
            .as_deref()
            .unwrap_or("")
            .contains("restart limit"),
        "{view:?}"
    );
    assert_eq!(view.restart_count, 2);
    assert!(
        h.store
            .events(&id)
            .iter()
            .any(|e| e.kind == "restart_limit_reached")
    );
    // In error nothing happens by itself any more.
    let history_len = h.store.history(&id).len();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(h.store.history(&id).len(), history_len);
}

#[tokio::test]
async fn budget_warns_stops_and_rolls_over() {
    let h = start(fast_settings()).await;
    let mut s = spec("b");
    s.budget.monthly_tokens = Some(1000);
    let snap = h.create(s).await;
    let id = snap.id.clone();
    h.cmd(&id, Command::Deploy).await.expect("deploy");
    h.wait_state(&id, State::Running, LIMIT).await;
    let token = h.deployer.token_of(id.as_str()).expect("token");
    let conn = h
        .cadre
        .runtime_hello(&h.org, &id, &token)
        .await
        .expect("hello")
        .conn;
    let report = |rid: &str, n: u64| cadre_actors::agent::UsageReport {
        report_id: rid.into(),
        model: "m".into(),
        input_tokens: n,
        output_tokens: 0,
        reservation_id: None,
    };
    let ack = h
        .cadre
        .runtime_usage(&h.org, &id, conn, report("r1", 500))
        .await
        .expect("usage");
    assert!(ack.counted && ack.should_run);
    assert!(h.store.events(&id).is_empty());
    h.cadre
        .runtime_usage(&h.org, &id, conn, report("r2", 300))
        .await
        .expect("usage");
    assert_eq!(
        h.store
            .events(&id)
            .iter()
            .filter(|e| e.kind == "budget_warning")
            .count(),
        1
    );
    // A resent report is not counted twice.
    let dup = h
        .cadre
        .runtime_usage(&h.org, &id, conn, report("r2", 300))
        .await
        .expect("dup");
    assert!(!dup.counted);
    assert_eq!(h.store.record(&id).expect("rec").usage.tokens, 800);
    let ack = h
        .cadre
        .runtime_usage(&h.org, &id, conn, report("r3", 250))
        .await
        .expect("usage");
    assert!(!ack.should_run);
    let view = h
        .cadre
        .get_agent(&h.org, &id)
        .await
        .expect("get")
        .view()
        .clone();
    assert_eq!(view.state, State::Stopped);
    assert_eq!(view.state_reason.as_deref(), Some("budget_exceeded"));
    assert_eq!(view.usage.tokens, 1050);
    let err = h.cmd(&id, Command::Start).await.expect_err("over budget");
    assert!(matches!(err, Error::BudgetExceeded { .. }));
    // The next month the counters reset and the agent may start again.
    h.clock.0.store(1_796_083_200_000, Ordering::SeqCst);
    h.cmd(&id, Command::Start).await.expect("start in December");
    h.wait_state(&id, State::Running, LIMIT).await;
    let view = h
        .cadre
        .get_agent(&h.org, &id)
        .await
        .expect("get")
        .view()
        .clone();
    assert_eq!(
        (view.usage.tokens, view.usage.period.as_str()),
        (0, "2026-12")
    );
}

#[tokio::test]
async fn raising_the_budget_allows_a_start() {
    let h = start(fast_settings()).await;
    let mut s = spec("r");
    s.budget.monthly_cost_micros = Some(0);
    let snap = h.create(s).await;
    let id = snap.id.clone();
    let err = h.cmd(&id, Command::Deploy).await.expect_err("no budget");
    assert!(matches!(err, Error::BudgetExceeded { .. }));
    let patch = AgentPatch {
        monthly_cost_micros: Some(Some(1_000_000)),
        ..Default::default()
    };
    h.cadre
        .patch_agent(&h.org, &id, patch, user())
        .await
        .expect("raise");
    h.cmd(&id, Command::Deploy).await.expect("deploy");
    h.wait_state(&id, State::Running, LIMIT).await;
}

#[tokio::test]
async fn failed_write_changes_nothing() {
    let h = start(fast_settings()).await;
    let snap = h.create(spec("w")).await;
    let id = snap.id.clone();
    h.store.fail_writes.store(true, Ordering::SeqCst);
    let err = h.cmd(&id, Command::Deploy).await.expect_err("store down");
    assert!(matches!(err, Error::Unavailable(_)));
    let patch = AgentPatch {
        name: Some("renamed".into()),
        ..Default::default()
    };
    assert!(
        h.cadre
            .patch_agent(&h.org, &id, patch, user())
            .await
            .is_err()
    );
    let view = h
        .cadre
        .get_agent(&h.org, &id)
        .await
        .expect("get")
        .view()
        .clone();
    assert_eq!((view.state, view.name.as_str()), (State::Draft, "w"));
    h.store.fail_writes.store(false, Ordering::SeqCst);
    h.cmd(&id, Command::Deploy)
        .await
        .expect("deploy once the store is back");
    h.wait_state(&id, State::Running, LIMIT).await;
}

#[tokio::test]
async fn names_are_unique_per_org() {
    let h = start(fast_settings()).await;
    h.cadre
        .create_agent(&h.org, spec("same"), user())
        .await
        .expect("first");
    let err = h
        .cadre
        .create_agent(&h.org, spec("same"), user())
        .await
        .expect_err("dup");
    assert!(matches!(err, Error::NameTaken(_)));
}

#[tokio::test]
async fn deploy_with_missing_fields_stops_in_configuring() {
    let h = start(fast_settings()).await;
    let mut s = spec("c");
    s.model = None;
    let snap = h.create(s).await;
    let id = snap.id.clone();
    let after = h.cmd(&id, Command::Deploy).await.expect("deploy");
    assert_eq!(after.view().state, State::Configuring);
    assert_eq!(
        after.view().state_reason.as_deref(),
        Some("missing required fields: model")
    );
    let patch = AgentPatch {
        model: Some(Some("m".into())),
        ..Default::default()
    };
    let after = h
        .cadre
        .patch_agent(&h.org, &id, patch, user())
        .await
        .expect("patch");
    assert_eq!(after.view().state, State::Ready);
    h.cmd(&id, Command::Deploy).await.expect("deploy");
    h.wait_state(&id, State::Running, LIMIT).await;
}

/// Random operator commands, crashes and chaos against one tenant: every
/// transition written to the history must be an edge of the table.
#[tokio::test]
async fn random_operations_only_follow_the_table() {
    let h = start(fast_settings()).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(h.create(spec(&format!("r{i}"))).await.view().id.clone());
    }
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..300 {
        let id = &ids[(next() % ids.len() as u64) as usize];
        match next() % 9 {
            0 => drop(h.cmd(id, Command::Deploy).await),
            1 => drop(h.cmd(id, Command::Start).await),
            2 => drop(h.cmd(id, Command::Stop).await),
            3 => drop(h.cmd(id, Command::Restart).await),
            4 => drop(h.cmd(id, Command::Destroy).await),
            5 => h.deployer.crash(id.as_str()),
            6 => {
                let patch = AgentPatch {
                    model: Some(Some(format!("m{}", next() % 3))),
                    ..Default::default()
                };
                drop(h.cadre.patch_agent(&h.org, id, patch, user()).await);
            }
            7 => drop(
                h.cadre
                    .chaos(ChaosTarget::Agent, id.as_str(), ChaosMode::Kill),
            ),
            _ => tokio::time::sleep(Duration::from_millis(3)).await,
        }
    }
    for id in &ids {
        for t in h.store.history(id) {
            let Some(from) = t.from else { continue };
            assert!(
                TRANSITIONS
                    .iter()
                    .any(|(f, _, to)| *f == from && *to == t.to),
                "history of {id} has {from} -> {} which is not in the table",
                t.to
            );
        }
    }
}

/// ractor mailboxes are unbounded; the gate in front of each actor is not:
/// past `mailbox_capacity` requests in flight, callers wait `mailbox_wait`
/// and are then refused, and nothing that was accepted is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailbox_is_bounded_and_excess_requests_are_refused() {
    let mut settings = fast_settings();
    settings.mailbox_capacity = 2;
    settings.mailbox_wait = Duration::from_millis(20);
    let h = start(settings).await;
    let id = h.create(spec("m")).await.id.clone();
    h.store.write_delay_ms.store(150, Ordering::SeqCst);
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..10 {
        let (cadre, org, id) = (h.cadre.clone(), h.org.clone(), id.clone());
        calls.spawn(async move {
            let patch = AgentPatch {
                role: Some(Some(format!("r{i}"))),
                ..Default::default()
            };
            (i, cadre.patch_agent(&org, &id, patch, user()).await)
        });
    }
    let mut accepted = Vec::new();
    let mut refused = 0;
    while let Some(joined) = calls.join_next().await {
        match joined.expect("task") {
            (i, Ok(_)) => accepted.push(i),
            (_, Err(Error::Overloaded)) => refused += 1,
            (_, Err(e)) => panic!("unexpected error {e:?}"),
        }
    }
    assert!(
        refused >= 5,
        "excess requests are refused, not queued: {refused} refused"
    );
    assert!(
        !accepted.is_empty() && accepted.len() <= 4,
        "accepted {accepted:?}"
    );
    h.store.write_delay_ms.store(0, Ordering::SeqCst);
    let role = h
        .store
        .record(&id)
        .expect("stored")
        .spec
        .role
        .unwrap_or_default();
    assert!(
        accepted.iter().any(|i| role == format!("r{i}")),
        "the last accepted write is stored: {role}"
    );
}

#[tokio::test]
async fn start_without_a_deployment_asks_for_deploy() {
    let h = start(fast_settings()).await;
    let id = h.create(spec("nd")).await.id.clone();
    h.deployer.fail_provision.store(true, Ordering::SeqCst);
    h.cmd(&id, Command::Deploy).await.expect("deploy");
    h.wait_state(&id, State::Error, LIMIT).await;
    h.cmd(&id, Command::Stop).await.expect("stop from error");
    for cmd in [Command::Start, Command::Restart] {
        let err = h.cmd(&id, cmd).await.expect_err("no deployment");
        assert!(
            matches!(err, Error::Invalid(ref m) if m.contains("deploy")),
            "{err:?}"
        );
    }
    assert_eq!(
        h.store.record(&id).expect("rec").state,
        State::Stopped,
        "refusals change nothing"
    );
    h.deployer.fail_provision.store(false, Ordering::SeqCst);
    h.cmd(&id, Command::Deploy).await.expect("deploy again");
    h.wait_state(&id, State::Running, LIMIT).await;
}
