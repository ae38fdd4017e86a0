//! Snapshots of the in-process vector graphs in the data dir
//! (`knowledge/vectors/`). A start reads the graphs back and does not
//! have to build them again from every stored embedding, which is the
//! slow part of a start with many vectors (see BENCHMARKS.md).
//!
//! Each organization has three files:
//! - `<key>-<stamp>.hnsw.graph` and `<key>-<stamp>.hnsw.data`: hnsw_rs's
//!   own dump of the graph.
//! - `<key>.json`: the manifest. It names the current dump and holds the
//!   entries by data id, the tombstones, and the SHA-256 of both dump files.
//!
//! A snapshot is written in full beside the previous one and synced. It
//! becomes current when its manifest is renamed over the old one, so a
//! crash at any point leaves either the old snapshot or the new one, never
//! a mix. hnsw_rs's reader `assert!`s on what it reads, so a dump is only
//! read when both digests match its manifest, and then inside
//! `catch_unwind`. A damaged snapshot is refused and its graph is built
//! from the rows; the server does not crash on it.
//!
//! A snapshot is never the record: `kb_vectors` is. The start compares the
//! two (see [`super::vector::Vectors::reconcile`]).

use super::vector::{Entry, Space, UnitCosine};
use hnsw_rs::api::AnnT;
use hnsw_rs::hnsw::Hnsw;
use hnsw_rs::hnswio::HnswIo;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::atomic::AtomicBool;

/// Bumped when the manifest or the dump changes meaning; other formats
/// are refused (and rebuilt from the rows).
const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Manifest<'a> {
    format: u32,
    org: String,
    basename: String,
    dims: usize,
    points: usize,
    graph_sha256: String,
    data_sha256: String,
    entries: Cow<'a, [Entry]>,
    dead: Vec<usize>,
}

/// The file name stem of an organization's snapshot (ids are not trusted
/// as file names).
fn key(org: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, org.as_bytes());
    super::hex(&d.as_ref()[..16])
}

fn digest(path: &Path) -> Result<String, String> {
    let mut f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(super::hex(ctx.finish().as_ref()))
}

fn dump_files(dir: &Path, basename: &str) -> [std::path::PathBuf; 2] {
    [
        dir.join(format!("{basename}.hnsw.graph")),
        dir.join(format!("{basename}.hnsw.data")),
    ]
}

fn io_err(what: &str) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("vector snapshot: {what}: {e}")
}

