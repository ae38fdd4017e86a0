//! The system prompt, composed in one place.
//!
//! What a model is told about its work comes from the control plane, which
//! knows the organization, the agent's definition, its permissions and its
//! place in the org chart; the runtime only sends it. The same function
//! answers `GET /api/v1/agents/{id}/prompt` and builds every task's and
//! every conversation's prompt, so what an operator audits is what the
//! model is sent.
//!
//! Sections, in this order (a section with nothing to say is left out):
//! the organization's instructions, the agent's role, instructions and
//! persona, its skills, the knowledge bases it may search, its manager and
//! reports, the current date and time in the organization's time zone, and
//! the rules of a task (or of a conversation).

use cadre_actors::Cadre;
use cadre_actors::domain::{AgentId, AgentView, Manager, OrgId};
use serde::Serialize;

/// What the prompt is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// A task (instruction, tools, `task.finish`).
    Task,
    /// A conversation with a person.
    Chat,
}

/// What the model is sent besides the conversation itself.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Prompt {
    /// The system prompt.
    pub system: String,
    /// The tools offered (catalog ids), in catalog order.
    pub tools: Vec<String>,
}

/// Everything the prompt is made of (gathered by [`gather`]).
#[derive(Clone, Debug, Default)]
pub struct Parts {
    /// The organization's name.
    pub org_name: String,
    /// Its instructions.
    pub org_instructions: Option<String>,
    /// The agent's name.
    pub name: String,
    /// Its role.
    pub role: Option<String>,
    /// Its instructions.
    pub instructions: Option<String>,
    /// Its persona.
    pub persona: Option<String>,
    /// Skills whose tools it is offered: (id, description).
    pub skills: Vec<(String, String)>,
    /// The tools offered (catalog ids).
    pub tools: Vec<String>,
    /// Knowledge bases it may search: (name, description).
    pub bases: Vec<(String, String)>,
    /// Its manager, described.
    pub manager: Option<String>,
    /// Its direct reports, described.
    pub reports: Vec<String>,
    /// Now, in the organization's time zone, written out.
    pub now: String,
}

const TASK_RULES: &str = "You are working on one task. Use your tools to do it; every tool call is \
checked against your permissions, and some wait for a person's approval (you are told the \
outcome). A refused call is not retried in another form to get around the refusal. When the task \
is done, call task__finish with the result.";

const CHAT_RULES: &str = "You are in a conversation with a person of your organization. Answer \
them directly and concisely. You may use your tools where the conversation needs it; every tool \
call is checked against your permissions, and some wait for a person's approval.";

/// The system prompt of `parts`.
pub fn compose(parts: &Parts, mode: Mode) -> String {
    let mut out = String::new();
    let mut section = |title: &str, body: &str| {
        if !out.is_empty() {
            out.push_str("\n\n");
        }
        out.push_str("# ");
        out.push_str(title);
        out.push('\n');
        out.push_str(body.trim_end());
    };
    if let Some(i) = &parts.org_instructions {
        section(
            &format!("Your organization: {}", parts.org_name),
            &format!(
                "Every agent of {} knows and obeys this:\n\n{i}",
                parts.org_name
            ),
        );
    }
    let mut job = format!("You are {}", parts.name);
    match &parts.role {
        Some(r) => job.push_str(&format!(", {r}, an agent of {}.", parts.org_name)),
        None => job.push_str(&format!(", an agent of {}.", parts.org_name)),
    }
    if let Some(i) = &parts.instructions {
        job.push_str("\n\n");
        job.push_str(i);
    }
    section("Your job", &job);
    if let Some(p) = &parts.persona {
        section("How you communicate", p);
    }
    if !parts.skills.is_empty() {
        section("Your skills", &bullets(&parts.skills));
    }
    // A tool is named only when the model is offered it.
    let offered = |id: &str| parts.tools.iter().any(|t| t == id);
    if !parts.bases.is_empty() {
        let title = match offered("knowledge.search") {
            true => "Knowledge bases you may search (knowledge__search)",
            false => "Knowledge bases of yours (your profile offers no search tool)",
        };
        section(title, &bullets(&parts.bases));
    }
    if parts.manager.is_some() || !parts.reports.is_empty() {
        let mut body = match &parts.manager {
            Some(m) => format!("You report to {m}."),
            None => "You report to no one in the organization chart.".to_string(),
        };
        if !parts.reports.is_empty() {
            let how = match offered("agent.message") {
                true => " (you may give them work with agent__message)",
                false => "",
            };
            body.push_str(&format!(
                "\nYour reports{how}: {}.",
                parts.reports.join("; ")
            ));
        }
        section("Your place in the organization", &body);
    }
    section("Now", &format!("It is {}.", parts.now));
    section(
        "Rules",
        match mode {
            Mode::Task => TASK_RULES,
            Mode::Chat => CHAT_RULES,
        },
    );
    out
}

