//! After the build, a check of the output's own links: every local `href`
//! and `src` of every HTML page must name a file the site serves (with the
//! same clean-URL rules the server uses). Missing ones are counted and the
//! first few listed in the log, as a warning, not a failure. Assets built
//! for a sub-path (Vite's `base: '/repo/'`, the GitHub Pages habit) but
//! served at the root are recognised and named.

use super::Logger;
use std::path::{Component, Path, PathBuf};

/// Missing links listed in the log; the rest are only counted.
pub const LISTED: usize = 10;
/// Pages read at most; a bigger site is checked in part.
const MAX_PAGES: usize = 20_000;
/// Largest page read.
const MAX_PAGE_BYTES: u64 = 4 << 20;

/// What the check found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub pages: usize,
    pub links: usize,
    /// (page, link) of the first [`LISTED`] missing targets.
    pub missing: Vec<(String, String)>,
    pub missing_count: usize,
    /// A missing asset found under the root without its first path
    /// segment: (the sub-path, the first such link).
    pub sub_path: Option<(String, String)>,
    /// Pages beyond [`MAX_PAGES`], not read.
    pub skipped_pages: usize,
}

impl Report {
    pub fn log(&self, log: &Logger) {
        if self.pages == 0 {
            return;
        }
        let more = if self.skipped_pages > 0 {
            format!(" ({} more pages not checked)", self.skipped_pages)
        } else {
            String::new()
        };
        if self.missing_count == 0 {
            log.info(&format!(
                "link check: {} local links in {} pages, none missing{more}",
                self.links, self.pages
            ));
            return;
        }
        log.warn(&format!(
            "link check: {} of {} local links in {} pages point to files that do not exist{more}",
            self.missing_count, self.links, self.pages
        ));
        for (page, link) in &self.missing {
            log.warn(&format!("  {page}: {link}"));
        }
        if let Some((prefix, first)) = &self.sub_path {
            log.warn(&format!(
                "the assets are built for the sub-path {prefix} but the site is served at the root: {first} is missing (it exists without {prefix}); build for the root instead (Vite: base: '/'; or drop the GitHub Pages base path)"
            ));
        }
    }
}

/// Checks every HTML page under `root`.
pub fn check(root: &Path) -> Report {
    let mut report = Report::default();
    let mut pages = Vec::new();
    collect_pages(root, &mut pages, &mut report.skipped_pages);
    pages.sort();
    for page in pages {
        let Ok(meta) = std::fs::metadata(&page) else {
            continue;
        };
        if meta.len() > MAX_PAGE_BYTES {
            continue;
        }
        let Ok(bytes) = std::fs::read(&page) else {
            continue;
        };
        let html = String::from_utf8_lossy(&bytes);
        report.pages += 1;
        let rel = page.strip_prefix(root).unwrap_or(&page);
        let dir = rel.parent().unwrap_or(Path::new(""));
        for link in links(&html) {
            let Some(target) = local_target(&link) else {
                continue;
            };
            report.links += 1;
            let path = if let Some(abs) = target.strip_prefix('/') {
                normalise(Path::new(abs))
            } else {
                normalise(&dir.join(&target))
            };
            if path
                .as_ref()
                .is_some_and(|p| served(root, p, target.ends_with('/')))
            {
                continue;
            }
            report.missing_count += 1;
            if report.missing.len() < LISTED {
                report
                    .missing
                    .push((format!("/{}", rel.display()), link.clone()));
            }
            if report.sub_path.is_none() && target.starts_with('/') {
                if let Some((prefix, rest)) = target[1..].split_once('/') {
                    let moved = normalise(Path::new(rest));
                    if !rest.is_empty() && moved.is_some_and(|p| served(root, &p, false)) {
                        report.sub_path = Some((format!("/{prefix}/"), link.clone()));
                    }
                }
            }
        }
    }
    report
}

fn collect_pages(dir: &Path, out: &mut Vec<PathBuf>, skipped: &mut usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let path = entry.path();
        if kind.is_dir() {
            collect_pages(&path, out, skipped);
        } else if kind.is_file()
            && path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("html") || e.eq_ignore_ascii_case("htm"))
        {
            if out.len() < MAX_PAGES {
                out.push(path);
            } else {
                *skipped += 1;
            }
        }
    }
}

/// Whether the site serves `rel` (relative to the output): the file, the
/// directory's index.html, or `rel.html` (clean URLs).
fn served(root: &Path, rel: &Path, dir_only: bool) -> bool {
    let full = root.join(rel);
    if full.is_dir() {
        return full.join("index.html").is_file();
    }
    if dir_only {
        return false;
    }
    if full.is_file() {
        return true;
    }
    let mut html = full.into_os_string();
    html.push(".html");
    Path::new(&html).is_file()
}

/// `p` without `.` and `..` (None if it climbs above the root).
fn normalise(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => {}
        }
    }
    Some(out)
}

