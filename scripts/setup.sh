#!/usr/bin/env bash
# Installs everything MedSendX and its tests need on a Debian/Ubuntu machine:
# system packages (real PACS, DICOM tools, validator, OCR) and the Python package itself.
# Safe to run again: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

need=()
command -v Orthanc >/dev/null 2>&1 || need+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
[ -e /usr/bin/storescu ] || need+=(dcmtk)
command -v dciodvfy >/dev/null 2>&1 || need+=(dicom3tools)
command -v tesseract >/dev/null 2>&1 || need+=(tesseract-ocr tesseract-ocr-eng)
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
[ -e /usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf ] || need+=(fonts-liberation)
command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev)  # compiles triage's inner loops on first use
# The container image (scripts/build-image.sh) and the systemd unit's check (systemd-analyze).
command -v podman >/dev/null 2>&1 || need+=(podman)
command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# the hub's browser tests drive Debian's chromium through Playwright (never `playwright install`)
[ -e /usr/bin/chromium ] || need+=(chromium chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing system packages: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

echo "setup: installing the medsendx Python package and its test dependencies"
python3 -m pip install -q --disable-pip-version-check -e ".[test]"
