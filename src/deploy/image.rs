//! `cadre image build`: the runtime image for the Docker target, made from
//! the binary that runs the command, on an engine that may reach no
//! registry at all.
//!
//! A static binary (`-C target-feature=+crt-static`) goes in alone,
//! `FROM scratch`. A dynamically linked one goes in with the shared
//! libraries it is running with right now (read from `/proc/self/maps`, so
//! the list is exactly what the loader resolved, not a guess) and its ELF
//! interpreter at the path the binary names. The build context is a tar
//! assembled in memory and sent through the Engine API's `/build`.

use anyhow::{Context, bail};
use bollard::Docker;
use bollard::query_parameters::BuildImageOptions;
use futures_util::StreamExt;
use std::collections::{BTreeSet, HashMap};

/// The user the runtime runs as in its container (`nobody`).
pub const RUNTIME_UID: u64 = 65534;

/// The ELF interpreter a binary names (`PT_INTERP`), or `None` when it is
/// statically linked.
pub fn elf_interpreter(bin: &[u8]) -> Result<Option<String>, String> {
    const PT_INTERP: u32 = 3;
    if bin.get(..4) != Some(b"\x7fELF") {
        return Err("not an ELF file".into());
    }
    if bin.get(4) != Some(&2) || bin.get(5) != Some(&1) {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let u16_at = |o: usize| -> Option<u64> {
        Some(u64::from(u16::from_le_bytes(
            bin.get(o..o + 2)?.try_into().ok()?,
        )))
    };
    let u32_at =
        |o: usize| -> Option<u32> { Some(u32::from_le_bytes(bin.get(o..o + 4)?.try_into().ok()?)) };
    let u64_at =
        |o: usize| -> Option<u64> { Some(u64::from_le_bytes(bin.get(o..o + 8)?.try_into().ok()?)) };
    let truncated = || "truncated ELF header".to_string();
    let phoff = usize::try_from(u64_at(0x20).ok_or_else(truncated)?).map_err(|e| e.to_string())?;
    let phentsize =
        usize::try_from(u16_at(0x36).ok_or_else(truncated)?).map_err(|e| e.to_string())?;
    let phnum = u16_at(0x38).ok_or_else(truncated)?;
    for i in 0..phnum {
        let at = usize::try_from(i)
            .ok()
            .and_then(|i| i.checked_mul(phentsize))
            .and_then(|o| o.checked_add(phoff))
            .ok_or_else(truncated)?;
        if u32_at(at).ok_or_else(truncated)? != PT_INTERP {
            continue;
        }
        let off =
            usize::try_from(u64_at(at + 8).ok_or_else(truncated)?).map_err(|e| e.to_string())?;
        let len =
            usize::try_from(u64_at(at + 32).ok_or_else(truncated)?).map_err(|e| e.to_string())?;
        let raw = off
            .checked_add(len)
            .and_then(|end| bin.get(off..end))
            .ok_or_else(|| "PT_INTERP points outside the file".to_string())?;
        let path = String::from_utf8_lossy(raw)
            .trim_end_matches('\0')
            .to_string();
        return Ok(Some(path));
    }
    Ok(None)
}

/// The shared objects mapped into this process (absolute paths).
fn mapped_libraries() -> anyhow::Result<BTreeSet<String>> {
    let maps = std::fs::read_to_string("/proc/self/maps").context("reading /proc/self/maps")?;
    Ok(maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.starts_with('/') && (p.ends_with(".so") || p.contains(".so.")))
        .map(str::to_string)
        .collect())
}

fn add_file(
    tar: &mut tar::Builder<Vec<u8>>,
    path: &str,
    data: &[u8],
    mode: u32,
) -> anyhow::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, path, data)
        .with_context(|| format!("adding {path} to the build context"))
}

fn add_dir(tar: &mut tar::Builder<Vec<u8>>, path: &str) -> anyhow::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(0);
    h.set_mode(0o755);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Directory);
    tar.append_data(&mut h, path, std::io::empty())
        .with_context(|| format!("adding {path}/ to the build context"))
}