/// The path part of a link to this site, percent-decoded; `None` for an
/// external link, an anchor, a template placeholder or a data URL.
fn local_target(link: &str) -> Option<String> {
    let link = link.trim();
    if link.is_empty()
        || link.starts_with('#')
        || link.starts_with("//")
        || link.contains("{{")
        || link.contains("${")
        || link.contains('<')
    {
        return None;
    }
    // A scheme (`https:`, `mailto:`, `data:`) before any slash.
    let first_sep = link.find(['/', '?', '#']).unwrap_or(link.len());
    if link[..first_sep].contains(':') {
        return None;
    }
    let path = link.split(['?', '#']).next().unwrap_or("");
    if path.is_empty() {
        return None;
    }
    Some(percent_decode(path))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every `href` and `src` attribute value in the tags of `html`, outside
/// comments, scripts and styles, and not on a page with a `<base>` (whose
/// links resolve elsewhere).
pub fn links(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    let lower = html.to_ascii_lowercase();
    let mut i = 0;
    while let Some(off) = lower[i..].find('<') {
        let start = i + off;
        let rest = &lower[start..];
        if rest.starts_with("<!--") {
            i = rest.find("-->").map_or(lower.len(), |e| start + e + 3);
            continue;
        }
        let Some(end) = tag_end(&lower, start) else {
            break;
        };
        let tag = &html[start + 1..end];
        let name: String = tag
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        if name == "base" {
            return Vec::new();
        }
        attributes(tag, &mut out);
        i = end + 1;
        if name == "script" || name == "style" {
            let close = format!("</{name}");
            i = lower[i..].find(&close).map_or(lower.len(), |e| i + e);
        }
    }
    out
}

/// Where the tag opened at `start` ends (its `>` outside quotes).
fn tag_end(lower: &str, start: usize) -> Option<usize> {
    let mut quote = None;
    for (j, c) in lower[start..].char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '>') => return Some(start + j),
            _ => {}
        }
    }
    None
}

/// The values of `href=` and `src=` in one tag's text.
fn attributes(tag: &str, out: &mut Vec<String>) {
    let b = tag.as_bytes();
    let mut i = 0;
    while i < b.len() {
        // An attribute name starts after whitespace.
        if !b[i].is_ascii_whitespace() {
            i += 1;
            continue;
        }
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let name_start = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'=' && b[i] != b'>' {
            i += 1;
        }
        let name = tag[name_start..i].to_ascii_lowercase();
        let mut j = i;
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        if j >= b.len() || b[j] != b'=' {
            continue;
        }
        j += 1;
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        let (value, next) = match b.get(j) {
            Some(q @ (b'"' | b'\'')) => {
                let body = j + 1;
                let close = tag[body..].find(*q as char).map_or(b.len(), |e| body + e);
                (&tag[body..close], close + 1)
            }
            _ => {
                let end = tag[j..]
                    .find(|c: char| c.is_ascii_whitespace())
                    .map_or(b.len(), |e| j + e);
                (&tag[j..end], end)
            }
        };
        if name == "href" || name == "src" {
            out.push(decode_entities(value));
        }
        i = next.min(b.len());
    }
}

fn decode_entities(v: &str) -> String {
    v.replace("&amp;", "&")
        .replace("&#x2F;", "/")
        .replace("&#47;", "/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_read_from_tags_only() {
        let html = r##"<!doctype html><html><head>
            <link rel="stylesheet" href="/assets/app.css"><script type=module src=/assets/app.js></script>
            <!-- <a href="/commented-out"> -->
            <script>document.write('<a href="/in-script">')</script>
            <style>a[href="/in-style"]{}</style>
            </head><body><a class='x' HREF='about?x=1#top'>About</a><img alt="a > b" src="img/logo.png">
            <a href="https://example.com/">out</a><a href="mailto:x@y">m</a><a href="#top">t</a>
            <a href="/docs/a&amp;b">amp</a></body></html>"##;
        let found = links(html);
        assert_eq!(
            found,
            vec![
                "/assets/app.css",
                "/assets/app.js",
                "about?x=1#top",
                "img/logo.png",
                "https://example.com/",
                "mailto:x@y",
                "#top",
                "/docs/a&b"
            ]
        );
        let local: Vec<_> = found.iter().filter_map(|l| local_target(l)).collect();
        assert_eq!(
            local,
            vec![
                "/assets/app.css",
                "/assets/app.js",
                "about",
                "img/logo.png",
                "/docs/a&b"
            ]
        );
        assert!(links(r#"<base href="/x/"><a href="y">"#).is_empty());
    }

    #[test]
    fn missing_links_are_counted_and_a_sub_path_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("assets")).unwrap();
        std::fs::create_dir_all(root.join("docs/guide")).unwrap();
        std::fs::write(root.join("assets/index-abc.js"), "x").unwrap();
        std::fs::write(root.join("about.html"), "<a href=\"/\">home</a>").unwrap();
        std::fs::write(
            root.join("docs/guide/index.html"),
            "<a href=\"../../about\">a</a><a href=\"../missing.html\">m</a>",
        )
        .unwrap();
        std::fs::write(
            root.join("index.html"),
            r#"<script src="/repo/assets/index-abc.js"></script><a href="/about">a</a><a href="/docs/guide/">g</a><a href="docs/guide">g</a><a href="/nope%20here">n</a><a href="../../../etc/passwd">x</a>"#,
        )
        .unwrap();
        let r = check(root);
        assert_eq!((r.pages, r.links), (3, 9));
        assert_eq!(r.missing_count, 4, "{r:?}");
        assert_eq!(
            r.missing,
            vec![
                (
                    "/docs/guide/index.html".to_owned(),
                    "../missing.html".to_owned()
                ),
                (
                    "/index.html".to_owned(),
                    "/repo/assets/index-abc.js".to_owned()
                ),
                ("/index.html".to_owned(), "/nope%20here".to_owned()),
                ("/index.html".to_owned(), "../../../etc/passwd".to_owned()),
            ]
        );
        assert_eq!(
            r.sub_path,
            Some(("/repo/".to_owned(), "/repo/assets/index-abc.js".to_owned()))
        );
    }

    #[test]
    fn percent_decoding_is_bounded_and_lossless_on_bad_input() {
        assert_eq!(percent_decode("/a%20b"), "/a b");
        assert_eq!(percent_decode("/a%2"), "/a%2");
        assert_eq!(percent_decode("/a%zz"), "/a%zz");
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("/é%é"), "/é%é");
    }
}