/// Writes `org`'s snapshot of `space` and makes it current (or removes
/// the snapshot when the graph holds no live entry).
pub(super) fn save(dir: &Path, org: &str, space: &Space) -> Result<(), String> {
    let key = key(org);
    fs::create_dir_all(dir).map_err(io_err("create the directory"))?;
    if space.by_id.is_empty() {
        return remove_files(dir, |name| name.starts_with(&key));
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let wanted = format!("{key}-{stamp:x}");
    // hnsw_rs panics when it cannot create its files (a full disk, say).
    let basename = catch_unwind(AssertUnwindSafe(|| space.graph.file_dump(dir, &wanted)))
        .map_err(|_| "vector snapshot: the graph dump panicked".to_string())?
        .map_err(|e| format!("vector snapshot: graph dump: {e}"))?;
    let [graph_file, data_file] = dump_files(dir, &basename);
    for f in [&graph_file, &data_file] {
        File::open(f)
            .and_then(|f| f.sync_all())
            .map_err(io_err("sync the dump"))?;
    }
    let mut dead: Vec<usize> = space.dead.iter().copied().collect();
    dead.sort_unstable();
    let manifest = Manifest {
        format: FORMAT,
        org: org.to_string(),
        basename: basename.clone(),
        dims: space.dims,
        points: space.entries.len(),
        graph_sha256: digest(&graph_file)?,
        data_sha256: digest(&data_file)?,
        entries: Cow::Borrowed(&space.entries),
        dead,
    };
    let body = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
    let tmp = dir.join(format!("{key}.json.tmp"));
    {
        let mut f = File::create(&tmp).map_err(io_err("write the manifest"))?;
        f.write_all(&body).map_err(io_err("write the manifest"))?;
        f.sync_all().map_err(io_err("sync the manifest"))?;
    }
    fs::rename(&tmp, dir.join(format!("{key}.json"))).map_err(io_err("rename the manifest"))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync the directory"))?;
    // The previous dumps of this organization.
    let current = format!("{basename}.");
    remove_files(dir, |name| {
        name.starts_with(&format!("{key}-")) && !name.starts_with(&current)
    })
}

/// Reads every snapshot in `dir` whose files are whole: the graphs by
/// organization, and how many snapshots were refused. Refused snapshots
/// and files no manifest names (a crash mid-write) are deleted.
pub(super) fn load(dir: &Path) -> (Vec<(String, Space)>, u64) {
    let Ok(listing) = fs::read_dir(dir) else {
        return (Vec::new(), 0);
    };
    let names: Vec<String> = listing
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    let mut found = Vec::new();
    let mut rejected = 0;
    let mut current: HashSet<String> = HashSet::new();
    for name in &names {
        let Some(key) = name.strip_suffix(".json") else {
            continue;
        };
        match read(dir, key) {
            Ok((org, space, basename)) => {
                current.insert(format!("{basename}."));
                found.push((org, space));
            }
            Err(why) => {
                tracing::warn!(
                    file = %dir.join(name).display(),
                    %why,
                    "vector snapshot refused; its graph is built from the stored rows"
                );
                rejected += 1;
            }
        }
    }
    let kept = |name: &str| current.iter().any(|c| name.starts_with(c.as_str()));
    let used: HashSet<String> = found
        .iter()
        .map(|(org, _)| format!("{}.json", key(org)))
        .collect();
    if let Err(e) = remove_files(dir, |name| !kept(name) && !used.contains(name)) {
        tracing::warn!(%e, "vector snapshot: leftover files not removed");
    }
    (found, rejected)
}

fn read(dir: &Path, key: &str) -> Result<(String, Space, String), String> {
    let raw = fs::read(dir.join(format!("{key}.json"))).map_err(|e| e.to_string())?;
    let m: Manifest = serde_json::from_slice(&raw).map_err(|e| format!("manifest: {e}"))?;
    if m.format != FORMAT {
        return Err(format!("format {} (this build reads {FORMAT})", m.format));
    }
    if self::key(&m.org) != key {
        return Err("the manifest is of another organization".into());
    }
    // The basename becomes a path: only this organization's own names.
    let stamp = m
        .basename
        .strip_prefix(&format!("{key}-"))
        .ok_or("the manifest names another dump")?;
    if stamp.is_empty()
        || !stamp
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err("the manifest names another dump".into());
    }
    if m.dims == 0 || m.points != m.entries.len() || m.dead.iter().any(|&d| d >= m.points) {
        return Err("the manifest does not add up".into());
    }
    let [graph_file, data_file] = dump_files(dir, &m.basename);
    if digest(&graph_file)? != m.graph_sha256 || digest(&data_file)? != m.data_sha256 {
        return Err("a dump file does not match its digest".into());
    }
    let graph = catch_unwind(AssertUnwindSafe(|| load_graph(dir, &m.basename)))
        .map_err(|_| "the dump reader panicked".to_string())?
        .map_err(|e| format!("dump: {e}"))?;
    let points = graph.get_point_indexation();
    if points.get_nb_point() != m.points || points.get_data_dimension() != m.dims {
        return Err("the dump does not match its manifest".into());
    }
    let mut ids = HashSet::with_capacity(m.points);
    for p in points {
        let i = p.get_origin_id();
        if i >= m.points || !ids.insert(i) {
            return Err("the dump's data ids do not match its manifest".into());
        }
    }
    let entries = m.entries.into_owned();
    let mut dead: HashSet<usize> = m.dead.into_iter().collect();
    let mut by_id: HashMap<String, usize> = HashMap::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        if dead.contains(&i) {
            continue;
        }
        if let Some(old) = by_id.insert(e.id.clone(), i) {
            dead.insert(old);
        }
    }
    let space = Space {
        graph,
        dims: m.dims,
        entries,
        by_id,
        dead,
        changed: AtomicBool::new(false),
    };
    Ok((m.org, space, m.basename))
}

fn load_graph(dir: &Path, basename: &str) -> anyhow::Result<Hnsw<'static, f32, UnitCosine>> {
    // The loaded graph borrows its loader for as long as it lives; the
    // loader is a few bytes per organization per start, so it is leaked
    // to give the graph the `'static` the index holds.
    let loader: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new(dir, basename)));
    loader.load_hnsw::<f32, UnitCosine>()
}

