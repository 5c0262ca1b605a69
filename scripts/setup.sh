#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian machine (Python 3.11, root) or an existing checkout:
# Debian packages, the .venv virtualenv with the project and its tools, and offline WordNet for nltk.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
APT_PACKAGES=(wordnet-base wordnet-sense-index openclipart-svg libcairo2 chromium-headless-shell)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "[setup] installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi

stamp="$VENV/.laionet-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/setup.sh -nt "$stamp" ] \
   || [ scripts/constraints.txt -nt "$stamp" ]; then
  echo "[setup] installing the project into $VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  NO_ALBUMENTATIONS_UPDATE=1 "$VENV/bin/python" -m pip install -q -c scripts/constraints.txt -e ".[dev]"
  # img2dataset installs the old `dataclasses` backport, which shadows the stdlib inside Prefect's server process
  "$VENV/bin/python" -m pip uninstall -q -y dataclasses 2>/dev/null || true
  # the OCR engine without its opencv-python requirement (opencv-python-headless provides cv2; see pyproject.toml)
  "$VENV/bin/python" -m pip install -q --no-deps "rapidocr-onnxruntime>=1.3"
  touch "$stamp"
fi

# WordNet 3.0 for nltk, offline: copied from Debian's wordnet-base into the venv's nltk data path and loaded once to
# check it. The check loads all of WordNet (~4 s), so it is not repeated by every `make demo` / `make test`: only when
# the project was (re)installed since, or the copy is gone.
wordnet_stamp="$VENV/.laionet-wordnet"
if [ ! -f "$wordnet_stamp" ] || [ "$stamp" -nt "$wordnet_stamp" ] || [ ! -d "$VENV/nltk_data/corpora/wordnet" ]; then
  "$VENV/bin/laionet" wordnet install --quiet
  touch "$wordnet_stamp"
fi
