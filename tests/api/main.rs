//! API tests: one binary, a real server per test on a random port with its
//! own temp SQLite file (see `common::spawn_app`).

mod activity;
mod budget;
mod chaos;
mod cli;
mod cloud;
mod common;
mod dashboard;
mod databases;
mod docker;
mod docs;
mod employees;
mod errors;
mod first_contact;
mod gauges;
mod governance;
mod identity;
mod knowledge;
mod lifecycle;
mod metrics;
mod schedules;
mod served;
mod ssh;
#[path = "../support/mod.rs"]
mod support;
mod tasks;
mod tools;