/// Deletes every snapshot file (a rebuild from the rows).
pub(super) fn remove_all(dir: &Path) -> Result<(), String> {
    remove_files(dir, |_| true)
}

/// Deletes the snapshot files of `dir` whose names `pick` accepts.
fn remove_files(dir: &Path, pick: impl Fn(&str) -> bool) -> Result<(), String> {
    let listing = match fs::read_dir(dir) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("list")(e)),
    };
    for e in listing.flatten() {
        let Ok(name) = e.file_name().into_string() else {
            continue;
        };
        let ours = name.ends_with(".json")
            || name.ends_with(".json.tmp")
            || name.ends_with(".hnsw.graph")
            || name.ends_with(".hnsw.data");
        if ours && pick(&name) {
            fs::remove_file(e.path()).map_err(io_err("remove an old file"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::vector::Vectors;
    use super::super::vector::tests::e;
    use super::*;

    /// 200 entries of org `a` on a quarter circle, 3 of org `b`.
    fn filled(v: &Vectors) {
        let items = (0..200)
            .map(|i| {
                let t = i as f32 / 200.0;
                (e(&format!("a{i:03}"), "kb1"), vec![1.0 - t, t, 0.0])
            })
            .collect();
        v.add_many("a", items);
        for i in 0..3 {
            v.add(
                "b",
                e(&format!("b{i}"), "kb9"),
                vec![0.0, i as f32 * 0.3, 1.0],
            );
        }
    }

    fn nearest(v: &Vectors, org: &str, q: Vec<f32>) -> Vec<String> {
        v.search(org, q, 3, |_| true)
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .map(|l| {
                l.flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    fn rows(v: &[(&str, &[&str])]) -> HashMap<String, HashSet<String>> {
        v.iter()
            .map(|(org, ids)| (org.to_string(), ids.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn graphs_come_back_from_their_snapshots_and_agree_with_the_rows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let v = Vectors::persistent(dir.path().to_path_buf());
        filled(&v);
        v.remove(Some("a"), |e| e.id == "a000");
        let before = nearest(&v, "a", vec![1.0, 0.0, 0.0]);
        assert_eq!(before[0], "a001");
        assert_eq!(v.save().expect("save"), 2);
        // Nothing changed: nothing written again.
        assert_eq!(v.save().expect("save"), 0);
        // Two organizations: a manifest and two dump files each.
        assert_eq!(files(dir.path()).len(), 6, "{:?}", files(dir.path()));

        let back = Vectors::persistent(dir.path().to_path_buf());
        assert_eq!(back.load_snapshots(), (202, 0));
        assert_eq!(back.len(), 202);
        assert_eq!(nearest(&back, "a", vec![1.0, 0.0, 0.0]), before);
        assert_eq!(nearest(&back, "b", vec![0.0, 0.0, 1.0])[0].as_str(), "b0");

        // The rows are the record: a00 5's row is gone, b9's is new.
        let a_ids: Vec<String> = (1..200)
            .filter(|i| *i != 5)
            .map(|i| format!("a{i:03}"))
            .collect();
        let a_refs: Vec<&str> = a_ids.iter().map(String::as_str).collect();
        let (missing, removed) =
            back.reconcile(&rows(&[("a", &a_refs), ("b", &["b0", "b1", "b2", "b9"])]));
        assert_eq!((missing, removed), (vec!["b9".to_string()], 1));
        assert!(
            back.search("a", vec![1.0, 0.025, 0.0], 200, |_| true)
                .iter()
                .all(|(id, _)| id != "a005")
        );
        // A read-back graph takes new points and is written again.
        back.add("b", e("b9", "kb9"), vec![1.0, 0.0, 0.2]);
        assert_eq!(back.save().expect("save"), 2);
        let again = Vectors::persistent(dir.path().to_path_buf());
        assert_eq!(again.load_snapshots(), (202, 0));
        assert_eq!(nearest(&again, "b", vec![1.0, 0.0, 0.2])[0].as_str(), "b9");
        assert_eq!(files(dir.path()).len(), 6, "old dumps removed");

        // An organization with no rows left loses its graph, and its
        // snapshot goes at the next write.
        let (_, removed) = again.reconcile(&rows(&[("a", &a_refs)]));
        assert_eq!(removed, 4);
        assert_eq!(again.save().expect("save"), 1, "only b changed");
        assert_eq!(files(dir.path()).len(), 3, "{:?}", files(dir.path()));
        // A rebuild drops every snapshot.
        again.clear().expect("clear");
        assert!(files(dir.path()).is_empty());
    }

    #[test]
    fn damaged_or_half_written_snapshots_are_refused_without_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let v = Vectors::persistent(dir.path().to_path_buf());
        filled(&v);
        assert_eq!(v.save().expect("save"), 2);
        let graph_of = |org: &str| dir.path().join(format!("{}-", key(org)));
        let dump = |org: &str, ext: &str| {
            files(dir.path())
                .into_iter()
                .find(|n| {
                    n.starts_with(
                        &graph_of(org)
                            .file_name()
                            .map(|f| f.to_string_lossy().to_string())
                            .unwrap_or_default(),
                    ) && n.ends_with(ext)
                })
                .map(|n| dir.path().join(n))
                .expect("dump file")
        };
        // One flipped byte in a's graph; b's manifest cut short.
        let g = dump("a", ".hnsw.graph");
        let mut bytes = fs::read(&g).expect("read");
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        fs::write(&g, bytes).expect("write");
        let m = dir.path().join(format!("{}.json", key("b")));
        let text = fs::read(&m).expect("read");
        fs::write(&m, &text[..text.len() / 2]).expect("write");
        // A dump no manifest names (a crash before the rename), and a
        // manifest left half-renamed.
        fs::write(
            dir.path().join(format!("{}-dead.hnsw.data", key("a"))),
            b"x",
        )
        .expect("write");
        fs::write(dir.path().join(format!("{}.json.tmp", key("a"))), b"{").expect("write");

        let back = Vectors::persistent(dir.path().to_path_buf());
        assert_eq!(back.load_snapshots(), (0, 2));
        assert!(back.is_empty());
        assert!(files(dir.path()).is_empty(), "{:?}", files(dir.path()));

        // A manifest whose digests match but whose entries do not add up.
        filled(&v);
        v.remove(None, |e| e.id == "a150");
        assert_eq!(v.save().expect("save"), 2);
        let m = dir.path().join(format!("{}.json", key("a")));
        let mut manifest: serde_json::Value =
            serde_json::from_slice(&fs::read(&m).expect("read")).expect("json");
        manifest["entries"].as_array_mut().expect("entries").pop();
        fs::write(&m, manifest.to_string()).expect("write");
        // And b's manifest claims to be another organization's.
        let m = dir.path().join(format!("{}.json", key("b")));
        let mut manifest: serde_json::Value =
            serde_json::from_slice(&fs::read(&m).expect("read")).expect("json");
        manifest["org"] = "c".into();
        fs::write(&m, manifest.to_string()).expect("write");
        let back = Vectors::persistent(dir.path().to_path_buf());
        assert_eq!(back.load_snapshots(), (0, 2));

        // A dump damaged where hnsw_rs `assert!`s (the data file's magic),
        // with a digest that matches it: the reader's panic is caught.
        filled(&v);
        v.remove(None, |e| e.id == "a151");
        assert_eq!(v.save().expect("save"), 2);
        let d = dump("a", ".hnsw.data");
        let mut bytes = fs::read(&d).expect("read");
        bytes[0] ^= 0xff;
        fs::write(&d, bytes).expect("write");
        let m = dir.path().join(format!("{}.json", key("a")));
        let mut manifest: serde_json::Value =
            serde_json::from_slice(&fs::read(&m).expect("read")).expect("json");
        manifest["data_sha256"] = digest(&d).expect("digest").into();
        fs::write(&m, manifest.to_string()).expect("write");
        let back = Vectors::persistent(dir.path().to_path_buf());
        assert_eq!(back.load_snapshots(), (3, 1), "b's snapshot is whole");
        assert_eq!(nearest(&back, "b", vec![0.0, 0.0, 1.0])[0].as_str(), "b0");
        assert!(nearest(&back, "a", vec![1.0, 0.0, 0.0]).is_empty());
    }
}
