#!/usr/bin/env bash
# Proves deploy/ on this machine (`make deploy-check`): builds the image, brings compose.yaml up with
# the mock upstream, waits for every service's healthcheck, runs one batch end to end through the
# published port, checks that Flower sees the worker and that /metrics answers, then `down -v` and
# checks that no container or volume is left.
#
# Needs root with apt (podman, runc, mmdebstrap) and PyPI (podman-compose, into a throwaway venv). No
# image registry is used: ../shared/tools/container-bases.sh builds stand-ins for python:3.11-slim and
# redis:7 from Debian packages when they are not there already (once per machine, 1-2 minutes).
#
# Environment: BASES (the base-image script), MAX_IMAGE_MB (300), KEEP=1 to leave the stack up on
# failure for a look (podman ps; podman logs batchq-check_worker_1).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
started=$SECONDS
project=batchq-check
image=batchq:latest
max_image_mb=${MAX_IMAGE_MB:-300}
bases=${BASES:-$root/../shared/tools/container-bases.sh}
work=$(mktemp -d "${TMPDIR:-/tmp}/batchq-deploy-check.XXXXXX")

say() { printf '\n== deploy-check [%3ds] %s\n' $((SECONDS - started)) "$*"; }
fail() { printf '\n== deploy-check FAILED: %s\n' "$*" >&2; exit 1; }

# --- 1. podman and the base images --------------------------------------------------------------
say "podman and the base images"
if ! podman image exists docker.io/library/python:3.11-slim 2>/dev/null \
   || ! podman image exists docker.io/library/redis:7 2>/dev/null; then
  [ -f "$bases" ] || fail "no base images and no $bases to build them (set BASES=...)"
  sh "$bases"
fi
podman --version

# --- 2. podman-compose, in a venv that goes away with this run ----------------------------------
say "podman-compose (throwaway venv)"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check "podman-compose>=1.1" 2>&1 \
  | grep -v "^WARNING: Location" || true
compose=("$work/venv/bin/podman-compose" -p "$project" -f deploy/compose.yaml --env-file "$work/check.env"
         --profile mock)
"$work/venv/bin/podman-compose" --version | tail -1

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
api_port=$(free_port)
flower_port=$(free_port)
key="sk-check-$(python3 -c 'import secrets; print(secrets.token_hex(8))')"
cat > "$work/check.env" <<EOF
BATCHQ_API_KEYS=$key
BATCHQ_UPSTREAM_URL=http://mock-upstream:9000
BATCHQ_WORKER_CONCURRENCY=16
API_PORT=$api_port
FLOWER_PORT=$flower_port
API_PROCESSES=1
EOF
[ ! -e deploy/.env ] || echo "note: deploy/.env exists; compose also passes it to the containers (env_file)"

project_containers() { podman ps -a --filter "label=io.podman.compose.project=$project" --format '{{.Names}}'; }
project_volumes() { podman volume ls --filter "label=io.podman.compose.project=$project" --format '{{.Name}}'; }
volumes_before=$(podman volume ls -q | sort)

cleanup() {
  status=$?
  if [ "$status" -ne 0 ]; then
    for name in $(project_containers); do
      echo "--- last log lines of $name"; podman logs --tail 30 "$name" 2>&1 || true
    done
  fi
  if [ "$status" -eq 0 ] || [ "${KEEP:-0}" != 1 ]; then
    "${compose[@]}" down -v >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT

[ -z "$(project_containers)" ] || "${compose[@]}" down -v >/dev/null 2>&1 || true

# --- 3. the image -------------------------------------------------------------------------------
say "build $image (once: the api service's build; --format docker keeps the HEALTHCHECK)"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)  # the release: pyproject.toml's version
podman build --pull=never --format docker --build-arg IMAGE_VERSION="$version" -f deploy/Dockerfile -t "$image" . \
  >"$work/build.log" 2>&1 || { tail -40 "$work/build.log"; fail "image build"; }
! grep -iE "warn|not supported for OCI" "$work/build.log" || fail "the build warns (above)"
size=$(podman image inspect --format '{{.Size}}' "$image")
size_mb=$(( size / 1000000 ))
echo "image $image: $size_mb MB (budget $max_image_mb MB; deploy/README.md records the figure)"
[ "$size_mb" -le "$max_image_mb" ] || fail "image is $size_mb MB, over $max_image_mb MB"
[ "$(podman image inspect --format '{{.Config.User}}' "$image")" = "10001:10001" ] || fail "image user is not 10001"
[ -n "$(podman image inspect --format '{{.Config.Healthcheck}}' "$image")" ] || fail "image has no HEALTHCHECK"
[ "$(podman image inspect --format '{{len .Config.Volumes}}' "$image")" = 0 ] || fail "image declares a VOLUME"
label=$(podman image inspect --format '{{index .Config.Labels "org.opencontainers.image.version"}}' "$image")
[ "$label" = "$version" ] || fail "image label version $label, pyproject.toml says $version"
[ "$(podman run --rm "$image" --version)" = "batchq $version" ] || fail "batchq --version in the image is not $version"

# --- 4. compose up ------------------------------------------------------------------------------
say "compose config and up (project $project, API on :$api_port, Flower on 127.0.0.1:$flower_port)"
"${compose[@]}" config >/dev/null
"${compose[@]}" up -d >"$work/up.log" 2>&1 || { cat "$work/up.log"; fail "compose up"; }
containers=$(project_containers)
echo "$containers" | tr '\n' ' '; echo
for service in redis api worker scheduler flower mock-upstream; do
  echo "$containers" | grep -q "^${project}_${service}_1$" || fail "no container for service $service"
done

# --- 5. every healthcheck (podman runs them only when asked: no systemd timers here) -------------
say "healthchecks"
deadline=$((SECONDS + 180))
for name in $containers; do
  until podman healthcheck run "$name" >/dev/null 2>&1; do
    state=$(podman inspect --format '{{.State.Status}}' "$name")
    [ "$state" = running ] || fail "$name is $state"
    [ "$SECONDS" -lt "$deadline" ] || { podman healthcheck run "$name" || true; fail "$name never healthy"; }
    sleep 2
  done
  echo "$name healthy"
done
for name in $containers; do
  case $name in *_redis_1) continue ;; esac
  [ "$(podman inspect --format '{{.HostConfig.ReadonlyRootfs}}' "$name")" = true ] || fail "$name: root fs writable"
  [ "$(podman exec "$name" id -u)" = 10001 ] || fail "$name does not run as uid 10001"
done

# --- 6. a batch end to end through the published port; Flower; /metrics ------------------------
say "one batch through http://127.0.0.1:$api_port"
python3 deploy/smoke.py --api "http://127.0.0.1:$api_port" --key "$key" --flower "http://127.0.0.1:$flower_port"

# --- 7. down -v leaves nothing ------------------------------------------------------------------
say "down -v"
"${compose[@]}" down -v >"$work/down.log" 2>&1 || { cat "$work/down.log"; fail "compose down"; }
[ -z "$(project_containers)" ] || fail "containers left: $(project_containers | tr '\n' ' ')"
[ -z "$(project_volumes)" ] || fail "volumes left: $(project_volumes | tr '\n' ' ')"
left=$(comm -13 <(echo "$volumes_before") <(podman volume ls -q | sort))
[ -z "$left" ] || fail "volumes created and left behind: $left"

say "passed: image $size_mb MB, stack up, healthy, batch completed, Flower and /metrics answer, nothing left"
