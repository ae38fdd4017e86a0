//! In-memory fakes of the ports, and a harness that starts a real actor tree on them.

#![allow(dead_code, missing_docs)]

use async_trait::async_trait;
use cadre_actors::audit::AuditEntry;
use cadre_actors::budget::{BudgetLimits, ModelPrice, Pricing};
use cadre_actors::domain::{
    AgentEvent, AgentId, AgentRecord, AgentSpec, DeployTarget, HealthOverrides, OrgId, Transition,
    Who,
};
use cadre_actors::ports::{
    AgentInsert, AgentWrite, Clock, DeployError, DeployRequest, Deployer, DeploymentStatus,
    Secrets, Store, StoreError, WriteOutcome,
};
use cadre_actors::restart::Backoff;
use cadre_actors::{Cadre, Ctx, Settings};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Inner {
    agents: HashMap<AgentId, AgentRecord>,
    deleted: HashSet<AgentId>,
    history: Vec<(AgentId, Transition)>,
    events: Vec<(AgentId, AgentEvent)>,
    reports: HashSet<(AgentId, String)>,
    orgs: Vec<OrgId>,
    audit: Vec<AuditEntry>,
}

/// A store with the same fencing and uniqueness rules as the SQL one.
#[derive(Default)]
pub struct MemStore {
    inner: Mutex<Inner>,
    pub fail_writes: AtomicBool,
    /// Makes every agent write take this long (a slow disk).
    pub write_delay_ms: std::sync::atomic::AtomicU64,
}