/// `- name: description` lines (`- name` without one).
fn bullets(items: &[(String, String)]) -> String {
    let lines: Vec<String> = items
        .iter()
        .map(|(n, d)| match d.is_empty() {
            true => format!("- {n}"),
            false => format!("- {n}: {d}"),
        })
        .collect();
    lines.join("\n")
}

/// `now_ms` written out in time zone `tz` (UTC when unknown).
pub fn written_time(now_ms: i64, tz: &str) -> String {
    let zone = jiff::tz::TimeZone::get(tz).unwrap_or(jiff::tz::TimeZone::UTC);
    match jiff::Timestamp::from_millisecond(now_ms) {
        Ok(t) => t
            .to_zoned(zone)
            .strftime(&format!("%A %Y-%m-%d %H:%M in {tz} (UTC%:z)"))
            .to_string(),
        Err(_) => String::new(),
    }
}

fn describe_agent(v: &AgentView) -> String {
    match &v.role {
        Some(r) => format!("the agent {} ({r})", v.name),
        None => format!("the agent {}", v.name),
    }
}

/// Reads everything the prompt of `agent` is made of, as of `now_ms`.
pub async fn gather(
    cadre: &Cadre,
    dir: &crate::identity::Directory,
    store: &crate::store::Db,
    org: &OrgId,
    agent: &AgentId,
    now_ms: i64,
    version: Option<u32>,
) -> Result<Parts, cadre_actors::Error> {
    let mut view = cadre.get_agent(org, agent).await?.view();
    // A task of an older version (a replay of an earlier run) is told what
    // the agent was then.
    if let Some(n) = version {
        let found = store
            .tables()
            .versions_page(Some(org.as_str()), agent.as_str(), i64::from(n) + 1, 1)
            .await
            .map_err(|e| cadre_actors::Error::Unavailable(e.to_string()))?;
        if let Some(v) = found.into_iter().find(|v| v.n == n) {
            let d = &v.definition;
            let text = |k: &str| {
                d.get(k)
                    .and_then(serde_json::Value::as_str)
                    .map(str::to_string)
            };
            view.role = text("role");
            view.instructions = text("instructions");
            view.persona = text("persona");
            view.profile = text("profile");
            if let Ok(k) = serde_json::from_value(d["knowledge"].clone()) {
                view.knowledge = k;
            }
        }
    }
    let org_row = dir.org(org).map(|e| e.row);
    let gov = cadre.governance().org(org);
    let profile_name = view
        .profile
        .clone()
        .unwrap_or_else(|| cadre.governance().default_profile().to_string());
    let mut tools = Vec::new();
    let mut skills: Vec<(String, String)> = Vec::new();
    // What a runtime can run: its built-in tools and the MCP tools it
    // discovered (a catalog entry no runtime implements is not offered).
    let builtin: std::collections::HashSet<String> = crate::agent_loop::builtin_tools()
        .into_iter()
        .map(|t| t.tool)
        .collect();
    if let Some(profile) = gov.profiles.get(&profile_name) {
        for t in gov
            .offered(profile)
            .filter(|t| builtin.contains(&t.id) || t.id.starts_with("mcp."))
        {
            tools.push(t.id.clone());
            if !skills.iter().any(|(s, _)| *s == t.skill) {
                let d = gov
                    .skills
                    .iter()
                    .find(|s| s.id == t.skill)
                    .map(|s| s.description.clone())
                    .unwrap_or_default();
                skills.push((t.skill.clone(), d));
            }
        }
    }
    let mut bases = Vec::new();
    for id in &view.knowledge.bases {
        if let Ok(Some(kb)) = store.tables().kb(org.as_str(), id).await {
            bases.push((kb.name, kb.description));
        }
    }
    let manager = match &view.reports_to {
        Some(Manager::Agent(id)) => match cadre.get_agent(org, &AgentId(id.clone())).await {
            Ok(m) => Some(describe_agent(&m.view())),
            Err(_) => None,
        },
        Some(Manager::User(id)) => match store.tables().user(org.as_str(), id).await {
            Ok(Some(u)) => Some(format!("{} <{}>, a person", u.name, u.email)),
            _ => None,
        },
        None => None,
    };
    let me = Some(Manager::Agent(agent.to_string()));
    let reports = cadre
        .all_agents(org)
        .await?
        .iter()
        .filter(|s| s.reports_to == me)
        .map(|s| describe_agent(&s.view()))
        .collect();
    let tz = org_row
        .as_ref()
        .map(|o| o.timezone.clone())
        .unwrap_or_else(|| "UTC".into());
    Ok(Parts {
        org_name: org_row.as_ref().map(|o| o.name.clone()).unwrap_or_default(),
        org_instructions: org_row.and_then(|o| o.instructions),
        name: view.name,
        role: view.role,
        instructions: view.instructions,
        persona: view.persona,
        skills,
        tools,
        bases,
        manager,
        reports,
        now: written_time(now_ms, &tz),
    })
}

