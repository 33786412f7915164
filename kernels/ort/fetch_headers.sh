#!/usr/bin/env bash
# Fetch onnxruntime's C/C++ API headers from Debian trixie's libonnxruntime-dev without touching the system's apt
# state: a throw-away apt configuration (own sources list, lists and cache folders) downloads the .deb and
# dpkg-deb unpacks it. Usage: fetch_headers.sh DEST_DIR  -> prints the include folder (DEST_DIR/include/onnxruntime).
set -euo pipefail

DEST="${1:?usage: fetch_headers.sh DEST_DIR}"
VERSION="${LMKAN_ORT_DEB_VERSION:-1.21.0+dfsg-1}"
INCLUDE="$DEST/include/onnxruntime"
if [[ -f "$INCLUDE/onnxruntime_c_api.h" ]]; then
    echo "$INCLUDE"
    exit 0
fi
for tool in apt-get dpkg-deb; do
    command -v "$tool" >/dev/null || { echo "fetch_headers.sh: '$tool' not found (needs a Debian-based system)" >&2; exit 2; }
done

# The system's Debian mirror (deb822 or one-line sources), default deb.debian.org.
MIRROR="$(grep -hE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
          | grep -oE 'https?://[^ ]+/debian/?( |$)' | grep -v security | head -n1 | tr -d ' ' || true)"
MIRROR="${LMKAN_DEBIAN_MIRROR:-${MIRROR:-http://deb.debian.org/debian}}"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/lists/partial" "$WORK/cache/archives/partial" "$WORK/etc/preferences.d" "$WORK/dl"
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
SIGNED=""
[[ -f "$KEYRING" ]] && SIGNED="[signed-by=$KEYRING] "
echo "deb ${SIGNED}${MIRROR%/} trixie main" > "$WORK/etc/sources.list"
: > "$WORK/etc/status"

APT_OPTS=(
    -o "Dir::Etc::sourcelist=$WORK/etc/sources.list"
    -o "Dir::Etc::sourceparts=-"
    -o "Dir::Etc::preferencesparts=$WORK/etc/preferences.d"
    -o "Dir::State::lists=$WORK/lists"
    -o "Dir::State::status=$WORK/etc/status"
    -o "Dir::Cache=$WORK/cache"
    -o "Debug::NoLocking=1"
    -o "APT::Sandbox::User=$(id -un)"
)
apt-get "${APT_OPTS[@]}" -qq update >&2
(cd "$WORK/dl" && apt-get "${APT_OPTS[@]}" -qq download "libonnxruntime-dev=$VERSION" >&2)
mkdir -p "$DEST"
dpkg-deb -x "$WORK"/dl/libonnxruntime-dev_*.deb "$WORK/unpacked"
SRC="$(dirname "$(find "$WORK/unpacked" -name onnxruntime_c_api.h | head -n1)")"
[[ -n "$SRC" && -f "$SRC/onnxruntime_c_api.h" ]] || { echo "fetch_headers.sh: onnxruntime_c_api.h not in the package" >&2; exit 3; }
mkdir -p "$INCLUDE"
cp -r "$SRC"/. "$INCLUDE"/
echo "$INCLUDE"
