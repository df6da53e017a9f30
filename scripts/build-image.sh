#!/usr/bin/env bash
# Builds the MedSendX gateway image in one command, without pulling any image:
#   1. the base: a minimal Debian root filesystem made by mmdebstrap from the same Debian
#      mirror apt uses on this machine (/etc/apt/sources.list.d/debian.sources), with
#      Python, tesseract and tini, imported with `podman import` as localhost/medsendx-base;
#   2. the image: `podman build` of ./Containerfile on that base -> localhost/medsendx.
# Needs root (or a rootless podman with subuids), podman and mmdebstrap (scripts/setup.sh).
#
# Usage: scripts/build-image.sh [--fresh-base] [--tag NAME]
# The base is reused while its inputs (package list, Debian sources) are unchanged and it is
# younger than BASE_MAX_AGE_DAYS (default 7), so security updates still arrive weekly;
# --fresh-base always rebuilds it (and so every layer above it). The Python dependencies are a
# layer of their own, rebuilt when pyproject.toml or the base changes (see Containerfile).
set -euo pipefail
cd "$(dirname "$0")/.."

TAG="localhost/medsendx"
FRESH=0
while [ $# -gt 0 ]; do
  case "$1" in
    --fresh-base) FRESH=1 ;;
    --tag) TAG="$2"; shift ;;
    *) echo "usage: $0 [--fresh-base] [--tag NAME]" >&2; exit 2 ;;
  esac
  shift
done

SUITE="bookworm"
# What the gateway needs at run time from Debian: Python 3.11 (venv), OCR, TLS roots, tini.
BASE_PACKAGES="python3,python3-venv,tesseract-ocr,tesseract-ocr-eng,ca-certificates,tini"
SOURCES="/etc/apt/sources.list.d/debian.sources"
[ -f "$SOURCES" ] || SOURCES="/etc/apt/sources.list"
MAX_AGE_DAYS="${BASE_MAX_AGE_DAYS:-7}"

for tool in podman mmdebstrap; do
  command -v "$tool" >/dev/null || { echo "build-image: $tool is missing (run scripts/setup.sh)" >&2; exit 1; }
done

start=$(date +%s)
key=$( { echo "$SUITE $BASE_PACKAGES"; cat "$SOURCES"; } | sha256sum | cut -c1-16)
base="localhost/medsendx-base:$key"

base_fresh() {
  podman image exists "$base" || return 1
  created=$(podman image inspect --format '{{.Created.Unix}}' "$base")
  [ $(( $(date +%s) - created )) -lt $(( MAX_AGE_DAYS * 86400 )) ]
}

if [ "$FRESH" = 1 ] || ! base_fresh; then
  echo "build-image: making the Debian $SUITE base with mmdebstrap ($BASE_PACKAGES)"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  # minbase + our packages; docs, man pages and apt lists are dropped to keep the base small.
  mmdebstrap --quiet --variant=minbase --include="$BASE_PACKAGES" \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    "$SUITE" "$tmp/base.tar" "$SOURCES"
  podman import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/sh"]' \
    "$tmp/base.tar" "$base" >/dev/null
  rm -rf "$tmp"
  trap - EXIT
else
  echo "build-image: reusing base $base"
fi
podman tag "$base" localhost/medsendx-base:latest
base_done=$(date +%s)

# pip inside the build uses this machine's pip configuration (CA bundle of a TLS-inspecting
# proxy, local indexes and wheel folders, constraints): written to a pip.conf handed to the
# build as a secret (never stored in a layer), with the local files and folders it names
# mounted read-only at the same paths for the duration of the build.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mounts=()
while IFS= read -r path; do mounts+=(--volume "$path:$path:ro"); done < <(python3 - "$work/pip.conf" <<'PY'
import configparser, os, subprocess, sys
out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
conf = configparser.ConfigParser(interpolation=None)
conf["global"] = {}
paths = set()
for line in out.splitlines():
    key, _, value = line.partition("=")
    scope, _, name = key.rpartition(".")
    value = value.strip().strip("'\"")
    if scope not in ("global", ":env:", "install") or name not in (
            "cert", "index-url", "extra-index-url", "find-links", "constraint", "default-timeout", "trusted-host"):
        continue
    conf["global"][name] = value
    for item in value.split():
        item = item.removeprefix("file://").rstrip("/")
        if name.endswith("index-url") and item.endswith("/simple"):
            item = os.path.dirname(item)  # a local index's pages link to files beside simple/
        if item.startswith("/") and os.path.exists(item):
            paths.add(os.path.realpath(item))
with open(sys.argv[1], "w") as fh:
    conf.write(fh)
print("\n".join(sorted(paths)))
PY
)

version=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])')
# docker format: OCI image configs have no HEALTHCHECK. chroot isolation: RUN steps need no
# OCI runtime (crun cannot create cgroups on some build hosts). Host network: RUN steps reach the
# package mirrors without a container network (none is set up on build machines like CI).
podman build --quiet --format docker --network host --isolation chroot --layers \
  --build-arg BASE="$base" --secret id=pipconf,src="$work/pip.conf" "${mounts[@]}" \
  --label "org.opencontainers.image.version=$version" \
  -t "$TAG:$version" -t "$TAG:latest" -f Containerfile . >/dev/null
end=$(date +%s)

size=$(podman image inspect --format '{{.Size}}' "$TAG:latest")
echo "build-image: built $TAG:$version ($((size / 1024 / 1024)) MiB) in $((end - start)) s" \
     "(base $((base_done - start)) s, image $((end - base_done)) s)"