impl MemStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub fn add_org(&self, org: &OrgId) {
        self.lock().orgs.push(org.clone());
    }
    pub fn record(&self, id: &AgentId) -> Option<AgentRecord> {
        self.lock().agents.get(id).cloned()
    }
    pub fn history(&self, id: &AgentId) -> Vec<Transition> {
        self.lock()
            .history
            .iter()
            .filter(|(a, _)| a == id)
            .map(|(_, t)| t.clone())
            .collect()
    }
    pub fn audit(&self) -> Vec<AuditEntry> {
        self.lock().audit.clone()
    }
    pub fn events(&self, id: &AgentId) -> Vec<AgentEvent> {
        self.lock()
            .events
            .iter()
            .filter(|(a, _)| a == id)
            .map(|(_, e)| e.clone())
            .collect()
    }
    fn check_down(&self) -> Result<(), StoreError> {
        if self.fail_writes.load(Ordering::SeqCst) {
            Err(StoreError::Unavailable("injected failure".into()))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Store for MemStore {
    async fn insert_agent(&self, ins: AgentInsert<'_>) -> Result<(), StoreError> {
        let (rec, created) = (ins.record, ins.created);
        self.check_down()?;
        let mut g = self.lock();
        let live = g
            .agents
            .values()
            .filter(|a| a.org_id == rec.org_id && !g.deleted.contains(&a.id))
            .count() as u64;
        if ins.max_agents.is_some_and(|max| live >= max) {
            return Err(StoreError::LimitReached("agent limit".into()));
        }
        g.audit.push(ins.audit.clone());
        if g.agents.values().any(|a| {
            a.org_id == rec.org_id && a.spec.name == rec.spec.name && !g.deleted.contains(&a.id)
        }) {
            return Err(StoreError::Conflict("name".into()));
        }
        g.agents.insert(rec.id.clone(), rec.clone());
        g.history.push((rec.id.clone(), created.clone()));
        Ok(())
    }

    async fn latest_version(
        &self,
        _agent: &AgentId,
    ) -> Result<Option<cadre_actors::domain::AgentVersion>, StoreError> {
        Ok(None)
    }

    async fn write_agent(&self, w: AgentWrite<'_>) -> Result<WriteOutcome, StoreError> {
        let delay = self.write_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        self.check_down()?;
        let mut g = self.lock();
        let rec = w.record;
        if let Some(r) = w.usage.map(|c| c.report_id)
            && g.reports.contains(&(rec.id.clone(), r.to_string()))
        {
            return Ok(WriteOutcome::Duplicate);
        }
        match g.agents.get(&rec.id) {
            Some(cur) if cur.epoch == rec.epoch && !g.deleted.contains(&rec.id) => {}
            _ => return Err(StoreError::Fenced),
        }
        if g.agents.values().any(|a| {
            a.id != rec.id
                && a.org_id == rec.org_id
                && a.spec.name == rec.spec.name
                && !g.deleted.contains(&a.id)
        }) {
            return Err(StoreError::Conflict("name".into()));
        }
        if let Some(r) = w.usage.map(|c| c.report_id) {
            g.reports.insert((rec.id.clone(), r.to_string()));
        }
        g.agents.insert(rec.id.clone(), rec.clone());
        for t in w.transitions {
            g.history.push((rec.id.clone(), t.clone()));
        }
        if let Some(e) = w.event {
            g.events.push((rec.id.clone(), e.clone()));
        }
        if let Some(a) = w.audit {
            g.audit.push(a.clone());
        }
        Ok(WriteOutcome::Written)
    }

    async fn delete_agent(
        &self,
        rec: &AgentRecord,
        _at: i64,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        self.check_down()?;
        let mut g = self.lock();
        match g.agents.get(&rec.id) {
            Some(cur) if cur.epoch == rec.epoch && !g.deleted.contains(&rec.id) => {}
            _ => return Err(StoreError::Fenced),
        }
        g.deleted.insert(rec.id.clone());
        g.audit.push(audit.clone());
        Ok(())
    }

    async fn claim_agent(
        &self,
        _org: &OrgId,
        id: &AgentId,
    ) -> Result<Option<AgentRecord>, StoreError> {
        let mut g = self.lock();
        if g.deleted.contains(id) {
            return Ok(None);
        }
        Ok(g.agents.get_mut(id).map(|a| {
            a.epoch += 1;
            a.clone()
        }))
    }

    async fn claim_org(&self, org: &OrgId) -> Result<(), StoreError> {
        let mut g = self.lock();
        for a in g.agents.values_mut().filter(|a| &a.org_id == org) {
            a.epoch += 1;
        }
        Ok(())
    }

    async fn org_page(
        &self,
        org: &OrgId,
        after: Option<&AgentId>,
        limit: usize,
    ) -> Result<Vec<AgentRecord>, StoreError> {
        let g = self.lock();
        let mut page: Vec<AgentRecord> = g
            .agents
            .values()
            .filter(|a| {
                &a.org_id == org && !g.deleted.contains(&a.id) && after.is_none_or(|x| &a.id > x)
            })
            .cloned()
            .collect();
        page.sort_by(|a, b| a.id.cmp(&b.id));
        page.truncate(limit);
        Ok(page)
    }

    async fn list_orgs(&self) -> Result<Vec<OrgId>, StoreError> {
        Ok(self.lock().orgs.clone())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.check_down()
    }
}

/// A clock tests can move (e.g. across a month boundary).
pub struct FakeClock(pub AtomicI64);

impl Clock for FakeClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

pub struct PlainSecrets;

impl Secrets for PlainSecrets {
    fn generate_token(&self) -> String {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        format!("t{}", N.fetch_add(1, Ordering::Relaxed))
    }
    fn hash_token(&self, token: &str) -> String {
        format!("h:{token}")
    }
}

struct FakeRuntime {
    alive: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

/// A deployer whose "runtime" is a task that says hello and sends heartbeats
/// through the public client, like `cadre runtime` does over WebSocket.
#[derive(Default)]
pub struct FakeDeployer {
    pub cadre: OnceLock<Cadre>,
    pub fail_start: AtomicBool,
    pub fail_provision: AtomicBool,
    tokens: Mutex<HashMap<String, (OrgId, AgentId, String, u64)>>,
    runtimes: Mutex<HashMap<String, FakeRuntime>>,
    pub starts: std::sync::atomic::AtomicU32,
    /// Status checks fail (the deployer cannot tell how the runtime is).
    pub fail_status: AtomicBool,
    /// Status checks made.
    pub status_checks: std::sync::atomic::AtomicU32,
}

impl FakeDeployer {
    /// Simulates SIGKILL of the runtime: it stops heartbeating and status reports it dead.
    pub fn crash(&self, deployment: &str) {
        if let Some(rt) = self
            .runtimes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(deployment)
        {
            rt.alive.store(false, Ordering::SeqCst);
            rt.task.abort();
        }
    }
    pub fn token_of(&self, deployment: &str) -> Option<String> {
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(deployment)
            .map(|t| t.2.clone())
    }
}

#[async_trait]
impl Deployer for FakeDeployer {
    async fn provision(&self, req: &DeployRequest) -> Result<String, DeployError> {
        if self.fail_provision.load(Ordering::SeqCst) {
            return Err(DeployError {
                target: "fake",
                message: "provision refused".into(),
            });
        }
        Ok(req.agent_id.to_string())
    }
    async fn deploy(&self, dep: &str, req: &DeployRequest) -> Result<(), DeployError> {
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                dep.to_string(),
                (
                    req.org_id.clone(),
                    req.agent_id.clone(),
                    req.runtime_token.clone(),
                    req.heartbeat_interval_ms,
                ),
            );
        Ok(())
    }
    async fn start(&self, dep: &str) -> Result<(), DeployError> {
        self.starts.fetch_add(1, Ordering::SeqCst);
        if self.fail_start.load(Ordering::SeqCst) {
            return Err(DeployError {
                target: "fake",
                message: "start refused".into(),
            });
        }
        let mut runtimes = self.runtimes.lock().unwrap_or_else(|e| e.into_inner());
        if runtimes.contains_key(dep) {
            return Ok(());
        }
        let Some((org, agent, token, hb)) = self
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(dep)
            .cloned()
        else {
            return Err(DeployError {
                target: "fake",
                message: "not deployed".into(),
            });
        };
        let Some(cadre) = self.cadre.get().cloned() else {
            return Err(DeployError {
                target: "fake",
                message: "no control plane".into(),
            });
        };
        let alive = Arc::new(AtomicBool::new(true));
        let task = tokio::spawn(async move {
            let mut conn = None;
            loop {
                match conn {
                    None => {
                        if let Ok(ack) = cadre.runtime_hello(&org, &agent, &token).await {
                            if !ack.should_run {
                                return;
                            }
                            conn = Some(ack.conn);
                        }
                    }
                    Some(c) => match cadre.runtime_heartbeat(&org, &agent, c).await {
                        Ok(true) => {}
                        Ok(false) => return,
                        Err(_) => conn = None,
                    },
                }
                tokio::time::sleep(Duration::from_millis(hb.max(5))).await;
            }
        });
        runtimes.insert(dep.to_string(), FakeRuntime { alive, task });
        Ok(())
    }
    async fn stop(&self, dep: &str) -> Result<(), DeployError> {
        self.crash(dep);
        Ok(())
    }
    async fn destroy(&self, dep: &str) -> Result<(), DeployError> {
        self.crash(dep);
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(dep);
        Ok(())
    }
    async fn status(&self, dep: &str) -> Result<DeploymentStatus, DeployError> {
        self.status_checks.fetch_add(1, Ordering::SeqCst);
        if self.fail_status.load(Ordering::SeqCst) {
            return Err(DeployError {
                target: "fake",
                message: "cannot reach the host".into(),
            });
        }
        let runtimes = self.runtimes.lock().unwrap_or_else(|e| e.into_inner());
        Ok(match runtimes.get(dep) {
            Some(rt) if rt.alive.load(Ordering::SeqCst) && !rt.task.is_finished() => {
                DeploymentStatus::Running
            }
            _ => DeploymentStatus::Stopped("fake runtime not running".into()),
        })
    }
    async fn logs(&self, _dep: &str, _lines: usize) -> Result<String, DeployError> {
        Ok(String::new())
    }
}

pub fn fast_settings() -> Settings {
    Settings {
        // Wide enough that a loaded CI machine does not miss heartbeats
        // (stale after 3 × 25 ms, recovery after 3 failed probes).
        health_interval: Duration::from_millis(50),
        failure_threshold: 3,
        start_timeout: Duration::from_secs(3),
        recovery_backoff: Backoff {
            base: Duration::from_millis(10),
            max: Duration::from_millis(40),
        },
        recovery_reset_after: Duration::from_secs(60),
        reservation_ttl: Duration::from_secs(60),
        max_open_tasks: 100,
        max_recoveries: 2,
        supervisor_max_restarts: 3,
        supervisor_window: Duration::from_secs(60),
        supervisor_backoff: Backoff {
            base: Duration::from_millis(1),
            max: Duration::from_millis(5),
        },
        call_timeout: Duration::from_secs(3),
        mailbox_capacity: 64,
        mailbox_wait: Duration::from_secs(2),
    }
}

pub struct Harness {
    pub cadre: Cadre,
    pub store: Arc<MemStore>,
    pub deployer: Arc<FakeDeployer>,
    pub clock: Arc<FakeClock>,
    pub org: OrgId,
}

/// 2026-11-15T00:00:00Z
pub const MID_NOVEMBER_MS: i64 = 1_794_700_800_000;

pub async fn start(settings: Settings) -> Harness {
    let store = Arc::new(MemStore::default());
    let org = OrgId("org-1".into());
    store.add_org(&org);
    start_on(store, org, settings).await
}

pub async fn start_on(store: Arc<MemStore>, org: OrgId, settings: Settings) -> Harness {
    let deployer = Arc::new(FakeDeployer::default());
    let clock = Arc::new(FakeClock(AtomicI64::new(MID_NOVEMBER_MS)));
    let (events, _) = tokio::sync::broadcast::channel(1024);
    let ctx = Arc::new(Ctx {
        store: store.clone(),
        deployer: deployer.clone(),
        clock: clock.clone(),
        secrets: Arc::new(PlainSecrets),
        pricing: Arc::new(Pricing {
            default: ModelPrice {
                input_per_mtok: 1.0,
                output_per_mtok: 1.0,
            },
            models: HashMap::new(),
        }),
        settings,
        events,
        registry: Default::default(),
        tenancy: Default::default(),
        gov: test_governance(),
        gov_store: Arc::new(MemGov::default()),
        tasks: Arc::new(MemTasks::default()),
    });
    let cadre = Cadre::start(ctx).await.expect("tree starts");
    let _ = deployer.cadre.set(cadre.clone());
    wait_until("tenant up", Duration::from_secs(5), || {
        cadre.ctx().registry.tenant(&org).is_some()
    })
    .await;
    Harness {
        cadre,
        store,
        deployer,
        clock,
        org,
    }
}

pub fn spec(name: &str) -> AgentSpec {
    AgentSpec {
        name: name.into(),
        role: Some("support".into()),
        model: Some("m".into()),
        target: DeployTarget::Local,
        health: HealthOverrides::default(),
        budget: BudgetLimits::default(),
        profile: None,
        runtime: Default::default(),
        job: Default::default(),
    }
}

pub fn user() -> Who {
    Who::user("u1")
}

/// Polls `cond` until it holds or `limit` passes (then panics with `what`).
pub async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

impl Harness {
    /// Waits until the agent's published state is `state`.
    pub async fn wait_state(
        &self,
        id: &AgentId,
        state: cadre_actors::lifecycle::State,
        limit: Duration,
    ) {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(s) = self.cadre.get_agent(&self.org, id).await {
                if s.view().state == state {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "agent in {} (reason {:?}), expected {state}",
                    s.view().state,
                    s.view().state_reason
                );
            } else {
                assert!(
                    Instant::now() < deadline,
                    "agent unreachable, expected {state}"
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Creates an agent (panics if refused).
    pub async fn create(
        &self,
        spec: AgentSpec,
    ) -> std::sync::Arc<cadre_actors::domain::AgentSnapshot> {
        self.cadre
            .create_agent(&self.org, spec, user())
            .await
            .expect("create")
    }

    /// An operator command as user `u1`.
    pub async fn cmd(
        &self,
        id: &AgentId,
        cmd: cadre_actors::lifecycle::Command,
    ) -> cadre_actors::Result<std::sync::Arc<cadre_actors::domain::AgentSnapshot>> {
        self.cadre.command(&self.org, id, cmd, user()).await
    }

    pub fn actor_id(&self, id: &AgentId) -> Option<ractor::ActorId> {
        self.cadre
            .ctx()
            .registry
            .agent(&self.org, id)
            .map(|h| h.actor.get_id())
    }
}

/// In-memory `GovStore`: documents, approvals with compare-and-swap, grants, switches.
#[derive(Default)]
pub struct MemGov {
    inner: Mutex<GovInner>,
}

#[derive(Default)]
struct GovInner {
    docs: Vec<(OrgId, cadre_actors::ports::GovDoc)>,
    approvals: HashMap<String, cadre_actors::approval::ApprovalRecord>,
    grants: Vec<(cadre_actors::governance::Grant, bool)>,
    halts: Vec<cadre_actors::governance::HaltScope>,
}

#[async_trait]
impl cadre_actors::ports::GovStore for MemGov {
    async fn docs(&self, org: &OrgId) -> Result<Vec<cadre_actors::ports::GovDoc>, StoreError> {
        let g = self.inner.lock().expect("lock");
        Ok(g.docs
            .iter()
            .filter(|(o, _)| o == org)
            .map(|(_, d)| d.clone())
            .collect())
    }
    async fn put_doc(
        &self,
        org: &OrgId,
        kind: &str,
        name: &str,
        body: Option<&str>,
        _audit: &AuditEntry,
    ) -> Result<bool, StoreError> {
        let mut g = self.inner.lock().expect("lock");
        let before = g.docs.len();
        g.docs
            .retain(|(o, d)| !(o == org && d.kind == kind && d.name == name));
        let existed = g.docs.len() != before;
        if let Some(b) = body {
            g.docs.push((
                org.clone(),
                cadre_actors::ports::GovDoc {
                    kind: kind.into(),
                    name: name.into(),
                    body: b.into(),
                },
            ));
        }
        Ok(existed)
    }
    async fn insert_approval(
        &self,
        a: &cadre_actors::approval::ApprovalRecord,
        _audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let mut g = self.inner.lock().expect("lock");
        if g.approvals
            .values()
            .any(|x| x.agent_id == a.agent_id && x.call_id == a.call_id)
        {
            return Err(StoreError::Conflict("call".into()));
        }
        g.approvals.insert(a.id.clone(), a.clone());
        Ok(())
    }
    async fn approval_by_call(
        &self,
        agent: &AgentId,
        call_id: &str,
    ) -> Result<Option<cadre_actors::approval::ApprovalRecord>, StoreError> {
        let g = self.inner.lock().expect("lock");
        Ok(g.approvals
            .values()
            .find(|x| &x.agent_id == agent && x.call_id == call_id)
            .cloned())
    }
    async fn approval(
        &self,
        org: &OrgId,
        id: &str,
    ) -> Result<Option<cadre_actors::approval::ApprovalRecord>, StoreError> {
        let g = self.inner.lock().expect("lock");
        Ok(g.approvals.get(id).filter(|a| &a.org_id == org).cloned())
    }
    async fn pending_approvals(
        &self,
        org: &OrgId,
    ) -> Result<Vec<cadre_actors::approval::ApprovalRecord>, StoreError> {
        let g = self.inner.lock().expect("lock");
        Ok(g.approvals
            .values()
            .filter(|a| {
                &a.org_id == org && a.state == cadre_actors::approval::ApprovalState::Pending
            })
            .cloned()
            .collect())
    }
    async fn add_vote(
        &self,
        a: &cadre_actors::approval::ApprovalRecord,
        vote: &cadre_actors::approval::Vote,
        _audit: &AuditEntry,
    ) -> Result<cadre_actors::ports::Cas, StoreError> {
        let mut g = self.inner.lock().expect("lock");
        match g.approvals.get_mut(&a.id) {
            Some(x)
                if x.state == cadre_actors::approval::ApprovalState::Pending
                    && x.level == a.level =>
            {
                x.votes.push(vote.clone());
                Ok(cadre_actors::ports::Cas::Applied)
            }
            _ => Ok(cadre_actors::ports::Cas::Lost),
        }
    }
    async fn settle_approval(
        &self,
        a: &cadre_actors::approval::ApprovalRecord,
        from_level: u32,
        _vote: Option<&cadre_actors::approval::Vote>,
        grant: Option<&cadre_actors::governance::Grant>,
        _audit: &AuditEntry,
    ) -> Result<cadre_actors::ports::Cas, StoreError> {
        let mut g = self.inner.lock().expect("lock");
        match g.approvals.get_mut(&a.id) {
            Some(x)
                if x.state == cadre_actors::approval::ApprovalState::Pending
                    && x.level == from_level =>
            {
                *x = a.clone();
                if let Some(gr) = grant {
                    g.grants.push((gr.clone(), false));
                }
                Ok(cadre_actors::ports::Cas::Applied)
            }
            _ => Ok(cadre_actors::ports::Cas::Lost),
        }
    }
    async fn live_grants(
        &self,
        now_ms: i64,
    ) -> Result<Vec<cadre_actors::governance::Grant>, StoreError> {
        let g = self.inner.lock().expect("lock");
        Ok(g.grants
            .iter()
            .filter(|(gr, revoked)| !revoked && gr.expires_at > now_ms)
            .map(|(gr, _)| gr.clone())
            .collect())
    }
    async fn revoke_grant(
        &self,
        org: &OrgId,
        id: &str,
        _by: &str,
        _at: i64,
        _audit: &AuditEntry,
    ) -> Result<Option<cadre_actors::governance::Grant>, StoreError> {
        let mut g = self.inner.lock().expect("lock");
        for (gr, revoked) in g.grants.iter_mut() {
            if gr.id == id && &gr.org_id == org && !*revoked {
                *revoked = true;
                return Ok(Some(gr.clone()));
            }
        }
        Ok(None)
    }
    async fn set_halt(
        &self,
        scope: &cadre_actors::governance::HaltScope,
        on: Option<&str>,
        _by: &str,
        _at: i64,
        _audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let mut g = self.inner.lock().expect("lock");
        g.halts.retain(|h| h != scope);
        if on.is_some() {
            g.halts.push(scope.clone());
        }
        Ok(())
    }
    async fn halts(&self) -> Result<Vec<cadre_actors::governance::HaltScope>, StoreError> {
        Ok(self.inner.lock().expect("lock").halts.clone())
    }
}

/// A governance registry over a small catalog (tests build their own profiles).
pub fn test_governance() -> Arc<cadre_actors::governance::Governance> {
    use cadre_actors::governance::*;
    let catalog = CatalogFile {
        skills: vec![SkillDef {
            id: "core".into(),
            description: String::new(),
        }],
        tools: vec![ToolDef {
            id: "echo".into(),
            skill: "core".into(),
            description: String::new(),
            risk: Risk::Low,
            side_effects: vec![],
        }],
        profiles: [(
            "open".to_string(),
            ProfileDef {
                allow_skills: vec!["*".into()],
                ..Default::default()
            },
        )]
        .into(),
    };
    let policy = PolicyDef {
        description: String::new(),
        tools: vec![],
        skills: vec![],
        min_risk: None,
        side_effects: vec![],
        min_cost_usd: None,
        levels: vec![Level {
            approvers: Approvers {
                roles: vec!["admin".into()],
                users: vec![],
                manager: None,
            },
            required: 1,
            timeout_seconds: 60,
            on_timeout: OnTimeout::Deny,
        }],
    };
    Arc::new(Governance::new(catalog, policy, "open".into()))
}

/// In-memory `TaskStore`.
#[derive(Default)]
pub struct MemTasks {
    tasks: std::sync::Mutex<std::collections::BTreeMap<String, cadre_actors::task::TaskRecord>>,
    steps: std::sync::Mutex<std::collections::BTreeSet<(String, u32)>>,
}

#[async_trait::async_trait]
impl cadre_actors::task::TaskStore for MemTasks {
    async fn insert_task(
        &self,
        task: &cadre_actors::task::TaskRecord,
        _audit: &cadre_actors::audit::AuditEntry,
    ) -> Result<(), StoreError> {
        self.update_task(task, None).await
    }
    async fn update_task(
        &self,
        task: &cadre_actors::task::TaskRecord,
        _audit: Option<&cadre_actors::audit::AuditEntry>,
    ) -> Result<(), StoreError> {
        self.tasks
            .lock()
            .expect("lock")
            .insert(task.id.clone(), task.clone());
        Ok(())
    }
    async fn add_step(&self, step: &cadre_actors::task::TaskStep) -> Result<bool, StoreError> {
        Ok(self
            .steps
            .lock()
            .expect("lock")
            .insert((step.task_id.clone(), step.seq)))
    }
    async fn open_tasks(
        &self,
        org: &str,
        agent: &str,
    ) -> Result<Vec<cadre_actors::task::TaskRecord>, StoreError> {
        Ok(self
            .tasks
            .lock()
            .expect("lock")
            .values()
            .filter(|t| t.org_id == org && t.agent_id == agent && !t.state.is_final())
            .cloned()
            .collect())
    }
}