/// The build context (Dockerfile and root filesystem) for `bin`, running
/// as this process with `libraries` mapped.
pub fn context(bin: &[u8], libraries: &BTreeSet<String>) -> anyhow::Result<Vec<u8>> {
    let interp = elf_interpreter(bin).map_err(anyhow::Error::msg)?;
    let mut tar = tar::Builder::new(Vec::with_capacity(bin.len() + (64 << 20)));
    add_file(&mut tar, "rootfs/cadre", bin, 0o755)?;
    add_dir(&mut tar, "agent")?;
    let mut lib_dirs = BTreeSet::new();
    if let Some(interp) = &interp {
        let real = std::fs::canonicalize(interp)
            .with_context(|| format!("locating the ELF interpreter {interp}"))?;
        let data = std::fs::read(&real).with_context(|| format!("reading {}", real.display()))?;
        add_file(&mut tar, &format!("rootfs{interp}"), &data, 0o755)?;
        for lib in libraries {
            if lib == interp {
                continue;
            }
            let data = std::fs::read(lib).with_context(|| format!("reading {lib}"))?;
            add_file(&mut tar, &format!("rootfs{lib}"), &data, 0o755)?;
            if let Some((dir, _)) = lib.rsplit_once('/') {
                lib_dirs.insert(dir.to_string());
            }
        }
    }
    let mut dockerfile = String::from("FROM scratch\nCOPY rootfs/ /\n");
    dockerfile.push_str(&format!(
        "COPY --chown={RUNTIME_UID}:{RUNTIME_UID} agent/ /agent/\n"
    ));
    if !lib_dirs.is_empty() {
        let dirs: Vec<_> = lib_dirs.into_iter().collect();
        dockerfile.push_str(&format!("ENV LD_LIBRARY_PATH={}\n", dirs.join(":")));
    }
    dockerfile.push_str(&format!(
        "USER {RUNTIME_UID}:{RUNTIME_UID}\nWORKDIR /agent\nENTRYPOINT [\"/cadre\"]\nCMD [\"runtime\"]\n"
    ));
    add_file(&mut tar, "Dockerfile", dockerfile.as_bytes(), 0o644)?;
    tar.into_inner().context("finishing the build context")
}

/// Builds the runtime image `tag` from this binary; returns the image id.
pub async fn build(docker: &Docker, tag: &str) -> anyhow::Result<String> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let bin = tokio::fs::read(&exe)
        .await
        .with_context(|| format!("reading {}", exe.display()))?;
    let libraries = mapped_libraries()?;
    // The image this tag named before, to remove once replaced (rebuilds
    // would otherwise leave one untagged image each).
    let previous = docker.inspect_image(tag).await.ok().and_then(|i| i.id);
    let tar = tokio::task::spawn_blocking(move || context(&bin, &libraries))
        .await
        .context("assembling the build context")??;
    let options = BuildImageOptions {
        t: Some(tag.to_string()),
        rm: true,
        forcerm: true,
        labels: Some(HashMap::from([(
            "cadre.runtime".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        )])),
        ..Default::default()
    };
    let mut stream = docker.build_image(options, None, Some(bollard::body_full(tar.into())));
    while let Some(item) = stream.next().await {
        let info = item.context("the engine refused the build")?;
        if let Some(detail) = info.error_detail {
            bail!(
                "the build failed: {}",
                detail.message.unwrap_or_else(|| "no message".into())
            );
        }
    }
    let image = docker
        .inspect_image(tag)
        .await
        .with_context(|| format!("inspecting the built image {tag}"))?;
    let id = image
        .id
        .context("the engine reported no id for the built image")?;
    if let Some(old) = previous.filter(|old| *old != id) {
        // Refused while a container still uses it: then it stays, untagged.
        let _ = docker
            .remove_image(
                &old,
                None::<bollard::query_parameters::RemoveImageOptions>,
                None,
            )
            .await;
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_names_its_interpreter_or_none() {
        let bin = std::fs::read(std::env::current_exe().expect("exe")).expect("read");
        let interp = elf_interpreter(&bin).expect("an ELF file");
        // Test binaries here are dynamically linked unless built static.
        if let Some(p) = interp {
            assert!(p.starts_with('/') && p.contains("ld-"), "{p}");
        }
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        assert!(elf_interpreter(b"").is_err());
        assert!(elf_interpreter(b"#!/bin/sh\n").is_err());
        let mut fake = b"\x7fELF\x02\x01".to_vec();
        fake.resize(64, 0);
        // phoff 0x40 and one 56-byte program header past the end.
        fake[0x20] = 0x40;
        fake[0x36] = 56;
        fake[0x38] = 1;
        assert!(elf_interpreter(&fake).is_err());
        // A PT_INTERP whose bytes lie outside the file.
        fake.resize(64 + 56, 0);
        fake[64] = 3;
        fake[64 + 8] = 0xff;
        fake[64 + 32] = 0x10;
        assert!(elf_interpreter(&fake).is_err());
    }
}
