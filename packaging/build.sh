#!/usr/bin/env bash
# Builds podkeeper's .deb and .rpm into target/packages/.
#
#   packaging/build.sh [--version VERSION] [--only deb|rpm] [--out DIR] [--no-build]
#
# The release binary is built once (cargo build --release --locked) and both
# packagers take a stripped copy of it, with the man pages and completions the
# binary generates from its own clap definitions (`podkeeper generate`), from
# target/packaging/. The package version is Cargo.toml's unless --version
# overrides it (the binary's own version stays Cargo.toml's; CI uses this to
# build an "upgrade" of the same binary, with --no-build to package the files
# staged by the previous run as they are). cargo-deb and cargo-generate-rpm
# are installed with `cargo install --locked` when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=3.8.0
CARGO_GENERATE_RPM_VERSION=0.21.1

version=""
only=""
out=target/packages
build=true
while (($#)); do
    case $1 in
    --version) version=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --no-build) build=false; shift ;;
    *)
        echo "usage: $0 [--version VERSION] [--only deb|rpm] [--out DIR] [--no-build]" >&2
        exit 2
        ;;
    esac
done
case $only in "" | deb | rpm) ;; *) echo "--only takes deb or rpm" >&2; exit 2 ;; esac
if [[ $version == *-* ]]; then
    echo "--version $version: no '-' (the package revision is added)" >&2
    exit 2
fi

# tool SUBCOMMAND CRATE VERSION: installs the cargo subcommand if missing.
tool() {
    if ! cargo "$1" --version >/dev/null 2>&1; then
        echo "installing $2 $3 (cargo install --locked)"
        cargo install --locked "$2@$3"
    fi
}
[[ $only == rpm ]] || tool deb cargo-deb "$CARGO_DEB_VERSION"
[[ $only == deb ]] || tool generate-rpm cargo-generate-rpm "$CARGO_GENERATE_RPM_VERSION"

# The staging paths are the ones Cargo.toml's package metadata names.
stage=target/packaging
if $build; then
    cargo build --release --locked --bin podkeeper
    target_dir=${CARGO_TARGET_DIR:-target}
    rm -rf "$stage"
    mkdir -p "$stage/bin" "$stage/man" "$stage/completions"
    strip --strip-all -o "$stage/bin/podkeeper" "$target_dir/release/podkeeper"
    "$stage/bin/podkeeper" generate man "$stage/man"
    "$stage/bin/podkeeper" generate completions bash >"$stage/completions/podkeeper.bash"
    "$stage/bin/podkeeper" generate completions zsh >"$stage/completions/_podkeeper"
    "$stage/bin/podkeeper" generate completions fish >"$stage/completions/podkeeper.fish"
elif [[ ! -x $stage/bin/podkeeper ]]; then
    echo "--no-build: nothing staged in $stage; run without it first" >&2
    exit 2
fi

# Debian wants a changelog; the project's history is its git log, so the
# package's says only which version it packages.
package_version=${version:-$(cargo metadata --no-deps --format-version 1 --locked |
    sed -n 's/.*"name":"podkeeper","version":"\([^"]*\)".*/\1/p')}
maintainer=$(sed -n 's/^maintainer = "\(.*\)"$/\1/p' Cargo.toml)
cat >"$stage/changelog" <<CHANGELOG
podkeeper ($package_version-1) unstable; urgency=medium

  * Package of podkeeper $package_version; see the project's history for changes.

 -- $maintainer  $(date -R -u -d "@${SOURCE_DATE_EPOCH:-$(date +%s)}")
CHANGELOG

mkdir -p "$out"
if [[ $only != rpm ]]; then
    deb_args=(--no-build --no-strip --output "$out/")
    [[ -z $version ]] || deb_args+=(--deb-version "$version-1")
    cargo deb "${deb_args[@]}"
fi
if [[ $only != deb ]]; then
    rpm_args=(--output "$out/")
    [[ -z $version ]] || rpm_args+=(--set-metadata "version = \"$version\"")
    cargo generate-rpm "${rpm_args[@]}"
fi
ls -l "$out"