/// The prompt `agent` gets now for `mode`, as its definition's `version`
/// was (`None`: as it is).
pub async fn prompt_for(
    cadre: &Cadre,
    dir: &crate::identity::Directory,
    store: &crate::store::Db,
    (org, agent): (&OrgId, &AgentId),
    mode: Mode,
    version: Option<u32>,
) -> Result<Prompt, cadre_actors::Error> {
    use cadre_actors::ports::Clock;
    let now = cadre_actors::ports::SystemClock.now_ms();
    let parts = gather(cadre, dir, store, org, agent, now, version).await?;
    Ok(Prompt {
        system: compose(&parts, mode),
        tools: parts.tools,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts() -> Parts {
        Parts {
            org_name: "Acme".into(),
            org_instructions: Some("Never promise refunds.".into()),
            name: "ada".into(),
            role: Some("support lead".into()),
            instructions: Some("Answer tickets about billing.".into()),
            persona: Some("Warm, in German.".into()),
            skills: vec![("files".into(), "Workspace files.".into())],
            tools: vec!["files.read".into()],
            bases: vec![("Handbook".into(), String::new())],
            manager: Some("Grace <grace@acme.test>, a person".into()),
            reports: vec!["the agent bob (triage)".into()],
            now: written_time(1_796_688_000_000, "Europe/Berlin"),
        }
    }

    #[test]
    fn sections_come_in_the_documented_order() {
        let p = compose(&parts(), Mode::Task);
        let at = |needle: &str| {
            p.find(needle)
                .unwrap_or_else(|| panic!("{needle:?} missing from:\n{p}"))
        };
        let order = [
            at("Never promise refunds."),
            at("You are ada, support lead, an agent of Acme."),
            at("Answer tickets about billing."),
            at("Warm, in German."),
            at("- files: Workspace files."),
            at("- Handbook"),
            at("You report to Grace <grace@acme.test>, a person."),
            at("the agent bob (triage)"),
            at("It is "),
            at("call task__finish"),
        ];
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{p}");
    }

    #[test]
    fn a_tool_is_named_only_when_it_is_offered() {
        let mut p = parts();
        let without = compose(&p, Mode::Task);
        assert!(!without.contains("agent__message"), "{without}");
        assert!(!without.contains("knowledge__search"), "{without}");
        assert!(
            without.contains("Your reports: the agent bob (triage)."),
            "{without}"
        );
        p.tools
            .extend(["agent.message".to_string(), "knowledge.search".to_string()]);
        let with = compose(&p, Mode::Task);
        assert!(
            with.contains("give them work with agent__message"),
            "{with}"
        );
        assert!(with.contains("search (knowledge__search)"), "{with}");
    }

    #[test]
    fn empty_sections_are_left_out_and_a_chat_has_its_own_rules() {
        let p = compose(
            &Parts {
                org_name: "Acme".into(),
                name: "ada".into(),
                now: "now".into(),
                ..Parts::default()
            },
            Mode::Chat,
        );
        assert!(!p.contains("# Your organization"), "{p}");
        assert!(!p.contains("# How you communicate"), "{p}");
        assert!(!p.contains("# Your skills"), "{p}");
        assert!(!p.contains("task__finish"), "{p}");
        assert!(p.contains("conversation with a person"), "{p}");
    }

    #[test]
    fn the_time_is_written_in_the_organizations_zone() {
        // 2026-12-08T00:00:00Z is 01:00 in Berlin (UTC+1 in winter).
        let t = written_time(1_796_688_000_000, "Europe/Berlin");
        assert_eq!(t, "Tuesday 2026-12-08 01:00 in Europe/Berlin (UTC+01:00)");
        let t = written_time(1_796_688_000_000, "UTC");
        assert_eq!(t, "Tuesday 2026-12-08 00:00 in UTC (UTC+00:00)");
    }
}
