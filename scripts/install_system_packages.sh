#!/usr/bin/env bash
# Debian packages the test suite needs; installs only what is missing.
#   docker-compose  validates docker-compose.yaml (no Docker engine is needed for that)
#   chromium        the browser tests/e2e/test_airflow_ui.py drives with Playwright
#   postgresql, redis-server  the metadata database (of `make airflow` and `make cluster`) and
#                   the Celery broker (`make cluster`), run as private instances by those and the tests
#   fonts-*         handwriting fonts whose digits scripts/benchmark_handwriting.py renders and
#                   scores (`make bench-handwriting`); test material only, never training data.
#                   The files are the ones its FONTS names.
# `--fonts-only` installs just the fonts (what `make bench-handwriting` needs), `--postgres-only`
# just PostgreSQL (what `make airflow` needs).
set -euo pipefail
only=${1:-}
missing=()
if [ -z "$only" ] || [ "$only" = "--postgres-only" ]; then
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
fi
if [ -z "$only" ]; then
  command -v docker-compose >/dev/null || missing+=(docker-compose)
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  command -v redis-server >/dev/null || missing+=(redis-server)
fi
fonts=(
  fonts-dkg-handwriting:/usr/share/fonts/truetype/fifthhorseman/dkg.ttf
  fonts-breip:/usr/share/fonts/truetype/breip/Breip.ttf
  fonts-bwht:/usr/share/fonts/opentype/bwht/BecauseWeBuild-Regular.otf
  fonts-bwht:/usr/share/fonts/opentype/bwht/BecauseWeConnect-Regular.otf
  fonts-bwht:/usr/share/fonts/opentype/bwht/BecauseWeCreate-Regular.otf
  fonts-bwht:/usr/share/fonts/opentype/bwht/BecauseWeLearn-Regular.otf
  fonts-bwht:/usr/share/fonts/opentype/bwht/BecauseWeMentor-Regular.otf
  fonts-bwht:/usr/share/fonts/opentype/bwht/BecauseWeOrganize-Regular.otf
  fonts-comic-neue:/usr/share/fonts/opentype/comic-neue/ComicNeue-Regular.otf
  fonts-humor-sans:/usr/share/fonts/truetype/humor-sans/Humor-Sans.ttf
  fonts-sjfonts:/usr/share/fonts/truetype/sjfonts/Delphine.ttf
  fonts-sjfonts:/usr/share/fonts/truetype/sjfonts/SteveHand.ttf
  fonts-rufscript:/usr/share/fonts/truetype/rufscript/Rufscript010.ttf
  fonts-kristi:/usr/share/fonts/truetype/kristi/Kristi.ttf
  fonts-kiloji:/usr/share/fonts/truetype/kiloji/kiloji.ttf
  fonts-seto:/usr/share/fonts/truetype/seto/setofont.ttf
)
[ "$only" = "--postgres-only" ] && fonts=()
for font in "${fonts[@]}"; do
  package=${font%%:*}
  if [ ! -e "${font#*:}" ] && [[ " ${missing[*]} " != *" $package "* ]]; then missing+=("$package"); fi
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo -n"; else
  echo "need root (or sudo) to install: ${missing[*]}" >&2; exit 1
fi
# The packages' own services (the system-wide PostgreSQL cluster and Redis on their
# default ports) are not started: nothing here uses them, and they would hold ports
# and keep running after `make stop`. A policy-rc.d that refuses every start does
# that for the install (Docker images ship the same file); one already there is kept.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  $sudo sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d'
  trap '$sudo rm -f /usr/sbin/policy-rc.d' EXIT
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
