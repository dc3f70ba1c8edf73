//! What a failed install or build step's output says went wrong, turned
//! into what to change: a lockfile that disagrees with package.json, a
//! registry out of reach, a missing tool, gems that cannot be fetched.

/// What a failed install or build step's output says went wrong, as an
/// instruction; `None` when nothing known shows.
pub fn explain(tail: &[String], lockfile: Option<&str>) -> Option<String> {
    let lock = lockfile
        .and_then(|l| l.rsplit('/').next())
        .unwrap_or("the lockfile");
    let has = |needle: &str| tail.iter().any(|l| l.contains(needle));
    let out_of_sync = has("can only install packages when your package.json and package-lock.json")
        || has("Your lockfile needs to be updated")
        || has("The lockfile would have been modified by this install")
        || has("ERR_PNPM_OUTDATED_LOCKFILE")
        || has("is not up to date with package.json");
    if out_of_sync {
        let pm = match lock {
            "yarn.lock" => "yarn install",
            "pnpm-lock.yaml" => "pnpm install",
            _ => "npm install",
        };
        return Some(format!(
            "package.json and {lock} disagree: run `{pm}` and commit the updated {lock}"
        ));
    }
    if has("No compatible signature found in package metadata") {
        return Some(
            "corepack found no signature on the package manager it downloaded (the registry, a mirror, strips them): start the peers with --corepack-no-signatures, or install the package manager on them"
                .into(),
        );
    }
    let gems = has("Could not fetch specs from")
        || has("Could not reach host")
        || has("Gem::RemoteFetcher::")
        || has("Bundler::HTTPError");
    if gems {
        return Some(
            "the Gemfile's gems could not be fetched (rubygems.org, or the Gemfile's source, is not reachable from this peer): vendor them (bundle cache) or remove the Gemfile to build with the system's jekyll"
                .into(),
        );
    }
    if has("this feature is not available in your current Hugo version") {
        return Some(
            "this site needs the extended edition of Hugo (Sass/SCSS), and this peer's hugo is not it: install hugo extended on the peers"
                .into(),
        );
    }
    if has("ENOTFOUND") || has("EAI_AGAIN") || has("getaddrinfo") {
        return Some(
            "the package registry could not be reached from this peer (the install step needs it)"
                .into(),
        );
    }
    // `sh: 1: tsc: not found`: a tool the scripts call is not installed.
    tail.iter().rev().find_map(|l| {
        let l = l.trim();
        let missing = l
            .strip_suffix(": not found")
            .or_else(|| l.strip_suffix(": command not found"))?;
        let tool = missing.rsplit(": ").next()?.trim();
        (!tool.is_empty() && !tool.contains(' ')).then(|| {
            format!("`{tool}` was not found: add the package that provides it to dependencies or devDependencies in package.json")
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_explained_from_their_output() {
        let tail = |lines: &[&str]| lines.iter().map(|l| (*l).to_owned()).collect::<Vec<_>>();
        let npm = tail(&["npm error code EUSAGE", "npm error `npm ci` can only install packages when your package.json and package-lock.json or npm-shrinkwrap.json are in sync. Please update your lock file with `npm install` before continuing."]);
        assert_eq!(
            explain(&npm, Some("package-lock.json")).as_deref(),
            Some("package.json and package-lock.json disagree: run `npm install` and commit the updated package-lock.json")
        );
        let pnpm = tail(&[" ERR_PNPM_OUTDATED_LOCKFILE  Cannot install with \"frozen-lockfile\""]);
        assert!(explain(&pnpm, Some("apps/pnpm-lock.yaml"))
            .unwrap()
            .contains("`pnpm install`"));
        let tsc = tail(&["> tsc -b && vite build", "sh: 1: tsc: not found"]);
        assert!(explain(&tsc, None)
            .unwrap()
            .starts_with("`tsc` was not found"));
        assert_eq!(explain(&tail(&["error TS2322: nope"]), None), None);
        let gems = tail(&[
            "Could not reach host index.rubygems.org. Check your network connection and try again.",
        ]);
        assert!(explain(&gems, Some("Gemfile.lock"))
            .unwrap()
            .contains("gems could not be fetched"));
    }
}
