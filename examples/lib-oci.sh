# lib-oci.sh: shell functions for writing OCI image layouts and archives
# byte-for-byte reproducibly. Sourced by build-busybox-image.sh and
# tests/fixtures/multiarch-image.sh; needs bash, coreutils and GNU tar.
#
# The JSON is written with printf in a fixed field order and no whitespace:
# the digests of the busybox image (and so of the multi-arch index built on
# it) must not change from one run or machine to the next.

# out_and_ref DEFAULT_REF ARG...: the arguments the scripts take, OUT.tar
# [IMAGE_REF]; sets out and ref (DEFAULT_REF when not given), or exits 2 with
# the usage.
out_and_ref() {
    local default_ref=$1
    shift
    if [[ $# -lt 1 || $# -gt 2 ]]; then
        echo "usage: $0 OUT.tar [IMAGE_REF]" >&2
        exit 2
    fi
    out=$1
    ref=${2:-$default_ref}
}

# Options that make GNU tar's output depend only on the files' contents and
# modes (not on time stamps, owners or directory order).
tar_det=(--sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=gnu)

# ref_annotations IMAGE_REF: the "annotations" member of an index.json
# descriptor that names the image IMAGE_REF for `ctr images import` (see
# build-busybox-image.sh): both annotations, each the full reference.
ref_annotations() {
    # Minimal JSON string escaping (backslashes, quotes): enough for references.
    local ref=$1
    ref=${ref//\\/\\\\}
    ref=${ref//\"/\\\"}
    printf '"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}' \
        "$ref" "$ref"
}

# add_blob BLOBS_DIR FILE: moves FILE into the blob store BLOBS_DIR
# (LAYOUT/blobs/sha256) under its digest; sets blob_digest (sha256, hex only)
# and blob_size. (Variables rather than output, so that a failure stops a
# `set -e` caller.)
add_blob() {
    blob_digest=$(sha256sum "$2")
    blob_digest=${blob_digest%% *}
    blob_size=$(stat -c %s "$2")
    mv "$2" "$1/$blob_digest"
}

# add_image BLOBS_DIR WORK_DIR PLATFORM_JSON CMD_JSON ROOT PATH...: adds a
# one-layer image to the blob store BLOBS_DIR: the PATHs of directory ROOT as
# an uncompressed layer (so its digest is also its diff ID), a config with
# PLATFORM_JSON (the inside of a platform object) and CMD_JSON (a JSON array),
# and the OCI manifest of the two. WORK_DIR holds the files being written.
# Sets blob_digest and blob_size to the manifest's.
add_image() {
    local blobs=$1 work=$2 platform_json=$3 cmd_json=$4 root=$5
    local layer_digest layer_size config_digest config_size
    shift 5
    tar -C "$root" "${tar_det[@]}" -cf "$work/layer.tar" "$@"
    add_blob "$blobs" "$work/layer.tar"
    layer_digest=$blob_digest layer_size=$blob_size

    printf '{%s,"config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":%s},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
        "$platform_json" "$cmd_json" "$layer_digest" >"$work/config.json"
    add_blob "$blobs" "$work/config.json"
    config_digest=$blob_digest config_size=$blob_size

    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
        "$config_digest" "$config_size" "$layer_digest" "$layer_size" >"$work/manifest.json"
    add_blob "$blobs" "$work/manifest.json"
}

# write_archive LAYOUT OUT: adds LAYOUT/oci-layout and writes LAYOUT (which
# has index.json and blobs/) as the tar OUT. The tar is written next to OUT,
# then renamed: never a partial OUT.
write_archive() {
    local layout=$1 out=$2 out_dir out_tmp
    printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
    out_dir=$(dirname -- "$out")
    mkdir -p -- "$out_dir"
    out_tmp=$(mktemp "$out_dir/.$(basename -- "$out").XXXXXX")
    if ! tar -C "$layout" "${tar_det[@]}" -cf "$out_tmp" oci-layout index.json blobs; then
        rm -f -- "$out_tmp"
        return 1
    fi
    chmod 0644 "$out_tmp"
    mv -f -- "$out_tmp" "$out"
}
