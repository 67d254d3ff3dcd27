#!/usr/bin/env bash
# build-busybox-image.sh OUT.tar [IMAGE_REF]
#
# Builds an OCI image-layout archive (oci-layout, index.json, blobs/sha256/...)
# holding a single uncompressed layer with Debian's static busybox
# (package busybox-static) at /bin/busybox, a /bin/<applet> -> busybox symlink
# for every applet, and the empty dirs /tmp (1777) /etc /proc /sys /dev /root /var.
# No registry is needed: import the result with
#
#   ctr --address SOCK -n NS images import OUT.tar
#
# Default IMAGE_REF: podkeeper.local/busybox:latest. Needs only bash, coreutils
# and GNU tar, and lib-oci.sh next to this script. Output is byte-for-byte
# reproducible for a given busybox binary.
# Env: BUSYBOX overrides the busybox binary (default /bin/busybox; must be static).
#
# Notes on containerd 1.6 `ctr images import` (observed with 1.6.20):
#  * No special flags are needed: plain `ctr images import OUT.tar` imports and
#    unpacks (into the default snapshotter, overlayfs) under the full IMAGE_REF.
#  * The name comes from the index.json manifest descriptor's annotations:
#    `io.containerd.image.name` is taken verbatim and wins; otherwise
#    `org.opencontainers.image.ref.name` is used, kept as-is if it is a full
#    reference, but a bare tag such as "latest" becomes
#    "import-YYYY-MM-DD:latest" unless --base-name is given. A descriptor
#    with NEITHER annotation is silently skipped: ctr prints nothing and
#    exits 0 with no image (only --digests would import it, as
#    "import-YYYY-MM-DD@sha256:..."). This script sets both annotations to
#    the full IMAGE_REF.
#  * The `platform` on the descriptor is not required (import and unpack
#    work without it) but is set anyway so platform filtering never drops
#    the image.
#  * The layer is uncompressed (application/vnd.oci.image.layer.v1.tar), so the
#    layer digest equals the config's diff_id.
set -euo pipefail
# shellcheck source=lib-oci.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib-oci.sh"

out_and_ref podkeeper.local/busybox:latest "$@"
busybox=${BUSYBOX:-/bin/busybox}

if [[ ! -x $busybox ]]; then
    echo "error: $busybox not found or not executable (apt-get install busybox-static)" >&2
    exit 1
fi

# Debian architecture -> GOARCH (+ variant) as used in OCI platform fields.
deb_arch=$(dpkg --print-architecture)
variant=""
case $deb_arch in
    amd64) arch=amd64 ;;
    arm64) arch=arm64 ;;
    armhf) arch=arm; variant=v7 ;;
    armel) arch=arm; variant=v5 ;;
    i386) arch=386 ;;
    ppc64el) arch=ppc64le ;;
    s390x) arch=s390x ;;
    riscv64) arch=riscv64 ;;
    mips64el) arch=mips64le ;;
    loong64) arch=loong64 ;;
    *) arch=$deb_arch ;;
esac
if [[ -n $variant ]]; then
    platform_json=$(printf '"architecture":"%s","os":"linux","variant":"%s"' "$arch" "$variant")
else
    platform_json=$(printf '"architecture":"%s","os":"linux"' "$arch")
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/bbimg.XXXXXX")
trap 'rm -rf "$work"' EXIT
umask 022

# ---- root filesystem ------------------------------------------------------
root=$work/rootfs
mkdir -p "$root/bin" "$root/tmp" "$root/etc" "$root/proc" "$root/sys" \
    "$root/dev" "$root/root" "$root/var"
chmod 0755 "$root" "$root/bin" "$root/etc" "$root/proc" "$root/sys" \
    "$root/dev" "$root/var"
chmod 0700 "$root/root"
chmod 1777 "$root/tmp"
cp "$busybox" "$root/bin/busybox"
chmod 0755 "$root/bin/busybox"

napplets=0
while IFS= read -r applet; do
    [[ -z $applet || $applet == busybox || $applet == */* ]] && continue
    ln -s busybox "$root/bin/$applet"
    napplets=$((napplets + 1))
done < <("$busybox" --list)
if ((napplets == 0)); then
    echo "error: '$busybox --list' printed no applets" >&2
    exit 1
fi

# ---- image: layer, config, manifest ---------------------------------------
layout=$work/layout
blobs=$layout/blobs/sha256
mkdir -p "$blobs"
add_image "$blobs" "$work" "$platform_json" '["sh"]' "$root" bin dev etc proc root sys tmp var
manifest_digest=$blob_digest manifest_size=$blob_size

# ---- index.json, archive --------------------------------------------------
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{%s},%s}]}' \
    "$manifest_digest" "$manifest_size" "$platform_json" "$(ref_annotations "$ref")" >"$layout/index.json"
write_archive "$layout" "$out"

echo "built $out: $ref ($arch, $napplets applets, manifest sha256:$manifest_digest)" >&2
