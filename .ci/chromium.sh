#!/usr/bin/env bash
# The headless browser of the search page's tests (tests/test_search_page.py): Debian's
# Chromium and its chromedriver, installed with apt-get when /usr/bin/chromium is missing.
# Playwright drives this browser (executable_path); it never downloads one of its own.
#
#   .ci/chromium.sh        install if missing, then print the version
#
# Needs root (CI runs as root) or sudo. Fonts: DejaVu and Liberation, so screenshots
# show text the same way on every machine.
set -euo pipefail

CHROMIUM=/usr/bin/chromium
PACKAGES=(chromium chromium-driver fonts-dejavu-core fonts-liberation)

if [[ -x "$CHROMIUM" ]]; then
  echo "chromium.sh: found $CHROMIUM ($("$CHROMIUM" --version 2>/dev/null || echo 'version unknown'))"
  exit 0
fi

if [[ "$(id -u)" -eq 0 ]]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1; then
  SUDO=(sudo)
else
  echo "chromium.sh: $CHROMIUM is missing and this is not root (no sudo either);" >&2
  echo "  install it with: apt-get install ${PACKAGES[*]}" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "chromium.sh: $CHROMIUM is missing and there is no apt-get (not Debian/Ubuntu);" >&2
  echo "  install Chromium so that $CHROMIUM runs it" >&2
  exit 1
fi

echo "chromium.sh: $CHROMIUM is missing; installing ${PACKAGES[*]} with apt-get"
echo "+ apt-get update"
"${SUDO[@]}" apt-get update -q
echo "+ apt-get install -y --no-install-recommends ${PACKAGES[*]}"
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"
echo "chromium.sh: installed $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
